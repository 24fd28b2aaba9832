"""The session store on SQLAlchemy 2 Core: SQLite (WAL) by default, PostgreSQL for scale-out.

Dialect details stay here. A read-modify-write holds the session's row with
``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has no row locks, so there its
transactions begin IMMEDIATE, taking the database's single write lock up front.
Either way the database serialises steps on a session, across processes.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from service.errors import PreconditionFailed, SessionNotFound
from service.store.base import IdempotencyRecord, SessionMeta
from service.store.group_commit import GroupCommit
from service.store.schema import ensure_schema

metadata = sa.MetaData()
"""The tables as the queries see them; migrations/ creates them, and a test checks the two agree."""

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("optimizer", sa.String(32), nullable=False),
    sa.Column("dtype", sa.String(16), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("param_groups", sa.JSON, nullable=False),
    sa.Column("shapes", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("arrays", sa.LargeBinary, nullable=False),
    sa.Index("sessions_by_creation", "created_at", "id"),
)

idempotency_records = sa.Table(
    "idempotency_records",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("params", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("session_id", "key", name="one_record_per_key"),
    sa.Index("records_by_session", "session_id", "seq"),
)

META_COLUMNS = [column for column in sessions.c if column.name != "arrays"]

# The hot path's statements, built once: building a statement costs more than running a small one.
LOCK_SESSION = sa.select(*META_COLUMNS).where(sessions.c.id == sa.bindparam("session_id")).with_for_update()
READ_ARRAYS = sa.select(sessions.c.arrays).where(sessions.c.id == sa.bindparam("session_id"))
READ_RECORD = sa.select(idempotency_records).where(
    idempotency_records.c.session_id == sa.bindparam("session_id"), idempotency_records.c.key == sa.bindparam("key")
)
_SAVE_VALUES = {
    "step": sa.bindparam("new_step"),
    "version": sa.bindparam("new_version"),
    "param_groups": sa.bindparam("new_param_groups", type_=sa.JSON),
    "updated_at": sa.bindparam("new_updated_at", type_=sa.DateTime),
}
_SAVE_WHERE = (sessions.c.id == sa.bindparam("session_id"), sessions.c.version == sa.bindparam("old_version"))
SAVE_META = sa.update(sessions).where(*_SAVE_WHERE).values(**_SAVE_VALUES)
SAVE_META_AND_ARRAYS = (
    sa.update(sessions)
    .where(*_SAVE_WHERE)
    .values(**_SAVE_VALUES, arrays=sa.bindparam("new_arrays", type_=sa.LargeBinary))
)


def build_engine(database_url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 10) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=pool_size, max_overflow=pool_size
    )

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, instead of pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Large pages: a session's arrays are one blob, and a blob of N bytes costs N / page_size page
        # writes; 64 KiB pages commit a megabyte-sized blob several times faster than 4 KiB ones. It
        # only takes effect on a new database, so it comes before WAL mode is set.
        cursor.execute("PRAGMA page_size=65536")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get("writes") else "BEGIN")

    return engine


def _meta(row: sa.Row[Any]) -> SessionMeta:
    return SessionMeta(
        id=row.id,
        optimizer=row.optimizer,
        dtype=row.dtype,
        step=row.step,
        version=row.version,
        param_groups=row.param_groups,
        shapes=row.shapes,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class _Locked:
    def __init__(self, connection: Connection, meta: SessionMeta, arrays: bytes | None, kept: int) -> None:
        self._connection = connection
        self._kept = kept
        self.meta = meta
        self.arrays = arrays

    def idempotency_record(self, key: str) -> IdempotencyRecord | None:
        row = self._connection.execute(READ_RECORD, {"session_id": self.meta.id, "key": key}).first()
        if row is None:
            return None
        return IdempotencyRecord(
            key=row.key, request_hash=row.request_hash, step=row.step, version=row.version, params=row.params
        )

    def save(self, meta: SessionMeta, arrays: bytes | None, record: IdempotencyRecord | None = None) -> None:
        values: dict[str, Any] = {
            "session_id": meta.id,
            "old_version": self.meta.version,
            "new_step": meta.step,
            "new_version": meta.version,
            "new_param_groups": meta.param_groups,
            "new_updated_at": meta.updated_at,
        }
        if arrays is not None:
            values["new_arrays"] = arrays
        result = self._connection.execute(SAVE_META if arrays is None else SAVE_META_AND_ARRAYS, values)
        if result.rowcount != 1:
            raise RuntimeError(f"session {meta.id} changed while it was locked")
        if record is not None:
            self._connection.execute(
                sa.insert(idempotency_records).values(
                    session_id=meta.id,
                    key=record.key,
                    request_hash=record.request_hash,
                    step=record.step,
                    version=record.version,
                    params=record.params,
                )
            )
            self._forget_old_records(meta.id)
        self.meta = meta

    def _forget_old_records(self, session_id: str) -> None:
        oldest_kept = (
            sa.select(idempotency_records.c.seq)
            .where(idempotency_records.c.session_id == session_id)
            .order_by(idempotency_records.c.seq.desc())
            .offset(self._kept - 1)
            .limit(1)
            .scalar_subquery()
        )
        self._connection.execute(
            sa.delete(idempotency_records).where(
                idempotency_records.c.session_id == session_id, idempotency_records.c.seq < oldest_kept
            )
        )


class SqlSessionStore:
    def __init__(
        self,
        database_url: str,
        *,
        idempotency_keys_kept: int = 1000,
        sqlite_synchronous: str = "FULL",
        pool_size: int = 10,
        auto_migrate: bool = True,
    ) -> None:
        self._engine = build_engine(database_url, sqlite_synchronous=sqlite_synchronous, pool_size=pool_size)
        # SQLite has one writer at a time: writers that arrive together share a commit.
        self._group_commit = GroupCommit(self._transaction) if self._engine.dialect.name == "sqlite" else None
        self._kept = idempotency_keys_kept
        try:
            ensure_schema(self._engine, upgrade=auto_migrate)
        except BaseException:
            self._engine.dispose()
            raise

    def _writing(self) -> AbstractContextManager[Connection]:
        """A write transaction; on SQLite, one shared with the writers that arrive meanwhile."""
        if self._group_commit is not None:
            return self._group_commit.transaction()
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            connection.info["writes"] = True
            try:
                with connection.begin():
                    yield connection
            finally:
                connection.info.pop("writes", None)

    def ping(self) -> None:
        with self._engine.connect() as connection:
            connection.execute(sa.select(1))

    def create(self, meta: SessionMeta, arrays: bytes) -> None:
        with self._writing() as connection:
            connection.execute(sa.insert(sessions).values(**_row_values(meta), arrays=arrays))

    def get(self, session_id: str, *, with_arrays: bool) -> tuple[SessionMeta, bytes | None] | None:
        columns = [*META_COLUMNS, sessions.c.arrays] if with_arrays else META_COLUMNS
        with self._engine.connect() as connection:
            row = connection.execute(sa.select(*columns).where(sessions.c.id == session_id)).first()
        if row is None:
            return None
        return _meta(row), row.arrays if with_arrays else None

    def list(self, *, limit: int, after: tuple[datetime, str] | None) -> list[SessionMeta]:
        query = sa.select(*META_COLUMNS).order_by(sessions.c.created_at, sessions.c.id).limit(limit)
        if after is not None:
            query = query.where(sa.tuple_(sessions.c.created_at, sessions.c.id) > sa.tuple_(*after))
        with self._engine.connect() as connection:
            return [_meta(row) for row in connection.execute(query)]

    def delete(self, session_id: str, *, expected_version: int | None = None) -> bool:
        with self._writing() as connection:
            row = connection.execute(
                sa.select(sessions.c.version).where(sessions.c.id == session_id).with_for_update()
            ).first()
            if row is None:
                return False
            if expected_version is not None and row.version != expected_version:
                raise PreconditionFailed("If-Match does not match the session's current ETag")
            connection.execute(sa.delete(idempotency_records).where(idempotency_records.c.session_id == session_id))
            connection.execute(sa.delete(sessions).where(sessions.c.id == session_id))
            return True

    @contextmanager
    def locked(self, session_id: str, *, need_arrays: bool, known_version: int | None = None) -> Iterator[_Locked]:
        with self._writing() as connection:
            row = connection.execute(LOCK_SESSION, {"session_id": session_id}).first()
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
            meta = _meta(row)
            arrays = None
            if need_arrays and known_version != meta.version:
                arrays = connection.execute(READ_ARRAYS, {"session_id": session_id}).scalar_one()
            yield _Locked(connection, meta, arrays, self._kept)

    def close(self) -> None:
        self._engine.dispose()


def _row_values(meta: SessionMeta) -> dict[str, Any]:
    return {
        "id": meta.id,
        "optimizer": meta.optimizer,
        "dtype": meta.dtype,
        "step": meta.step,
        "version": meta.version,
        "param_groups": meta.param_groups,
        "shapes": meta.shapes,
        "created_at": meta.created_at,
        "updated_at": meta.updated_at,
    }
