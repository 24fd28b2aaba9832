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
import logging

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 4

log = logging.getLogger(__name__)


def keep_large_allocations(threshold_bytes: int) -> bool:
    """Serve allocations below ``threshold_bytes`` from reusable heap memory; False where that is not glibc."""
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    try:
        mallopt = ctypes.CDLL(library).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(
        mallopt(M_ARENA_MAX, ARENAS)
        and mallopt(M_MMAP_THRESHOLD, threshold_bytes)
        and mallopt(M_TRIM_THRESHOLD, threshold_bytes)
    )
    if not done:
        log.warning("could not raise malloc's mmap threshold; large steps will be slower")
    return done
