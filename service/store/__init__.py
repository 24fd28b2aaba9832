"""Session storage: one interface, one SQLAlchemy implementation for SQLite and PostgreSQL."""

from service.store.base import (
    CreationRecord,
    IdempotencyRecord,
    LockedSession,
    MetricsKept,
    Quotas,
    RecordsKept,
    SessionMeta,
    SessionStore,
    StepMetrics,
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
    "MetricsKept",
    "QuotaExceeded",
    "Quotas",
    "RecordsKept",
    "SessionMeta",
    "SessionMissing",
    "SessionStore",
    "SqlSessionStore",
    "StaleAssumption",
    "StepMetrics",
    "StorageBusy",
    "StorageFailure",
    "StorageFull",
    "StorageUnavailable",
    "StoreError",
    "StoreSettings",
    "TenantUsage",
    "VersionMismatch",
]
