"""Holding, from outside the service, what a request waits for once it has taken its Idempotency-Key: the
test then has a request in flight for as long as it likes. Works on SQLite and on PostgreSQL, for a
service in this process or in another."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from service.store.sqlite.file_locks import WRITE_LOCK, LockFile, session_lock


@contextmanager
def held_from_outside(database_url: str, *, session_id: str | None) -> Iterator[None]:
    """Hold what a request needs after its Idempotency-Key: the session (a step), or the database's writes
    (SQLite) or the tenant's usage row (PostgreSQL) for a creation, from outside the service."""
    if database_url.startswith("sqlite"):
        database = Path(str(make_url(database_url).database))
        locks = LockFile(database.with_name(database.name + "-locks"))
        offset = WRITE_LOCK if session_id is None else session_lock(session_id)
        try:
            with locks.held(offset, timeout=5, what="the test's lock"):
                yield
        finally:
            locks.close()
        return
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            if session_id is None:
                connection.execute(sa.text("SELECT name FROM tenants WHERE name = 'default' FOR UPDATE"))
            else:
                connection.execute(sa.text("SELECT id FROM sessions WHERE id = :id FOR UPDATE"), {"id": session_id})
            yield
            connection.rollback()
    finally:
        engine.dispose()
