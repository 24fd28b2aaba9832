"""Locks that the server processes sharing one SQLite database take, each wait bounded.

One lock file beside the database holds them all, as byte ranges (Linux's open
file description locks, ``F_OFD_SETLK``): byte 0 is the write lock, which the
process that commits next takes before SQLite's own; every other byte is the lock
of the sessions whose ids hash to it. A lock is exclusive among the threads of a
process (a ``threading.Lock`` per byte) and across the processes that open the
same file; the kernel releases it when its process dies, however it dies.

Why not SQLite's lock alone: a connection that finds SQLite's write lock taken
does not wait on it, it sleeps and tries again (after 1, 2, 5, 10, then up to 100
ms), so processes sharing a database would spend those sleeps idle while the
lock is free. The kernel wakes a waiter on a file lock as soon as it is released.

Every wait has a bound. A lock another process holds is waited for in a helper
thread (the kernel call cannot be interrupted); if the bound passes first, the
caller gets ``StorageBusy``, and the helper releases the lock as soon as it gets it.
Where there is no ``fcntl`` (Windows) only the in-process locks exist, and one
process must own the database.
"""

import errno
import hashlib
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from service.store.errors import StorageBusy

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

WRITE_LOCK = 0
"""The byte of the database's write lock."""
SESSION_BYTES = 1 << 40
"""Session ids hash to this many bytes after the write lock's: two sessions share a lock about never."""
KEY_BYTES = 1 << 40
"""Idempotency-Keys hash to this many bytes after the sessions'."""
_BUSY = {errno.EAGAIN, errno.EACCES}


def _hashed(text: str, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % size


def session_lock(session_id: str) -> int:
    """The byte that locks ``session_id``."""
    return 1 + _hashed(session_id, SESSION_BYTES)


def key_lock(scope: str, key: str) -> int:
    """The byte a request holds while it runs with Idempotency-Key ``key`` of ``scope`` (a session, a tenant)."""
    return 1 + SESSION_BYTES + _hashed(f"{len(scope)}:{scope}:{key}", KEY_BYTES)


def _flock(kind: int, offset: int) -> bytes:
    """A ``struct flock`` for one byte at ``offset`` (l_pid must be 0 for OFD locks)."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)


@dataclass(eq=False)
class _Local:
    """The in-process lock of one byte, and how many threads hold or wait for it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class LockFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None
        if fcntl is not None:
            self._descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._locals: dict[int, _Local] = {}
        self._mutex = threading.Lock()

    @contextmanager
    def held(self, offset: int, *, timeout: float, what: str) -> Iterator[None]:
        """Hold the lock at ``offset``; ``StorageBusy`` naming ``what`` if it is not free within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        local = self._use(offset)
        if not local.lock.acquire(timeout=max(timeout, 0.0)):
            self._drop(offset, local)
            raise StorageBusy(f"{what} stayed locked by another request for more than {timeout:g} s")
        # On failure, _lock_file leaves the in-process lock released (or to its helper, which releases it).
        self._lock_file(offset, local, timeout=deadline - time.monotonic(), what=what)
        try:
            yield
        finally:
            self._unlock_file(offset)
            local.lock.release()
            self._drop(offset, local)

    @contextmanager
    def held_if_free(self, offset: int) -> Iterator[bool]:
        """Hold the lock at ``offset`` if nobody does; the block learns whether it holds it."""
        local = self._use(offset)
        if not local.lock.acquire(blocking=False):
            self._drop(offset, local)
            yield False
            return
        try:
            if not self._try_file(offset):
                yield False
                return
            try:
                yield True
            finally:
                self._unlock_file(offset)
        finally:
            local.lock.release()
            self._drop(offset, local)

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def _use(self, offset: int) -> _Local:
        with self._mutex:
            local = self._locals.setdefault(offset, _Local())
            local.users += 1
            return local

    def _drop(self, offset: int, local: _Local) -> None:
        with self._mutex:
            local.users -= 1
            if local.users == 0:
                del self._locals[offset]

    def _try_file(self, offset: int) -> bool:
        if self._descriptor is None:
            return True
        try:
            fcntl.fcntl(self._descriptor, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, offset))
        except OSError as error:
            if error.errno in _BUSY:
                return False
            raise
        return True

    def _unlock_file(self, offset: int) -> None:
        if self._descriptor is not None:
            fcntl.fcntl(self._descriptor, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, offset))

    def _lock_file(self, offset: int, local: _Local, *, timeout: float, what: str) -> None:
        """Take the file lock at ``offset`` (the in-process one is held); on giving up, release
        the in-process lock (at once, or from the helper once it is done) and raise."""
        try:
            if self._try_file(offset):
                return
        except BaseException:
            local.lock.release()
            self._drop(offset, local)
            raise
        descriptor = self._descriptor
        assert descriptor is not None
        finished = threading.Event()
        guard = threading.Lock()
        outcome: dict[str, object] = {}
        """Under ``guard``: "error" (what the wait raised) or "taken" once the helper is done;
        "gave_up" once the caller stopped waiting, after which the helper cleans up."""

        def wait() -> None:
            error: OSError | None = None
            try:
                fcntl.fcntl(descriptor, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, offset))
            except OSError as failed:
                error = failed
            with guard:
                if "gave_up" not in outcome:
                    outcome["error" if error else "taken"] = error
                    finished.set()
                    return
            if error is None:
                self._unlock_file(offset)
            local.lock.release()
            self._drop(offset, local)

        threading.Thread(target=wait, name="lock-wait", daemon=True).start()
        finished.wait(max(timeout, 0.0))
        with guard:
            if "taken" in outcome:
                return
            if "error" not in outcome:
                outcome["gave_up"] = True
                raise StorageBusy(f"{what} stayed locked by another process for more than {timeout:g} s")
        local.lock.release()
        self._drop(offset, local)
        error = outcome["error"]
        assert isinstance(error, OSError)
        raise error
