"""The session store on SQLAlchemy 2 Core: SQLite (WAL) by default, PostgreSQL for scale-out.

A read-modify-write of a session (``locked``) is a unit of work: hold the session,
read it, let the caller compute, then save and commit. How a session is held
differs by engine:

- PostgreSQL: ``SELECT ... FOR UPDATE`` holds the session's row for the whole
  transaction; replicas wait for each other's row locks, and ``lock_timeout``,
  ``statement_timeout`` and the pool's timeout bound every wait.
- SQLite: a lock per session, shared by the server processes on the database
  (``sqlite/file_locks.py``), holds the session while the row is read outside any
  write transaction and the caller computes. Only the save takes the database's
  single write lock, in a transaction shared with the other writes that arrive
  together (``sqlite/commit_queue.py``), so a large step's arithmetic and array
  files never make other sessions wait.

On SQLite, arrays of at least ``array_files_min_bytes`` live in slot files beside
the database (``array_files.py``), written while the session is held and before
the commit that names them; smaller ones, and all of them on PostgreSQL, whose
replicas share nothing but the database, live in the ``arrays`` column.

Failures of storage itself leave as ``StorageFailure`` (``errors.py``), and the
store remembers whether its last write failed, so that readiness tells the truth.
"""

import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from service.buffers import Buffers, buffers_size
from service.store.base import (
    Contribution,
    CreationRecord,
    IdempotencyRecord,
    MetricsKept,
    Quotas,
    RecordsKept,
    RoundRecord,
    RoundsKept,
    SessionMeta,
    StepMetrics,
    TenantUsage,
)
from service.store.driver_statements import DriverStatement
from service.store.errors import (
    KeyInFlight,
    SessionMissing,
    StaleAssumption,
    StorageFailure,
    StorageFull,
    StorageUnavailable,
    VersionMismatch,
    storage_errors,
)
from service.store.health import WriteHealth
from service.store.rounds import (
    close_round_writes,
    contribution_write,
    forget_rounds,
    read_contributions,
    read_round,
)
from service.store.schema import ensure_schema
from service.store.sqlite.array_files import ArrayFiles, other_slot
from service.store.sqlite.commit_queue import Batch, CommitQueue, Write, run_batch
from service.store.sqlite.file_locks import WRITE_LOCK, LockFile, key_lock, session_lock
from service.store.step_metrics import INSERT_METRICS, forget_metrics, metrics_writes, read_metrics
from service.store.tables import (
    creation_records,
    idempotency_records,
    sessions,
    storage_probes,
    tenants,
)
from service.store.usage import ensure_tenant, usage_writes

SMALL_PAGES = 4096
"""SQLite's default page: a step of a small session rewrites a few pages, and each one is synced."""
LARGE_PAGES = 65536
"""For databases whose rows hold large arrays: a blob of N bytes costs N / page_size page writes, and
64 KiB pages commit a megabyte-sized blob several times faster than 4 KiB ones. They cost a 1k-param
step about 0.2 ms more."""
LARGE_ROW_BYTES = 1 << 20
SQLITE_CONNECTIONS_KEPT = 64
"""More than the request threads (anyio's 40) and the writer: connections a SQLite engine keeps open."""
WAL_KEPT_BYTES = 64 << 20
"""SQLite's ``journal_size_limit``: after a checkpoint the WAL is truncated to this, so that a burst
(or a disk that filled up) does not leave a large WAL behind for good."""
PROBE_MIN_BYTES = 64 << 10
PROBE_MAX_BYTES = 64 << 20
"""The readiness probe, when writes have been failing, writes as many bytes as the largest write that failed,
within these bounds: then a write of that size has room again."""

META_COLUMNS = [column for column in sessions.c if column.name not in ("arrays", "arrays_slot")]
NEVER = 1 << 62
"""A size no blob reaches."""
READ_ATTEMPTS = 8
SESSIONS_REMEMBERED = 1 << 16
"""SQLite: sessions whose last commit this process remembers, so as not to read them back before the next."""
CLOSE_WAIT_SECONDS = 2.0
"""How long closing waits for a write transaction still running before it leaves SQLite to roll it back."""
STARTUP_LOCK_SECONDS = 300.0
"""How long a process starting on a SQLite file waits for another's migration."""
"""Reads of a slot file outside the session's lock that may race a writer before one takes the lock."""

HELD_COLUMNS = [*META_COLUMNS, sessions.c.arrays_slot]
READ_HELD = sa.select(*HELD_COLUMNS).where(sessions.c.id == sa.bindparam("session_id"))
LOCK_HELD = READ_HELD.with_for_update()
READ_SESSION = sa.select(*[*HELD_COLUMNS, sessions.c.arrays]).where(sessions.c.id == sa.bindparam("session_id"))
READ_ARRAYS = sa.select(sessions.c.arrays).where(sessions.c.id == sa.bindparam("session_id"))
READ_VERSION = sa.select(sessions.c.version).where(sessions.c.id == sa.bindparam("session_id"))
READ_SLOT = sa.select(sessions.c.arrays_slot).where(sessions.c.id == sa.bindparam("session_id"))
READ_RECORD = sa.select(idempotency_records).where(
    idempotency_records.c.session_id == sa.bindparam("session_id"), idempotency_records.c.key == sa.bindparam("key")
)
_SAVE_WHERE = (sessions.c.id == sa.bindparam("session_id"), sessions.c.version == sa.bindparam("old_version"))

T = TypeVar("T")
log = logging.getLogger(__name__)


def _save_statement(*, groups: bool, arrays: bool) -> sa.Update:
    """The UPDATE that saves a held session: always its step, version and update time; its settings
    (param groups, gradient settings) only when they changed (a step leaves them, and they are JSON to
    encode); its arrays if given."""
    values: dict[str, Any] = {
        "step": sa.bindparam("new_step"),
        "version": sa.bindparam("new_version"),
        "updated_at": sa.bindparam("new_updated_at", type_=sa.DateTime),
    }
    if groups:
        values["param_groups"] = sa.bindparam("new_param_groups", type_=sa.JSON)
        values["clip_grad_norm"] = sa.bindparam("new_clip_grad_norm", type_=sa.JSON)
        values["nonfinite"] = sa.bindparam("new_nonfinite", type_=sa.String)
    if arrays:
        values["arrays"] = sa.bindparam("new_arrays", type_=sa.LargeBinary)
        values["arrays_slot"] = sa.bindparam("new_arrays_slot", type_=sa.SmallInteger)
        values["stored_bytes"] = sa.bindparam("new_stored_bytes", type_=sa.BigInteger)
    return sa.update(sessions).where(*_SAVE_WHERE).values(**values)


SAVE = {
    (groups, arrays): _save_statement(groups=groups, arrays=arrays)
    for groups in (False, True)
    for arrays in (False, True)
}
"""By (settings changed, arrays given)."""


@dataclass(frozen=True)
class StoreSettings:
    """How the store keeps its data and bounds its waits (``service.config.Settings`` documents each)."""

    sqlite_synchronous: str = "FULL"
    pool_size: int = 10
    auto_migrate: bool = True
    array_files_min_bytes: int = 256 << 10
    lock_timeout_seconds: float = 10.0
    """Waiting for a session another request holds (SQLite's session lock, PostgreSQL's row lock)."""
    write_timeout_seconds: float = 10.0
    """Waiting for SQLite's write lock, a place in a write transaction, or SQLite's own busy lock."""
    statement_timeout_seconds: float = 30.0
    """PostgreSQL: any one statement."""
    pool_timeout_seconds: float = 5.0
    """Waiting for a free database connection."""


def build_engine(database_url: str, settings: StoreSettings | None = None, *, page_size: int = SMALL_PAGES) -> Engine:
    """An engine for ``database_url`` whose waits are bounded; a new SQLite database gets ``page_size``-byte pages."""
    settings = settings or StoreSettings()
    url = make_url(database_url)
    pool = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.pool_size,
        "pool_timeout": settings.pool_timeout_seconds,
    }
    if url.get_backend_name() != "sqlite":
        engine = sa.create_engine(url, pool_pre_ping=True, **pool)
        _bound_postgres_statements(engine, settings)
        return engine
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    # A SQLite connection is a file handle and a page cache, but opening one costs a dozen statements:
    # keep one for each request thread (every request reads through one), so none is opened per request.
    pool["pool_size"] = max(settings.pool_size, SQLITE_CONNECTIONS_KEPT)
    busy_ms = int(settings.write_timeout_seconds * 1000)
    engine = sa.create_engine(
        url, connect_args={"timeout": settings.write_timeout_seconds, "check_same_thread": False}, **pool
    )

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, instead of pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Only takes effect on a new database, so it comes before WAL mode is set.
        cursor.execute(f"PRAGMA page_size={page_size}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def begin_immediate(connection: Connection) -> None:
        # On the driver's connection: through exec_driver_sql, a BEGIN costs several times more.
        connection.connection.driver_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if connection.info.get("writes") else "BEGIN"
        )

    return engine


def _bound_postgres_statements(engine: Engine, settings: StoreSettings) -> None:
    """Every new PostgreSQL connection gets the statement and lock timeouts (and one for a forgotten transaction)."""
    timeouts = {
        "statement_timeout": settings.statement_timeout_seconds,
        "lock_timeout": settings.lock_timeout_seconds,
        "idle_in_transaction_session_timeout": max(60.0, 2 * settings.statement_timeout_seconds),
    }

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            for name, seconds in timeouts.items():
                cursor.execute("SELECT set_config(%s, %s, false)", (name, f"{int(seconds * 1000)}ms"))
        dbapi_connection.commit()


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
        tenant=row.tenant,
        stored_bytes=row.stored_bytes,
        aggregation=row.aggregation,
        clip_grad_norm=row.clip_grad_norm,
        nonfinite=row.nonfinite,
    )


def _record(row: sa.Row[Any] | None) -> IdempotencyRecord | None:
    if row is None:
        return None
    return IdempotencyRecord(
        key=row.key, request_hash=row.request_hash, step=row.step, version=row.version, params=row.params
    )


class _ArrayPlacement:
    """Where a session's arrays go: slot files for large ones when there are slot files, else the row."""

    def __init__(self, files: ArrayFiles | None, min_bytes: int) -> None:
        self.files = files
        self._min_bytes = min_bytes

    def goes_to_a_file(self, arrays: Buffers) -> bool:
        return self.files is not None and buffers_size(arrays) >= self._min_bytes

    def place(self, session_id: str, current_slot: int | None, arrays: Buffers) -> dict[str, Any]:
        """Write ``arrays`` where they belong (a slot file durably); the row's new column values."""
        if self.files is not None and self.goes_to_a_file(arrays):
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
            raise StorageUnavailable(f"session {session_id} keeps its arrays in a slot file, but this store has none")
        return self.files.read(session_id, slot)


def _nth_newest_record(session_id: str, n: int) -> sa.ScalarSelect[Any]:
    return (
        sa.select(idempotency_records.c.seq)
        .where(idempotency_records.c.session_id == session_id)
        .order_by(idempotency_records.c.seq.desc())
        .offset(n - 1)
        .limit(1)
        .scalar_subquery()
    )


def _record_writes(record: IdempotencyRecord, session_id: str, kept: RecordsKept | None, now: datetime) -> list[Write]:
    """Store ``record``, and forget what the session keeps beyond ``kept`` (if given)."""
    insert = Write(
        sa.insert(idempotency_records).values(
            session_id=session_id,
            key=record.key,
            request_hash=record.request_hash,
            step=record.step,
            version=record.version,
            params=record.params,
            created_at=now,
        ),
        payload_bytes=len(record.params),
    )
    if kept is None:
        return [insert]
    writes = [
        insert,
        # By version, not by rank: an index range that holds at most the one record falling out of the
        # window, however many the session keeps.
        Write(
            sa.delete(idempotency_records).where(
                idempotency_records.c.session_id == session_id,
                idempotency_records.c.version <= record.version - kept.keys,
            )
        ),
    ]
    if kept.responses < kept.keys:
        # The first responses of the newest records only; older records keep their key.
        writes.append(
            Write(
                sa.update(idempotency_records)
                .where(
                    idempotency_records.c.session_id == session_id,
                    idempotency_records.c.seq < _nth_newest_record(session_id, kept.responses),
                    sa.func.length(idempotency_records.c.params) > 0,
                )
                .values(params=b"")
            )
        )
    return writes


class _Held:
    """A session held for a read-modify-write: what was read, and the writes its save prepared."""

    def __init__(
        self,
        meta: SessionMeta,
        *,
        slot: int | None,
        record: IdempotencyRecord | None,
        read_arrays: Callable[[], bytes],
        placement: _ArrayPlacement,
        health: WriteHealth,
        saves: Mapping[tuple[bool, bool], DriverStatement],
        insert_metrics: DriverStatement,
        read: Callable[[Callable[[Connection], Any]], Any],
        postgres: bool,
        trusted: bool = False,
    ) -> None:
        self.meta = meta
        self.record = record
        self.trusted = trusted
        """Whether ``meta`` is what this process last committed, not read now: the record, then, was not
        looked up, and a conflict at commit raises ``StaleAssumption``."""
        self.saved = False
        self.slot = slot
        """The slot file that holds the arrays (once the save commits), or None when the row does."""
        self._saves = saves
        self._insert_metrics = insert_metrics
        self._read_arrays = read_arrays
        self._placement = placement
        self._health = health
        self._read = read
        self._postgres = postgres
        self.writes: list[Write] = []

    def read_arrays(self) -> bytes:
        with storage_errors(before_commit=True):
            return self._read_arrays()

    def save(
        self,
        meta: SessionMeta,
        arrays: Buffers | None,
        record: IdempotencyRecord | None = None,
        kept: RecordsKept | None = None,
        *,
        quotas: Quotas | None = None,
        metrics: StepMetrics | None = None,
        metrics_kept: MetricsKept | None = None,
    ) -> None:
        if self.writes:
            # A slot file written twice before one commit would overwrite the committed one (array_files.py).
            raise RuntimeError(f"session {meta.id} was already saved in this unit of work")
        values: dict[str, Any] = {
            "session_id": meta.id,
            "old_version": self.meta.version,
            "new_step": meta.step,
            "new_version": meta.version,
            "new_updated_at": meta.updated_at,
        }
        groups_changed = (meta.param_groups, meta.clip_grad_norm, meta.nonfinite) != (
            self.meta.param_groups,
            self.meta.clip_grad_norm,
            self.meta.nonfinite,
        )
        if groups_changed:
            values["new_param_groups"] = meta.param_groups
            values["new_clip_grad_norm"] = meta.clip_grad_norm
            values["new_nonfinite"] = meta.nonfinite
        if arrays is not None:
            if self.trusted and self._placement.goes_to_a_file(arrays):
                # The slot a file write must spare is the committed one, which only a read can tell.
                raise StaleAssumption(f"session {meta.id}'s arrays move into a slot file: read it first")
            try:
                with storage_errors(before_commit=True):
                    placed = self._placement.place(meta.id, self.slot, arrays)
            except StorageFailure as failure:
                self._health.failed(failure, size=buffers_size(arrays))
                raise
            values["new_arrays"], values["new_arrays_slot"] = placed["arrays"], placed["arrays_slot"]
            values["new_stored_bytes"] = meta.stored_bytes
            self.slot = placed["arrays_slot"]
        self.writes.append(
            Write(
                self._saves[groups_changed, arrays is not None],
                values,
                expect_rows=1,
                payload_bytes=len(values.get("new_arrays", b"")),
            )
        )
        if arrays is not None and meta.stored_bytes != self.meta.stored_bytes:
            self.writes.extend(
                usage_writes(meta.tenant, stored_bytes=meta.stored_bytes - self.meta.stored_bytes, quotas=quotas)
            )
        if record is not None:
            self.writes.extend(_record_writes(record, meta.id, kept, meta.updated_at))
        if metrics is not None:
            self.writes.extend(
                metrics_writes(self._insert_metrics, meta.id, metrics, metrics_kept or MetricsKept(NEVER, 1))
            )
        self.meta = meta
        self.saved = True

    def contributions(self, step: int, *, with_grads: bool) -> list[Contribution]:
        with storage_errors(before_commit=True):
            found: list[Contribution] = self._read(
                lambda connection: read_contributions(connection, self.meta.id, step, with_grads=with_grads)
            )
            return found

    def contribute(self, step: int, contribution: Contribution) -> None:
        self.writes.append(contribution_write(self.meta.id, step, contribution))

    def close_round(self, record: RoundRecord, kept: RoundsKept) -> None:
        self.writes.extend(close_round_writes(self.meta.id, record, kept, postgres=self._postgres))


class SqlSessionStore:
    def __init__(self, database_url: str, settings: StoreSettings | None = None) -> None:
        self.settings = settings = settings or StoreSettings()
        # Slot files rely on each commit being durable before the next change overwrites the slot it
        # left; with synchronous=NORMAL a power loss can undo commits, so new arrays stay in the row
        # (existing slot files are still read).
        durable_commits = settings.sqlite_synchronous.upper() in ("FULL", "EXTRA")
        rows_hold_large_arrays = not durable_commits or settings.array_files_min_bytes > LARGE_ROW_BYTES
        self._engine = build_engine(
            database_url, settings, page_size=LARGE_PAGES if rows_hold_large_arrays else SMALL_PAGES
        )
        self._sqlite = self._engine.dialect.name == "sqlite"
        dialect = self._engine.dialect
        # The statements every step runs, on the driver's cursor (driver_statements.py says why).
        self._read_held = DriverStatement.compile(READ_HELD, dialect)
        self._lock_held = DriverStatement.compile(LOCK_HELD, dialect)
        self._read_record = DriverStatement.compile(READ_RECORD, dialect)
        self._saves = {key: DriverStatement.compile(statement, dialect) for key, statement in SAVE.items()}
        self._insert_metrics = DriverStatement.compile(INSERT_METRICS, dialect)
        self.health = WriteHealth()
        self._committed: OrderedDict[str, SessionMeta] = OrderedDict()
        """SQLite: sessions whose arrays are in their row, as this process last committed them (newest last)."""
        self._writer_connection: Connection | None = None
        """The one connection this process writes a SQLite file through, under the write lock."""
        database = self._sqlite_file(database_url)
        self.sqlite_file = database
        """The SQLite database's file (None for PostgreSQL, or SQLite in memory)."""
        self._locks = LockFile(database.with_name(database.name + "-locks")) if database else None
        self._queue = CommitQueue(
            self._write_transaction,
            in_transaction=lambda connection: bool(connection.connection.driver_connection.in_transaction),  # type: ignore[union-attr]
            wait_seconds=settings.write_timeout_seconds,
            settle_seconds=3 * settings.write_timeout_seconds + settings.statement_timeout_seconds,
        )
        try:
            # Processes starting together on a new SQLite file take turns: switching it to WAL mode
            # (the first connection does) fails at once, not after the busy timeout, if another does too.
            with self._write_lock(STARTUP_LOCK_SECONDS):
                ensure_schema(self._engine, upgrade=settings.auto_migrate)
            files = ArrayFiles(database.with_name(database.name + "-arrays")) if database else None
            self._placement = _ArrayPlacement(files, settings.array_files_min_bytes if durable_commits else NEVER)
            self._remove_unused_array_files()
        except BaseException:
            self.close()
            raise

    def _sqlite_file(self, database_url: str) -> Path | None:
        database = make_url(database_url).database
        if not self._sqlite or not database or database == ":memory:":
            return None
        return Path(database)

    # Holding sessions and writing, by engine.

    @contextmanager
    def _session_held(self, session_id: str) -> Iterator[None]:
        """On SQLite, hold the session against every other writer of it, in any process."""
        if self._locks is None:
            yield
            return
        with self._locks.held(
            session_lock(session_id), timeout=self.settings.lock_timeout_seconds, what=f"session {session_id}"
        ):
            yield

    @contextmanager
    def _key_held(self, scope: str, key: str | None) -> Iterator[None]:
        """On SQLite, hold Idempotency-Key ``key`` of ``scope`` for the request, or raise ``KeyInFlight``
        at once if another request holds it (PostgreSQL: ``_try_key_lock``, in the transaction)."""
        if key is None or self._locks is None:
            yield
            return
        with self._locks.held_if_free(key_lock(scope, key)) as held:
            if not held:
                raise KeyInFlight(f"a request with Idempotency-Key {key!r} is still being processed")
            yield

    def _try_key_lock(self, connection: Connection, scope: str, key: str) -> None:
        """PostgreSQL: hold Idempotency-Key ``key`` of ``scope`` until the transaction ends, or raise
        ``KeyInFlight`` at once if another transaction holds it."""
        if not connection.execute(sa.select(sa.func.pg_try_advisory_xact_lock(key_lock(scope, key)))).scalar_one():
            raise KeyInFlight(f"a request with Idempotency-Key {key!r} is still being processed")

    def _write_lock(self, timeout: float) -> AbstractContextManager[None]:
        """SQLite's write lock among this store's processes, waited for up to ``timeout`` s."""
        if self._locks is None:
            return _nothing()
        return self._locks.held(WRITE_LOCK, timeout=timeout, what="the database's write lock")

    @contextmanager
    def _write_transaction(self, timeout: float) -> Iterator[Connection]:
        """A SQLite write transaction on the kept connection, under the write lock (waited for up to ``timeout`` s)."""
        with self._write_lock(timeout):
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
                # Start afresh after any database error: the driver's state is not worth trusting.
                writer.invalidate()
                raise

    def _commit_batch(self, batch: Batch, *, timeout: float | None = None) -> None:
        """Commit ``batch`` durably in a SQLite write transaction (shared with others); storage failures classified."""
        try:
            with storage_errors():
                self._queue.commit(batch, timeout=timeout)
        except StorageFailure as failure:
            self.health.failed(failure, size=_payload_bytes(batch))
            if isinstance(failure, StorageFull):
                self._reclaim_wal()
            raise
        self.health.succeeded()

    def _reclaim_wal(self) -> None:
        """After a write found the disk full: checkpoint the WAL and truncate it, which gives back the room
        its frames held once they are in the database file. Best effort, within the write timeout."""
        try:
            with self._write_lock(self.settings.write_timeout_seconds), self._engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception as error:  # the next write will tell again
            log.info("could not checkpoint the WAL after a full disk: %s", error)

    @contextmanager
    def _postgres_transaction(self) -> Iterator[Connection]:
        """A transaction on a pooled connection; storage failures classified and remembered (the caller
        reports a success that wrote something: ``health.succeeded()``)."""
        try:
            with storage_errors(before_commit=True):
                connection = self._engine.connect()
            try:
                transaction = connection.begin()
                with storage_errors(before_commit=True):
                    yield connection
                with storage_errors():
                    transaction.commit()
            except BaseException:
                # The connection may be the reason: closing it must not hide what went wrong.
                with contextlib.suppress(Exception):
                    connection.close()
                raise
            with storage_errors():
                connection.close()
        except StorageFailure as failure:
            self.health.failed(failure)
            raise

    def _read(self, work: Callable[[Connection], T]) -> T:
        """``work`` on a pooled connection, outside any write transaction; storage failures classified."""
        with storage_errors(before_commit=True), self._engine.connect() as connection:
            return work(connection)

    # The interface.

    def ping(self, *, timeout: float) -> None:
        """Read from the sessions table, as requests do, within ``timeout`` s (on PostgreSQL; SQLite's
        reads do not wait)."""

        def read(connection: Connection) -> None:
            if not self._sqlite:
                _bound_transaction(connection, timeout)
            connection.execute(sa.select(sessions.c.id).limit(1)).all()

        self._read(read)

    def probe_writes(self, *, timeout: float) -> None:
        """Commit a write as large as the largest that failed lately (at least ``PROBE_MIN_BYTES``), then
        drop it again, waiting at most ``timeout`` s for each; raises if it fails."""
        failure = self.health.failure
        size = min(max(failure.size if failure else 0, PROBE_MIN_BYTES), PROBE_MAX_BYTES)
        for payload in (bytes(size), b""):
            probe = (
                sa.update(storage_probes)
                .where(storage_probes.c.id == 1)
                .values(written_at=sa.func.current_timestamp(), payload=payload)
            )
            if self._sqlite:
                self._commit_batch([Write(probe, payload_bytes=len(payload))], timeout=timeout)
                continue
            with self._postgres_transaction() as connection:
                _bound_transaction(connection, timeout)
                # A row lock on the sessions table, as a step takes, without waiting for other steps' locks.
                connection.execute(sa.select(sessions.c.id).limit(1).with_for_update(skip_locked=True)).all()
                connection.execute(probe)
        self.health.succeeded()

    def create(
        self,
        meta: SessionMeta,
        arrays: Buffers,
        *,
        quotas: Quotas | None = None,
        creation: CreationRecord | None = None,
    ) -> None:
        """Insert the session, count it in its tenant's usage within ``quotas``, and record ``creation``.

        A creation whose key another request holds, or has committed meanwhile, raises ``KeyInFlight``.
        """
        with self._key_held(meta.tenant, creation.key if creation else None):
            try:
                self._create(meta, arrays, quotas, creation)
            except sa.exc.IntegrityError as conflict:
                # Only the creation record can collide: a request with the same key committed first.
                raise KeyInFlight(f"Idempotency-Key {creation.key if creation else ''!r} was just used") from conflict

    def _create(
        self, meta: SessionMeta, arrays: Buffers, quotas: Quotas | None, creation: CreationRecord | None
    ) -> None:
        def writes(placed: dict[str, Any]) -> list[Write]:
            batch = [
                ensure_tenant(self._engine.dialect.name, meta.tenant, meta.created_at),
                Write(sa.insert(sessions).values(**_row_values(meta), **placed), payload_bytes=len(placed["arrays"])),
                *usage_writes(meta.tenant, sessions=1, stored_bytes=meta.stored_bytes, quotas=quotas),
            ]
            if creation is not None:
                batch.append(
                    Write(
                        sa.insert(creation_records).values(
                            tenant=meta.tenant,
                            key=creation.key,
                            request_hash=creation.request_hash,
                            session_id=meta.id,
                            created_at=meta.created_at,
                        )
                    )
                )
            return batch

        if not self._sqlite:
            with self._postgres_transaction() as connection:
                if creation is not None:
                    self._try_key_lock(connection, meta.tenant, creation.key)
                run_batch(connection, writes(self._placement.place(meta.id, None, arrays)))
            self.health.succeeded()
            return
        with self._session_held(meta.id):
            try:
                with storage_errors(before_commit=True):
                    placed = self._placement.place(meta.id, None, arrays)
                self._commit_batch(writes(placed))
                if placed["arrays_slot"] is None:
                    self._remember(meta)
            except BaseException:
                if self._placement.files is not None:
                    self._placement.files.remove(meta.id)
                raise

    def creation(self, tenant: str, key: str) -> CreationRecord | None:
        row = self._read(
            lambda connection: connection.execute(
                sa.select(creation_records).where(creation_records.c.tenant == tenant, creation_records.c.key == key)
            ).first()
        )
        return (
            None
            if row is None
            else CreationRecord(key=row.key, request_hash=row.request_hash, session_id=row.session_id)
        )

    def usage(self, tenant: str) -> TenantUsage:
        row = self._read(
            lambda connection: connection.execute(
                sa.select(tenants.c.sessions, tenants.c.stored_bytes).where(tenants.c.name == tenant)
            ).first()
        )
        return TenantUsage(sessions=0, stored_bytes=0) if row is None else TenantUsage(row.sessions, row.stored_bytes)

    def session_count(self) -> int:
        """Sessions of every tenant, from the tenants' counts (kept in the transactions that change them)."""
        total = sa.select(sa.func.coalesce(sa.func.sum(tenants.c.sessions), 0))
        return int(self._read(lambda connection: connection.execute(total).scalar_one()))

    def get(self, session_id: str, *, with_arrays: bool) -> tuple[SessionMeta, bytes | None] | None:
        if not with_arrays:
            row = self._read(
                lambda connection: connection.execute(
                    sa.select(*META_COLUMNS).where(sessions.c.id == session_id)
                ).first()
            )
            return None if row is None else (_meta(row), None)
        for _ in range(READ_ATTEMPTS):
            read = self._read_unlocked(session_id)
            if read != "moved":
                return read
        # Writers kept overtaking: read while holding the session, where nothing moves.
        with self._session_held(session_id):
            row = self._read(lambda connection: connection.execute(READ_HELD, {"session_id": session_id}).first())
            if row is None:
                return None
            arrays = self._read(lambda connection: self._placement.read(connection, session_id, row.arrays_slot))
            return _meta(row), arrays

    def _read_unlocked(self, session_id: str) -> tuple[SessionMeta, bytes] | Literal["moved"] | None:
        """The session and its arrays, or "moved" when a writer may have overwritten the slot file read."""
        row = self._read(lambda connection: connection.execute(READ_SESSION, {"session_id": session_id}).first())
        if row is None:
            return None
        if row.arrays_slot is None:
            return _meta(row), row.arrays
        try:
            with storage_errors():
                arrays = self._placement.read_file(session_id, row.arrays_slot)
        except FileNotFoundError:
            return "moved"
        version = self._read(
            lambda connection: connection.execute(READ_VERSION, {"session_id": session_id}).scalar_one_or_none()
        )
        return (_meta(row), arrays) if version == row.version else "moved"

    def list(self, *, limit: int, after: tuple[datetime, str] | None, tenant: str | None) -> list[SessionMeta]:
        query = sa.select(*META_COLUMNS).order_by(sessions.c.created_at, sessions.c.id).limit(limit)
        if tenant is not None:
            query = query.where(sessions.c.tenant == tenant)
        if after is not None:
            query = query.where(sa.tuple_(sessions.c.created_at, sessions.c.id) > sa.tuple_(*after))
        return self._read(lambda connection: [_meta(row) for row in connection.execute(query)])

    def delete(self, session_id: str, *, expected_version: int | None = None) -> bool:
        with self.locked(session_id) as held:
            if expected_version is not None and held.meta.version != expected_version:
                raise VersionMismatch(f"session {session_id} is at version {held.meta.version}")
            held.writes.extend(
                [
                    Write(sa.delete(idempotency_records).where(idempotency_records.c.session_id == session_id)),
                    forget_metrics(session_id),
                    *forget_rounds(session_id),
                    Write(
                        sa.delete(sessions).where(sessions.c.id == session_id, sessions.c.version == held.meta.version),
                        expect_rows=1,
                    ),
                    *usage_writes(held.meta.tenant, sessions=-1, stored_bytes=-held.meta.stored_bytes),
                ]
            )
        if self._placement.files is not None:
            # After the commit: a crash before this leaves files that the next start removes.
            self._placement.files.remove(session_id)
        return True

    @contextmanager
    def locked(
        self, session_id: str, *, idempotency_key: str | None = None, cached_version: int | None = None
    ) -> Iterator[_Held]:
        """Hold the session for a read-modify-write, and commit what ``save`` prepared on a clean exit.

        On SQLite, when the caller holds ``cached_version`` of a session whose arrays are in its row and
        which this process last committed at that version, nothing is read: the commit checks the
        version instead, and the Idempotency-Key's uniqueness; if either fails, ``StaleAssumption``
        asks for the unit of work again, which then reads.
        """
        if not self._sqlite:
            with self._postgres_transaction() as connection:
                if idempotency_key is not None:
                    self._try_key_lock(connection, session_id, idempotency_key)
                held = self._held(connection, session_id, idempotency_key, self._lock_held)
                yield held
                run_batch(connection, held.writes)
            if held.writes:
                self.health.succeeded()
            return
        with self._key_held(session_id, idempotency_key), self._session_held(session_id):
            held = self._trusted(session_id, cached_version) or self._read(
                lambda connection: self._held(connection, session_id, idempotency_key, self._read_held)
            )
            yield held
            if not held.writes:
                return
            self._committed.pop(session_id, None)
            try:
                self._commit_batch(held.writes)
            except (VersionMismatch, sa.exc.IntegrityError) as conflict:
                if held.trusted:
                    raise StaleAssumption(f"session {session_id} changed elsewhere: {conflict}") from conflict
                raise
            if held.saved and held.slot is None:
                self._remember(held.meta)

    def _trusted(self, session_id: str, cached_version: int | None) -> _Held | None:
        meta = self._committed.get(session_id)
        if cached_version is None or meta is None or meta.version != cached_version:
            return None

        def read_arrays() -> bytes:
            row = self._read(lambda reader: self._read_held.first(reader, {"session_id": session_id}))
            if row is None or row.version != meta.version or row.arrays_slot is not None:
                raise StaleAssumption(f"session {session_id} changed elsewhere")
            return self._read(lambda reader: self._placement.read(reader, session_id, None))

        return self._new_held(meta, slot=None, record=None, read_arrays=read_arrays, read=self._read, trusted=True)

    def _new_held(
        self,
        meta: SessionMeta,
        *,
        slot: int | None,
        record: IdempotencyRecord | None,
        read_arrays: Callable[[], bytes],
        read: Callable[[Callable[[Connection], Any]], Any],
        trusted: bool = False,
    ) -> _Held:
        return _Held(
            meta,
            slot=slot,
            record=record,
            read_arrays=read_arrays,
            placement=self._placement,
            health=self.health,
            saves=self._saves,
            insert_metrics=self._insert_metrics,
            read=read,
            postgres=not self._sqlite,
            trusted=trusted,
        )

    def _remember(self, meta: SessionMeta) -> None:
        self._committed[meta.id] = meta
        self._committed.move_to_end(meta.id)
        while len(self._committed) > SESSIONS_REMEMBERED:
            self._committed.popitem(last=False)

    def _held(self, connection: Connection, session_id: str, key: str | None, query: DriverStatement) -> _Held:
        row = query.first(connection, {"session_id": session_id})
        if row is None:
            raise SessionMissing(f"no session {session_id!r}")
        record = None
        if key is not None:
            record = _record(self._read_record.first(connection, {"session_id": session_id, "key": key}))
        slot = row.arrays_slot
        read: Callable[[Callable[[Connection], Any]], Any]
        if self._sqlite:
            read = self._read
        else:

            def read(work: Callable[[Connection], Any]) -> Any:
                return work(connection)

        def read_arrays() -> bytes:
            arrays: bytes = read(lambda reader: self._placement.read(reader, session_id, slot))
            return arrays

        return self._new_held(_meta(row), slot=slot, record=record, read_arrays=read_arrays, read=read)

    def metrics(self, session_id: str, *, after_step: int, limit: int) -> Sequence[StepMetrics]:
        return self._read(lambda connection: read_metrics(connection, session_id, after_step=after_step, limit=limit))

    def round(self, session_id: str, step: int) -> RoundRecord | None:
        return self._read(lambda connection: read_round(connection, session_id, step))

    def open_round(self, session_id: str, step: int) -> Sequence[Contribution]:
        return self._read(lambda connection: read_contributions(connection, session_id, step, with_grads=False))

    def forget_records(self, *, created_before: datetime, total_response_bytes: int) -> None:
        """Forget the Idempotency-Key records older than ``created_before``, and the first responses of the
        oldest records beyond ``total_response_bytes`` kept over every session."""
        writes = [
            Write(sa.delete(idempotency_records).where(idempotency_records.c.created_at < created_before)),
            Write(sa.delete(creation_records).where(creation_records.c.created_at < created_before)),
        ]
        cutoff = self._read(lambda connection: _response_cutoff(connection, total_response_bytes))
        if cutoff is not None:
            writes.append(
                Write(
                    sa.update(idempotency_records)
                    .where(idempotency_records.c.seq <= cutoff, sa.func.length(idempotency_records.c.params) > 0)
                    .values(params=b"")
                )
            )
        self.commit(writes)

    def commit(self, writes: Batch) -> None:
        """Commit ``writes`` in one transaction (on SQLite, one shared with the writes that arrive together)."""
        if self._sqlite:
            self._commit_batch(writes)
            return
        with self._postgres_transaction() as connection:
            run_batch(connection, writes)
        self.health.succeeded()

    def read(self, work: Callable[[Connection], T]) -> T:
        """``work`` on a pooled connection, outside any write transaction."""
        return self._read(work)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        if self._writer_connection is not None:
            try:
                # After a transaction still running, but not for long: the process is stopping.
                with self._write_lock(min(self.settings.write_timeout_seconds, CLOSE_WAIT_SECONDS)):
                    self._writer_connection.close()
            except StorageFailure:
                pass  # a transaction still runs; the process is ending, and SQLite rolls back what it left
            self._writer_connection = None
        self._engine.dispose()
        if self._locks is not None:
            self._locks.close()

    def _remove_unused_array_files(self) -> None:
        """Slot files that no row names: of a session deleted, of one whose creation never committed, or of
        one whose arrays went back into its row.

        Slot files are written only while their session is held, and before the commit that names
        them; so files that the row of a session nobody holds does not name can go.
        """
        files = self._placement.files
        if files is None or self._locks is None:
            return
        in_files = self._read(
            lambda connection: {
                row.id
                for row in connection.execute(sa.select(sessions.c.id).where(sessions.c.arrays_slot.is_not(None)))
            }
        )
        for session_id in files.sessions() - in_files:
            with self._locks.held_if_free(session_lock(session_id)) as held:
                if not held:
                    continue
                row = self._read(functools.partial(_slot_row, session_id=session_id))
                if row is None or row.arrays_slot is None:
                    files.remove(session_id)


def _bound_transaction(connection: Connection, timeout: float) -> None:
    """PostgreSQL: this transaction's statements and lock waits last at most ``timeout`` s."""
    milliseconds = max(1, int(timeout * 1000))
    connection.execute(sa.text(f"SET LOCAL lock_timeout = {milliseconds}"))
    connection.execute(sa.text(f"SET LOCAL statement_timeout = {milliseconds}"))


def _slot_row(connection: Connection, session_id: str) -> sa.Row[Any] | None:
    return connection.execute(READ_SLOT, {"session_id": session_id}).first()


def _response_cutoff(connection: Connection, total_response_bytes: int) -> int | None:
    """The newest record whose first response, with all older ones, must go to keep ``total_response_bytes``."""
    size = sa.func.length(idempotency_records.c.params)
    total = connection.execute(sa.select(sa.func.coalesce(sa.func.sum(size), 0))).scalar_one()
    excess = int(total) - total_response_bytes
    if excess <= 0:
        return None
    rows = connection.execute(
        sa.select(idempotency_records.c.seq, size.label("size")).where(size > 0).order_by(idempotency_records.c.seq)
    )
    for row in rows:
        excess -= row.size
        if excess <= 0:
            return int(row.seq)
    return None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _payload_bytes(batch: Batch) -> int:
    """The bytes of arrays and responses a batch writes: what its commit needed room for."""
    return sum(write.payload_bytes for write in batch)


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
        "tenant": meta.tenant,
        "stored_bytes": meta.stored_bytes,
        "aggregation": meta.aggregation,
        "clip_grad_norm": meta.clip_grad_norm,
        "nonfinite": meta.nonfinite,
    }
