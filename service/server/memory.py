"""Keep large buffers' memory in the process between requests (glibc's malloc).

A large step allocates buffers of tens of megabytes: the request body, the
decoded gradients, the response. glibc serves every allocation above its mmap
threshold (at most 32 MiB by default) with a fresh ``mmap`` and returns it with
``munmap`` when freed, so each step touches every page of those buffers anew,
and on a virtual machine a first touch is expensive: at 10M float32 params this
doubled the cost of copying the body and the response. Raising the threshold,
and the trim threshold with it, lets freed buffers be reused: the process keeps
its peak memory instead of handing it back after each step.

The cost is memory held while idle: each malloc arena (glibc makes up to eight
per core, for threads) keeps the peak it reached, so the arenas are capped at
``ARENAS``. A worker thread's arena cannot hold a buffer over 64 MiB, which is
still mapped afresh; the event loop's (the main arena) can.

Buffers of ``MAPPED_MIN_BYTES`` and more (bodies of hundreds of megabytes) are the exception: kept,
they would leave the idle process holding several times the largest body. They are mappings of
their own, given back once freed (``fresh_buffer``). A JSON worker process gives back the memory
its parse took after each body (``give_back_free_memory``).
"""

import ctypes
import ctypes.util
import functools
import logging
import mmap
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 4

log = logging.getLogger(__name__)


def keep_large_allocations(threshold_bytes: int) -> bool:
    """Serve allocations below ``threshold_bytes`` from reusable heap memory; False where that is not glibc."""
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    done = bool(
        mallopt(M_ARENA_MAX, ARENAS)
        and mallopt(M_MMAP_THRESHOLD, threshold_bytes)
        and mallopt(M_TRIM_THRESHOLD, threshold_bytes)
    )
    if not done:
        log.warning("could not raise malloc's mmap threshold; large steps will be slower")
    return done


def give_back_free_memory() -> None:
    """Return the free memory of every malloc arena to the system (glibc's ``malloc_trim``); a no-op elsewhere.

    It holds malloc's lock while it works, which takes milliseconds on a large heap: a JSON worker
    process calls it after each body it decodes, where no request waits on it.
    """
    trim = _libc("malloc_trim", ctypes.c_size_t)
    if trim is not None:
        trim(0)


@functools.cache
def _libc(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """The C library's function ``name`` taking ``argtypes`` and returning an int; None where there is none."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    result: Callable[..., int] = function
    return result


MAPPED_MIN_BYTES = 64 << 20
"""Buffers of at least this size are mapped for themselves alone (``fresh_buffer``)."""


def fresh_buffer(size: int) -> np.ndarray:
    """A writable uint8 array of ``size`` bytes, to be filled (a request's body, the arrays decoded from one).

    Below ``MAPPED_MIN_BYTES`` it comes from malloc, whose memory the process keeps for the next
    request (large steps reuse it, above). Larger, it is a mapping of its own, which goes back to the
    system once its last view is freed: in a thread of its own, since freeing hundreds of megabytes of
    pages takes a tenth of a second, and wherever the last view went (the event loop, say) would wait.
    """
    if size < MAPPED_MIN_BYTES:
        return np.empty(size, np.uint8)
    mapping = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        mapping.madvise(mmap.MADV_HUGEPAGE)  # as numpy asks for its own large arrays: fewer faults as it fills
    array = np.frombuffer(mapping, np.uint8)
    weakref.finalize(array, _unmap_soon, mapping).atexit = False
    return array


def _unmap_soon(mapping: mmap.mmap) -> None:
    threading.Thread(target=_unmap, args=(mapping,), name="unmap", daemon=True).start()


def _unmap(mapping: mmap.mmap) -> None:
    # The pages go first, by madvise, which ctypes calls without Python's lock and which lets the other
    # threads' page faults go on meanwhile (munmap would hold them); then the mapping, now empty, at once.
    view = ctypes.c_char.from_buffer(mapping)
    address = ctypes.addressof(view)
    del view
    madvise = _libc("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if madvise is not None and hasattr(mmap, "MADV_DONTNEED"):
        madvise(address, len(mapping), mmap.MADV_DONTNEED)
    mapping.close()
