"""The session store on SQLAlchemy 2 Core: SQLite (WAL) by default, PostgreSQL for scale-out.

Dialect details stay here. A read-modify-write holds the session's row with
``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has no row locks, so there its
transactions begin IMMEDIATE, taking the database's single write lock up front.
Either way the database serialises steps on a session, across processes.

On SQLite, arrays of at least ``array_files_min_bytes`` live in slot files beside
the database (``array_files.py``); smaller ones, and all of them on PostgreSQL,
whose replicas share nothing but the database, live in the ``arrays`` column.

A step's two statements (lock the row, save it) run on the driver's cursor
(``driver_statements.py``), and on SQLite a process writes through one connection
it keeps: for a small step, SQLAlchemy's per-statement and per-checkout work cost
more than the durable commit.
"""

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from service.errors import PreconditionFailed, SessionNotFound
from service.safetensors_format import Buffers, buffers_size
from service.store.array_files import ArrayFiles, other_slot
from service.store.base import IdempotencyRecord, SessionMeta
from service.store.driver_statements import DriverStatement
from service.store.group_commit import GroupCommit
from service.store.schema import ensure_schema
from service.store.writer_lock import WriterLock

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
    sa.Column("arrays_slot", sa.SmallInteger, nullable=True),
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

SMALL_PAGES = 4096
"""SQLite's default page: a step of a small session rewrites a few pages, and each one is synced."""
LARGE_PAGES = 65536
"""For databases whose rows hold large arrays: a blob of N bytes costs N / page_size page writes, and
64 KiB pages commit a megabyte-sized blob several times faster than 4 KiB ones. They cost a 1k-param
step about 0.2 ms more."""
LARGE_ROW_BYTES = 1 << 20

META_COLUMNS = [column for column in sessions.c if column.name not in ("arrays", "arrays_slot")]
NEVER = 1 << 62
"""A size no blob reaches."""
READ_ATTEMPTS = 8
"""Reads of a slot file outside the write lock that may race a writer before one takes the lock."""

# The hot path's statements, built once: building a statement costs more than running a small one.
LOCKED_COLUMNS = [*META_COLUMNS, sessions.c.arrays_slot]
LOCK_SESSION = sa.select(*LOCKED_COLUMNS).where(sessions.c.id == sa.bindparam("session_id")).with_for_update()
READ_SESSION = sa.select(*[*LOCKED_COLUMNS, sessions.c.arrays]).where(sessions.c.id == sa.bindparam("session_id"))
READ_ARRAYS = sa.select(sessions.c.arrays).where(sessions.c.id == sa.bindparam("session_id"))
READ_VERSION = sa.select(sessions.c.version).where(sessions.c.id == sa.bindparam("session_id"))
READ_RECORD = sa.select(idempotency_records).where(
    idempotency_records.c.session_id == sa.bindparam("session_id"), idempotency_records.c.key == sa.bindparam("key")
)
_SAVE_WHERE = (sessions.c.id == sa.bindparam("session_id"), sessions.c.version == sa.bindparam("old_version"))


def _save_statement(*, groups: bool, arrays: bool) -> sa.Update:
    """The UPDATE that saves a locked session: always its step, version and update time; its param
    groups only when they changed (a step leaves them, and they are JSON to encode); its arrays if given."""
    values: dict[str, Any] = {
        "step": sa.bindparam("new_step"),
        "version": sa.bindparam("new_version"),
        "updated_at": sa.bindparam("new_updated_at", type_=sa.DateTime),
    }
    if groups:
        values["param_groups"] = sa.bindparam("new_param_groups", type_=sa.JSON)
    if arrays:
        values["arrays"] = sa.bindparam("new_arrays", type_=sa.LargeBinary)
        values["arrays_slot"] = sa.bindparam("new_arrays_slot", type_=sa.SmallInteger)
    return sa.update(sessions).where(*_SAVE_WHERE).values(**values)


SAVE = {
    (groups, arrays): _save_statement(groups=groups, arrays=arrays)
    for groups in (False, True)
    for arrays in (False, True)
}
"""By (param groups changed, arrays given)."""


def build_engine(
    database_url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 10, page_size: int = SMALL_PAGES
) -> Engine:
    """An engine for ``database_url``; a new SQLite database gets pages of ``page_size`` bytes."""
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
        # Only takes effect on a new database, so it comes before WAL mode is set.
        cursor.execute(f"PRAGMA page_size={page_size}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def begin_immediate(connection: Connection) -> None:
        # On the driver's connection: through exec_driver_sql, a BEGIN costs several times more.
        connection.connection.driver_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if connection.info.get("writes") else "BEGIN"
        )

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


class _ArrayPlacement:
    """Where a session's arrays go: slot files for large ones when there are slot files, else the row."""

    def __init__(self, files: ArrayFiles | None, min_bytes: int) -> None:
        self.files = files
        self._min_bytes = min_bytes

    def place(self, session_id: str, current_slot: int | None, arrays: Buffers) -> dict[str, Any]:
        """Write ``arrays`` where they belong (a slot file durably); the row's new column values."""
        if self.files is not None and buffers_size(arrays) >= self._min_bytes:
            slot = other_slot(current_slot)
            self.files.write(session_id, slot, arrays)
            return {"arrays": b"", "arrays_slot": slot}
        return {"arrays": b"".join(arrays), "arrays_slot": None}

    def read(self, connection: Connection, session_id: str, slot: int | None) -> bytes:
        if slot is None:
            arrays: bytes = connection.execute(READ_ARRAYS, {"session_id": session_id}).scalar_one()
            return arrays
        return self.read_file(session_id, slot)

    def read_file(self, session_id: str, slot: int) -> bytes:
        if self.files is None:
            raise RuntimeError(f"session {session_id} keeps its arrays in a slot file, but this store has none")
        return self.files.read(session_id, slot)


@dataclass(frozen=True)
class RecordsKept:
    """How much of their Idempotency-Key records sessions keep: how many keys, and how many
    bytes of first responses (at least the newest one's, whatever its size)."""

    keys: int
    response_bytes: int


class _Locked:
    def __init__(
        self,
        connection: Connection,
        meta: SessionMeta,
        arrays: bytes | None,
        *,
        slot: int | None,
        placement: _ArrayPlacement,
        kept: RecordsKept,
        saves: Mapping[tuple[bool, bool], DriverStatement],
    ) -> None:
        self._connection = connection
        self._saves = saves
        self._slot = slot
        self._placement = placement
        self._kept = kept
        self._arrays_saved = False
        self.meta = meta
        self.arrays = arrays

    def read_arrays(self) -> bytes:
        return self._placement.read(self._connection, self.meta.id, self._slot)

    def idempotency_record(self, key: str) -> IdempotencyRecord | None:
        row = self._connection.execute(READ_RECORD, {"session_id": self.meta.id, "key": key}).first()
        if row is None:
            return None
        return IdempotencyRecord(
            key=row.key, request_hash=row.request_hash, step=row.step, version=row.version, params=row.params
        )

    def save(self, meta: SessionMeta, arrays: Buffers | None, record: IdempotencyRecord | None = None) -> None:
        values: dict[str, Any] = {
            "session_id": meta.id,
            "old_version": self.meta.version,
            "new_step": meta.step,
            "new_version": meta.version,
            "new_updated_at": meta.updated_at,
        }
        groups_changed = meta.param_groups != self.meta.param_groups
        if groups_changed:
            values["new_param_groups"] = meta.param_groups
        if arrays is not None:
            if self._arrays_saved:
                # The other slot would now be the committed one (array_files.py).
                raise RuntimeError(f"session {meta.id}'s arrays were already saved in this transaction")
            self._arrays_saved = True
            placed = self._placement.place(meta.id, self._slot, arrays)
            values["new_arrays"], values["new_arrays_slot"] = placed["arrays"], placed["arrays_slot"]
        if self._saves[groups_changed, arrays is not None].rowcount(self._connection, values) != 1:
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
            responses_kept = max(1, self._kept.response_bytes // max(1, len(record.params)))
            if responses_kept < self._kept.keys:
                self._forget_old_responses(meta.id, responses_kept)
        self.meta = meta
        if arrays is not None:
            self._slot = values["new_arrays_slot"]

    def _forget_old_records(self, session_id: str) -> None:
        self._connection.execute(
            sa.delete(idempotency_records).where(
                idempotency_records.c.session_id == session_id,
                idempotency_records.c.seq < _nth_newest_record(session_id, self._kept.keys),
            )
        )

    def _forget_old_responses(self, session_id: str, kept: int) -> None:
        """Keep the first responses of the newest ``kept`` records; older records keep their key only."""
        self._connection.execute(
            sa.update(idempotency_records)
            .where(
                idempotency_records.c.session_id == session_id,
                idempotency_records.c.seq < _nth_newest_record(session_id, kept),
                sa.func.length(idempotency_records.c.params) > 0,
            )
            .values(params=b"")
        )


def _nth_newest_record(session_id: str, n: int) -> sa.ScalarSelect[Any]:
    return (
        sa.select(idempotency_records.c.seq)
        .where(idempotency_records.c.session_id == session_id)
        .order_by(idempotency_records.c.seq.desc())
        .offset(n - 1)
        .limit(1)
        .scalar_subquery()
    )


class SqlSessionStore:
    def __init__(
        self,
        database_url: str,
        *,
        idempotency_keys_kept: int = 1000,
        idempotency_response_bytes_kept: int = 64 << 20,
        sqlite_synchronous: str = "FULL",
        pool_size: int = 10,
        auto_migrate: bool = True,
        array_files_min_bytes: int = 256 << 10,
    ) -> None:
        # Slot files rely on each commit being durable before the next change overwrites the slot it
        # left; with synchronous=NORMAL a power loss can undo commits, so new arrays stay in the row
        # (existing slot files are still read).
        durable_commits = sqlite_synchronous.upper() in ("FULL", "EXTRA")
        rows_hold_large_arrays = not durable_commits or array_files_min_bytes > LARGE_ROW_BYTES
        self._engine = build_engine(
            database_url,
            sqlite_synchronous=sqlite_synchronous,
            pool_size=pool_size,
            page_size=LARGE_PAGES if rows_hold_large_arrays else SMALL_PAGES,
        )
        # SQLite has one writer at a time: writers that arrive together share a commit.
        self._group_commit = GroupCommit(self._transaction) if self._engine.dialect.name == "sqlite" else None
        dialect = self._engine.dialect
        self._lock_session = DriverStatement.compile(LOCK_SESSION, dialect)
        self._saves = {key: DriverStatement.compile(statement, dialect) for key, statement in SAVE.items()}
        self._writer_connection: Connection | None = None
        """The one connection this process writes a SQLite file through, taken under the writer lock
        (kept open: a checkout from the pool and back costs about 50 µs a transaction)."""
        self._kept = RecordsKept(keys=idempotency_keys_kept, response_bytes=idempotency_response_bytes_kept)
        self._writer_lock = self._sqlite_writer_lock(database_url)
        try:
            ensure_schema(self._engine, upgrade=auto_migrate)
            self._placement = _ArrayPlacement(
                self._array_files(database_url), array_files_min_bytes if durable_commits else NEVER
            )
            self._remove_unused_array_files()
        except BaseException:
            self.close()
            raise

    def _sqlite_file(self, database_url: str) -> Path | None:
        database = make_url(database_url).database
        if self._engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database)

    def _sqlite_writer_lock(self, database_url: str) -> WriterLock | None:
        """For a SQLite database in a file, the lock its writers take first (``<database file>-writer-lock``)."""
        database = self._sqlite_file(database_url)
        return None if database is None else WriterLock(database.with_name(database.name + "-writer-lock"))

    def _array_files(self, database_url: str) -> ArrayFiles | None:
        """Slot files in ``<database file>-arrays/``, for a SQLite database in a file."""
        database = self._sqlite_file(database_url)
        return None if database is None else ArrayFiles(database.with_name(database.name + "-arrays"))

    def _remove_unused_array_files(self) -> None:
        """Slot files a crash left behind (a session deleted, or one that never committed).

        Inside the write lock, since slot files are only written inside it, so that a
        session being created by another process is not mistaken for a leftover.
        """
        files = self._placement.files
        if files is None:
            return
        with self._transaction() as connection:
            in_files = connection.execute(sa.select(sessions.c.id).where(sessions.c.arrays_slot.is_not(None)))
            files.remove_all_but(row.id for row in in_files)

    def _writing(self, session_id: str) -> AbstractContextManager[Connection]:
        """A write transaction for ``session_id``; on SQLite, one shared with the writers that arrive
        meanwhile, for other sessions (a transaction writes a session's arrays once: array_files.py)."""
        if self._group_commit is not None:
            return self._group_commit.transaction(key=session_id)
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._writer_lock is None:
            with self._engine.connect() as connection:
                connection.info["writes"] = True
                try:
                    with connection.begin():
                        yield connection
                finally:
                    connection.info.pop("writes", None)
            return
        with self._writer_lock.held():
            writer = self._writer_connection
            if writer is None:
                writer = self._writer_connection = self._engine.connect()
            # Set for each transaction: it belongs to the driver's connection, and a connection
            # SQLAlchemy invalidated (after an error) reconnects with a new one at its next use.
            writer.info["writes"] = True
            try:
                with writer.begin():
                    yield writer
            except sa.exc.DBAPIError:
                # The next transaction starts on a new connection: errors from statements run on the
                # driver's cursor do not reach SQLAlchemy, which would otherwise decide.
                writer.invalidate()
                raise

    def ping(self) -> None:
        with self._engine.connect() as connection:
            connection.execute(sa.select(1))

    def create(self, meta: SessionMeta, arrays: Buffers) -> None:
        with self._writing(meta.id) as connection:
            placed = self._placement.place(meta.id, None, arrays)
            connection.execute(sa.insert(sessions).values(**_row_values(meta), **placed))

    def get(self, session_id: str, *, with_arrays: bool) -> tuple[SessionMeta, bytes | None] | None:
        if not with_arrays:
            with self._engine.connect() as connection:
                row = connection.execute(sa.select(*META_COLUMNS).where(sessions.c.id == session_id)).first()
            return None if row is None else (_meta(row), None)
        for _ in range(READ_ATTEMPTS):
            read = self._read_unlocked(session_id)
            if read != "moved":
                return read
        # Writers kept overtaking: read under the write lock, where nothing moves.
        with self._writing(session_id) as connection:
            row = connection.execute(LOCK_SESSION, {"session_id": session_id}).first()
            if row is None:
                return None
            return _meta(row), self._placement.read(connection, session_id, row.arrays_slot)

    def _read_unlocked(self, session_id: str) -> tuple[SessionMeta, bytes] | Literal["moved"] | None:
        """The session and its arrays, or "moved" when a writer may have overwritten the slot file read."""
        with self._engine.connect() as connection:
            row = connection.execute(READ_SESSION, {"session_id": session_id}).first()
        if row is None:
            return None
        if row.arrays_slot is None:
            return _meta(row), row.arrays
        try:
            arrays = self._placement.read_file(session_id, row.arrays_slot)
        except FileNotFoundError:
            return "moved"
        with self._engine.connect() as connection:
            version = connection.execute(READ_VERSION, {"session_id": session_id}).scalar_one_or_none()
        return (_meta(row), arrays) if version == row.version else "moved"

    def list(self, *, limit: int, after: tuple[datetime, str] | None) -> list[SessionMeta]:
        query = sa.select(*META_COLUMNS).order_by(sessions.c.created_at, sessions.c.id).limit(limit)
        if after is not None:
            query = query.where(sa.tuple_(sessions.c.created_at, sessions.c.id) > sa.tuple_(*after))
        with self._engine.connect() as connection:
            return [_meta(row) for row in connection.execute(query)]

    def delete(self, session_id: str, *, expected_version: int | None = None) -> bool:
        with self._writing(session_id) as connection:
            row = connection.execute(
                sa.select(sessions.c.version).where(sessions.c.id == session_id).with_for_update()
            ).first()
            if row is None:
                return False
            if expected_version is not None and row.version != expected_version:
                raise PreconditionFailed("If-Match does not match the session's current ETag")
            connection.execute(sa.delete(idempotency_records).where(idempotency_records.c.session_id == session_id))
            connection.execute(sa.delete(sessions).where(sessions.c.id == session_id))
        if self._placement.files is not None:
            # After the commit: a crash before this leaves files that the next start removes.
            self._placement.files.remove(session_id)
        return True

    @contextmanager
    def locked(self, session_id: str, *, need_arrays: bool, known_version: int | None = None) -> Iterator[_Locked]:
        with self._writing(session_id) as connection:
            row = self._lock_session.first(connection, {"session_id": session_id})
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
            meta = _meta(row)
            arrays = None
            if need_arrays and known_version != meta.version:
                arrays = self._placement.read(connection, session_id, row.arrays_slot)
            yield _Locked(
                connection,
                meta,
                arrays,
                slot=row.arrays_slot,
                placement=self._placement,
                kept=self._kept,
                saves=self._saves,
            )

    def close(self) -> None:
        if self._writer_lock is not None:
            with self._writer_lock.held():  # after a transaction still running
                if self._writer_connection is not None:
                    self._writer_connection.close()
                    self._writer_connection = None
        self._engine.dispose()
        if self._writer_lock is not None:
            self._writer_lock.close()


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
