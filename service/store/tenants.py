"""Tenants and their API keys, in the sessions' database, so that every replica sees a change at once."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service.store.errors import VersionMismatch
from service.store.sql import SqlSessionStore
from service.store.sqlite.commit_queue import Write
from service.store.tables import api_keys, tenants
from service.store.usage import ensure_tenant

LIMIT_COLUMNS = ("max_sessions", "max_bytes", "max_params", "requests_per_second", "burst")
"""A tenant's own limits; NULL takes the setting's default."""


@dataclass(frozen=True)
class TenantRow:
    name: str
    created_at: datetime
    limits: dict[str, float | int | None]
    """Its own limits by column (``LIMIT_COLUMNS``); None where the default applies."""
    sessions: int
    stored_bytes: int


@dataclass(frozen=True)
class KeyRow:
    id: str
    tenant: str
    secret_hash: str
    admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _tenant(row: Any, *, created_at: datetime | None = None) -> TenantRow:
    """The tenant of a ``tenants`` row, or of a row joined with another table's ``created_at`` (then given)."""
    return TenantRow(
        name=row.name,
        created_at=created_at or row.created_at,
        limits={column: getattr(row, column) for column in LIMIT_COLUMNS},
        sessions=row.sessions,
        stored_bytes=row.stored_bytes,
    )


def _key(row: Any) -> KeyRow:
    return KeyRow(
        id=row.id,
        tenant=row.tenant,
        secret_hash=row.secret_hash,
        admin=row.admin,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


KEY_WITH_TENANT = (
    sa.select(
        api_keys,
        tenants.c.name,
        tenants.c.created_at.label("tenant_created_at"),
        *[tenants.c[column] for column in LIMIT_COLUMNS],
        tenants.c.sessions,
        tenants.c.stored_bytes,
    )
    .join(tenants, tenants.c.name == api_keys.c.tenant)
    .where(api_keys.c.id == sa.bindparam("key_id"))
)


class Tenants:
    def __init__(self, store: SqlSessionStore) -> None:
        self._store = store
        self._dialect = store.engine.dialect.name

    def add_key(self, *, key_id: str, tenant: str, secret_hash: str, admin: bool, now: datetime) -> None:
        """Store a key (its tenant is created if new)."""
        self._store.commit(
            [
                ensure_tenant(self._dialect, tenant, now),
                Write(
                    sa.insert(api_keys).values(
                        id=key_id, tenant=tenant, secret_hash=secret_hash, admin=admin, created_at=now
                    )
                ),
            ]
        )

    def key(self, key_id: str) -> tuple[KeyRow, TenantRow] | None:
        """The key and its tenant, read now (a revocation on any replica shows at once)."""
        row = self._store.read(lambda connection: connection.execute(KEY_WITH_TENANT, {"key_id": key_id}).first())
        if row is None:
            return None
        return _key(row), _tenant(row, created_at=row.tenant_created_at)

    def keys(self, *, tenant: str | None = None) -> list[KeyRow]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        return self._store.read(lambda connection: [_key(row) for row in connection.execute(query)])

    def revoke(self, key_id: str, *, now: datetime) -> bool:
        """Revoke the key; False if there is no such key or it was revoked already."""

        update = (
            sa.update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        try:
            self._store.commit([Write(update, expect_rows=1)])
        except VersionMismatch:
            return False
        return True

    def any_active_key(self) -> bool:
        query = sa.select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
        return self._store.read(lambda connection: connection.execute(query).first() is not None)

    def touch(self, key_id: str, *, now: datetime) -> None:
        """Note the key's last use."""
        self._store.commit([Write(sa.update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now))])

    def tenant(self, name: str) -> TenantRow | None:
        row = self._store.read(
            lambda connection: connection.execute(sa.select(tenants).where(tenants.c.name == name)).first()
        )
        return None if row is None else _tenant(row)

    def tenants(self) -> list[TenantRow]:
        query = sa.select(tenants).order_by(tenants.c.name)
        return self._store.read(lambda connection: [_tenant(row) for row in connection.execute(query)])

    def set_limits(self, name: str, changes: dict[str, float | int | None], *, now: datetime) -> None:
        """Set the tenant's own limits named in ``changes`` (None: back to the default); creates the tenant."""
        unknown = set(changes) - set(LIMIT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown limits: {sorted(unknown)}")
        writes = [ensure_tenant(self._dialect, name, now)]
        if changes:
            writes.append(Write(sa.update(tenants).where(tenants.c.name == name).values(**changes)))
        self._store.commit(writes)
