"""Session storage: one interface, one SQLAlchemy implementation for SQLite and PostgreSQL."""

from service.store.base import (
    CreationRecord,
    IdempotencyRecord,
    LockedSession,
    Quotas,
    RecordsKept,
    SessionMeta,
    SessionStore,
    TenantUsage,
)
from service.store.errors import (
    KeyInFlight,
    QuotaExceeded,
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
    "CreationRecord",
    "IdempotencyRecord",
    "KeyInFlight",
    "LockedSession",
    "QuotaExceeded",
    "Quotas",
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
    "TenantUsage",
    "VersionMismatch",
]
