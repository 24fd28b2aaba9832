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
"""

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable
from typing import Any

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


TRIM_AFTER_BYTES = 64 << 20
"""After a request whose body was at least this large, the process gives its free memory back.

Smaller bodies are the steps whose buffers the threshold above keeps for reuse (a 10M-param
float32 step is 40 MB); a larger one would otherwise leave its peak, several times its size,
held by the idle process."""


def give_back_free_memory() -> None:
    """Return the free memory of every malloc arena to the system (glibc's ``malloc_trim``); a no-op elsewhere.

    It takes milliseconds on a large heap and holds no lock of Python's: call it from a worker thread.
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
