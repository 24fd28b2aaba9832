"""Each key's rate limit, shared by every process and replica: one GCRA statement per request.

The bucket of a key is one row (``tables.rate_limits``) that an upsert moves on only
when the request is allowed (``tenancy/rate.py`` has the rule), in one statement, so
that processes and replicas racing for the last token cannot both get it. Where the
rows live:

- PostgreSQL: in the shared database, in an UNLOGGED table (no WAL, no fsync; a crash
  empties it, which only forgets how full the buckets were).
- SQLite: in a file of its own beside the database (``optim.sqlite3-limits``), with
  ``synchronous=OFF``, so that a request's bucket never waits for the disk nor for the
  database's write lock, which steps need.

Why the database and not Redis, the usual home of rate limits: every deployment
already has this database, and every replica shares it; a second service to run and
keep available would be needed only for this.
"""

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from service.store.errors import storage_errors
from service.store.tables import rate_limit_metadata, rate_limits

EPSILON_SECONDS = 1e-9
"""Float slack, so that the ``burst``-th request of a full bucket is not refused by a rounding error."""


def _take_statement(dialect: str) -> sa.Executable:
    now = sa.bindparam("now", type_=sa.Float)
    interval = sa.bindparam("interval", type_=sa.Float)
    capacity = sa.bindparam("capacity", type_=sa.Float)
    later = sa.case((rate_limits.c.tat > now, rate_limits.c.tat), else_=now) + interval
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(rate_limits)
    return (
        insert.values(key_id=sa.bindparam("key_id"), tat=now + interval)
        .on_conflict_do_update(
            index_elements=[rate_limits.c.key_id],
            set_={"tat": later},
            where=later - now <= capacity + EPSILON_SECONDS,
        )
        .returning(rate_limits.c.tat)
    )


READ_TAT = sa.select(rate_limits.c.tat).where(rate_limits.c.key_id == sa.bindparam("key_id"))


def _sqlite_limits_engine(database: str | None) -> Engine:
    """The engine of the file of buckets beside a SQLite database (in memory for an in-memory one)."""
    if not database or database == ":memory:":
        engine = sa.create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        path = Path(database).with_name(Path(database).name + "-limits")
        engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 10.0, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()

    rate_limit_metadata.create_all(engine)
    return engine


class RateLimits:
    def __init__(self, engine: Engine) -> None:
        """Buckets in ``engine``'s database (PostgreSQL), or in a file beside it (SQLite)."""
        self._own_engine = engine.dialect.name == "sqlite"
        self._engine = _sqlite_limits_engine(make_url(engine.url).database) if self._own_engine else engine
        self._take = _take_statement(self._engine.dialect.name)

    def take(self, key_id: str, *, interval: float, capacity: float) -> tuple[bool, float, float]:
        """Take a token from the key's bucket if it has one: (allowed, the TAT that decided, now)."""
        now = time.time()
        with storage_errors(before_commit=True), self._engine.begin() as connection:
            tat = connection.execute(
                self._take, {"key_id": key_id, "now": now, "interval": interval, "capacity": capacity}
            ).scalar_one_or_none()
            if tat is not None:
                return True, float(tat), now
            return False, float(connection.execute(READ_TAT, {"key_id": key_id}).scalar_one()), now

    def close(self) -> None:
        if self._own_engine:
            self._engine.dispose()
