"""Start writing a file's dirty pages to disk without waiting for them (Linux's ``sync_file_range``).

A large write followed by one ``fdatasync`` runs in two halves: the copy into the
page cache, with the disk idle, then the disk, with the CPU idle. Asking the kernel
to start writing each few megabytes as soon as they are copied lets the disk work
during the copy, and ``fdatasync`` then waits for less: for 80 MB on the machine
this service was measured on, 28 ms instead of 40 to 48. This only starts the
writes; durability still comes from ``fdatasync``. Where the call is missing
(not Linux), nothing is started early.
"""

import ctypes
import functools
from collections.abc import Callable

SYNC_FILE_RANGE_WRITE = 2
"""Start writeback of the range's dirty pages; do not wait for it."""


@functools.cache
def _bind() -> Callable[[int, int, int, int], int] | None:
    # The process's own symbols, libc's among them: no search for the library (find_library runs ldconfig).
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_writeback(descriptor: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` of the file; a hint, never an error."""
    sync_file_range = _bind()
    if sync_file_range is not None:
        sync_file_range(descriptor, offset, length, SYNC_FILE_RANGE_WRITE)
