"""What storage raises: its own errors, which know nothing of HTTP (``service/errors.py`` maps them).

Failures of the storage itself (a full disk, a lock held too long, a lost
connection) are told apart from bugs here, once: ``storage_errors`` turns the
driver's and the operating system's exceptions into these classes, and lets
everything else through unchanged, so that a real bug still surfaces as one.
"""

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

try:
    import psycopg
except ImportError:  # pragma: no cover - psycopg is a dependency; this keeps SQLite-only installs working
    psycopg = None  # type: ignore[assignment]


class StoreError(Exception):
    """Storage refused or failed an operation; nothing it was asked to change has changed."""


class SessionMissing(StoreError):
    """No session has this id."""


class VersionMismatch(StoreError):
    """The session is not at the version the caller expected."""


class QuotaExceeded(StoreError):
    """The write would take its tenant past a quota (``quota`` names it); nothing was changed."""

    def __init__(self, quota: str, *, requested: int) -> None:
        super().__init__(f"the write would exceed the tenant's {quota}")
        self.quota = quota
        self.requested = requested
        """How much more the write needed (sessions, or bytes)."""


class KeyInFlight(StoreError):
    """Another request holds this Idempotency-Key right now; nothing was changed."""


class StaleAssumption(StoreError):
    """A unit of work that trusted the caller's copy of a session found it changed elsewhere; nothing was
    changed. Run the unit of work again without that trust."""


class StorageFailure(StoreError):
    """Storage cannot do its work right now; trying again later may succeed."""


class StorageFull(StorageFailure):
    """The disk (or the database's quota) has no room for the write."""


class StorageBusy(StorageFailure):
    """A lock, the connection pool or a statement took longer than its bound."""


class StorageUnavailable(StorageFailure):
    """Storage answered with an I/O error, or the connection to it was lost."""

    def __init__(self, message: str, *, before_commit: bool = False) -> None:
        super().__init__(message)
        self.before_commit = before_commit
        """True when the work was cut off before its commit was sent: running it again is safe."""


SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = 5, 6, 7, 10, 13, 14
SQLITE_READONLY, SQLITE_PROTOCOL = 8, 15
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
POSTGRES_NO_SPACE = {"53100"}
"""disk_full."""
POSTGRES_BUSY = {"57014", "55P03", "40P01", "53300", "40001"}
"""query_canceled (statement_timeout), lock_not_available (lock_timeout), deadlock_detected,
too_many_connections, serialization_failure."""


def classify(error: BaseException, *, before_commit: bool = False) -> StorageFailure | None:
    """The storage failure ``error`` stands for, or None when it is not one (a bug, or the caller's own)."""
    if isinstance(error, StorageFailure):
        return error
    if isinstance(error, sa.exc.TimeoutError):
        return StorageBusy(f"no database connection was free in time: {error}")
    original = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    if isinstance(original, OSError):
        if original.errno in NO_SPACE:
            return StorageFull(f"no space left for the write: {original}")
        return StorageUnavailable(f"storage failed: {original}", before_commit=before_commit)
    if isinstance(original, sqlite3.Error):
        return _sqlite_failure(original, before_commit=before_commit)
    if psycopg is not None and isinstance(original, psycopg.Error):
        return _postgres_failure(error, original, before_commit=before_commit)
    return None


def _sqlite_failure(error: sqlite3.Error, *, before_commit: bool) -> StorageFailure | None:
    code = getattr(error, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary == SQLITE_FULL:
        return StorageFull(f"the database has no room for the write: {error}")
    if primary in (SQLITE_BUSY, SQLITE_LOCKED):
        return StorageBusy(f"the database stayed locked: {error}")
    if primary in (SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_NOMEM, SQLITE_READONLY, SQLITE_PROTOCOL):
        return StorageUnavailable(f"the database failed: {error}", before_commit=before_commit)
    return None


def _postgres_failure(error: BaseException, original: BaseException, *, before_commit: bool) -> StorageFailure | None:
    state = getattr(original, "sqlstate", None)
    if state in POSTGRES_NO_SPACE:
        return StorageFull(f"the database has no room for the write: {original}")
    if state in POSTGRES_BUSY:
        return StorageBusy(f"the database did not answer in time: {original}")
    lost = isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated
    if lost or isinstance(original, psycopg.OperationalError):
        return StorageUnavailable(f"the database connection failed: {original}", before_commit=before_commit)
    return None


@contextmanager
def storage_errors(*, before_commit: bool = False) -> Iterator[None]:
    """Raise storage failures inside the block as ``StorageFailure``; anything else as it is.

    ``before_commit`` says that nothing in the block sends a commit, so that a lost
    connection there leaves nothing half-done.
    """
    try:
        yield
    except StoreError:
        raise
    except Exception as error:
        failure = classify(error, before_commit=before_commit)
        if failure is None:
            raise
        raise failure from error
