"""Session storage: one interface, one SQLAlchemy implementation for SQLite and PostgreSQL."""

from service.store.base import IdempotencyRecord, LockedSession, RecordsKept, SessionMeta, SessionStore
from service.store.errors import (
    SessionMissing,
    StaleAssumption,
    StorageBusy,
    StorageFailure,
    StorageFull,
    StorageUnavailable,
    StoreError,
    VersionMismatch,
)
from service.store.sql import SqlSessionStore, StoreSettings

__all__ = [
    "IdempotencyRecord",
    "LockedSession",
    "RecordsKept",
    "SessionMeta",
    "SessionMissing",
    "SessionStore",
    "SqlSessionStore",
    "StaleAssumption",
    "StorageBusy",
    "StorageFailure",
    "StorageFull",
    "StorageUnavailable",
    "StoreError",
    "StoreSettings",
    "VersionMismatch",
]
