"""An OS file lock that server processes sharing one SQLite database take before writing.

SQLite lets one connection write at a time, and a connection that finds the write
lock taken does not wait on it: its busy handler sleeps and tries again, after 1, 2,
5, 10, then up to 100 ms. Two server processes (``serve --workers 2``) on one database
would spend those sleeps idle while the lock is free. A writer that first takes this
lock (``flock``, which the kernel hands to the next waiter as soon as it is released)
finds SQLite's lock free, so processes take turns without sleeping.

It orders writers; it does not make them correct. SQLite's own lock still does that,
for writers that do not take this one too (``optim-service backup``, a ``sqlite3``
shell), and where ``flock`` is missing (Windows) the lock does nothing.
"""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class WriterLock:
    """Exclusive among the threads of this process and the processes that open the same ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._descriptor: int | None = None
        if fcntl is not None:
            self._descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            if self._descriptor is None:
                yield
                return
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._descriptor, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
