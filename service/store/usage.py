"""A tenant's usage, changed in the transaction that changes what it counts, and guarded by its quotas.

Each guard is one UPDATE whose WHERE holds the quota: on PostgreSQL the row lock it
takes makes concurrent writers of one tenant re-check it after each other's commit,
and SQLite runs one write transaction at a time, so no two writes can both pass a
quota that only one of them fits in.
"""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service.store.base import Quotas
from service.store.errors import QuotaExceeded
from service.store.sqlite.commit_queue import Write
from service.store.tables import tenants


def ensure_tenant(dialect: str, tenant: str, now: datetime) -> Write:
    """Create the tenant's row if it has none (a tenant named by a key has one already)."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(tenants)
    return Write(insert.values(name=tenant, created_at=now).on_conflict_do_nothing(index_elements=["name"]))


def _change(tenant: str, column: sa.Column[int], delta: int, limit: int | None, quota: str) -> Write:
    update = sa.update(tenants).where(tenants.c.name == tenant).values({column.name: column + delta})
    if limit is None or delta <= 0:
        return Write(update)
    return Write(update.where(column + delta <= limit), expect_rows=1, refusal=QuotaExceeded(quota, requested=delta))


def usage_writes(tenant: str, *, sessions: int = 0, stored_bytes: int = 0, quotas: Quotas | None = None) -> list[Write]:
    """The writes that change the tenant's usage; those that grow it fail with ``QuotaExceeded`` past ``quotas``."""
    quotas = quotas or Quotas()
    writes = []
    if sessions:
        writes.append(_change(tenant, tenants.c.sessions, sessions, quotas.max_sessions, "max_sessions"))
    if stored_bytes:
        writes.append(_change(tenant, tenants.c.stored_bytes, stored_bytes, quotas.max_bytes, "max_bytes"))
    return writes
