"""The step's statements on the driver's cursor (service/store/driver_statements.py) read and write
exactly what SQLAlchemy's ``Connection.execute`` does, on each engine; and SQLite's kept writer
connection recovers from a failed transaction and from being invalidated."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.store import SqlSessionStore
from service.store.base import SessionMeta
from service.store.driver_statements import DriverStatement
from service.store.sql import LOCK_HELD, SAVE, StoreSettings
from service.store.sqlite.commit_queue import Write
from service.store.tables import sessions
from tests.databases import fresh_database

GROUPS: list[dict[str, Any]] = [
    {"params": ["w", "ß ünï"], "lr": 0.01, "alpha": 0.99, "eps": 1e-08, "centered": False, "foreach": None},
    {"params": ["b"], "lr": 1e-300, "etas": [0.5, 1.2], "maximize": True},
]


def _stored(connection: sa.Connection, session_id: str) -> tuple[Any, ...]:
    """A session's row as stored, before any of SQLAlchemy's result processing."""
    qmark = connection.dialect.paramstyle == "qmark"
    placeholder, parameters = ("?", (session_id,)) if qmark else ("%(id)s", {"id": session_id})
    query = (
        f"SELECT step, version, updated_at, param_groups, arrays, arrays_slot FROM sessions WHERE id = {placeholder}"
    )
    return tuple(connection.exec_driver_sql(query, parameters).one())


def _meta(session_id: str, *, version: int = 1) -> SessionMeta:
    created = datetime(2026, 11, 21, 12, 34, 56, 789012)
    return SessionMeta(
        id=session_id,
        optimizer="rmsprop",
        dtype="float64",
        step=7,
        version=version,
        param_groups=GROUPS,
        shapes={"w": [2, 3], "ß ünï": [], "b": [3]},
        created_at=created,
        updated_at=created,
    )


@pytest.fixture
def store(engine: str, tmp_path: Path) -> Iterator[SqlSessionStore]:
    with fresh_database(engine, tmp_path) as url:
        opened = SqlSessionStore(url, StoreSettings(array_files_min_bytes=1 << 30))
        try:
            yield opened
        finally:
            opened.close()


def _row(connection: sa.Connection, session_id: str) -> tuple[Any, ...] | None:
    row = connection.execute(LOCK_HELD, {"session_id": session_id}).first()
    return None if row is None else tuple(row)


def test_the_lock_query_returns_the_row_sqlalchemy_returns(store: SqlSessionStore) -> None:
    store.create(_meta("first"), [b"\x00\x01arrays"])
    statement = DriverStatement.compile(LOCK_HELD, store._engine.dialect)
    with store._engine.connect() as connection:
        expected = _row(connection, "first")
        found = statement.first(connection, {"session_id": "first"})
        assert expected is not None
        assert tuple(found) == expected
        assert found.param_groups == GROUPS
        assert found.created_at == datetime(2026, 11, 21, 12, 34, 56, 789012)
        assert statement.first(connection, {"session_id": "missing"}) is None


@pytest.mark.parametrize("groups_changed", [False, True])
@pytest.mark.parametrize("with_arrays", [False, True])
def test_a_save_writes_what_sqlalchemy_writes(store: SqlSessionStore, groups_changed: bool, with_arrays: bool) -> None:
    for session_id in ("by-driver", "by-sqlalchemy"):
        store.create(_meta(session_id), [b"old"])
    values: dict[str, Any] = {
        "old_version": 1,
        "new_step": 8,
        "new_version": 2,
        # No microseconds: the driver's own datetime adapter would store these without the fraction.
        "new_updated_at": datetime(2027, 1, 2, 3, 4, 5),
    }
    if groups_changed:
        values["new_param_groups"] = [{**GROUPS[0], "lr": 0.5}, GROUPS[1]]
        values["new_clip_grad_norm"] = {"max_norm": 1.5, "norm_type": "inf"}
        values["new_nonfinite"] = "skip"
        values["new_lr_scheduler"] = {"config": {"name": "StepLR", "step_size": 3}, "state_dict": {"last_epoch": 2}}
    if with_arrays:
        values["new_arrays"], values["new_arrays_slot"] = b"\xff new \x00 arrays", None
        values["new_stored_bytes"] = 17
    statement = SAVE[groups_changed, with_arrays]
    with store._engine.begin() as connection:
        driver = DriverStatement.compile(statement, store._engine.dialect)
        assert driver.rowcount(connection, {**values, "session_id": "by-driver"}) == 1
        assert connection.execute(statement, {**values, "session_id": "by-sqlalchemy"}).rowcount == 1
        assert driver.rowcount(connection, {**values, "session_id": "by-driver"}) == 0  # the version moved on
    with store._engine.connect() as connection:
        rows = [
            connection.execute(sa.select(sessions).where(sessions.c.id == session_id)).one()._asdict()
            for session_id in ("by-driver", "by-sqlalchemy")
        ]
        stored = [_stored(connection, session_id) for session_id in ("by-driver", "by-sqlalchemy")]
    assert stored[0] == stored[1]
    for row in rows:
        row.pop("id")
    assert rows[0] == rows[1]
    assert rows[0]["step"] == 8
    assert rows[0]["updated_at"] == datetime(2027, 1, 2, 3, 4, 5)
    assert rows[0]["arrays"] == (b"\xff new \x00 arrays" if with_arrays else b"old")
    assert rows[0]["param_groups"][0]["lr"] == (0.5 if groups_changed else 0.01)
    assert rows[0]["stored_bytes"] == (17 if with_arrays else 0)


def test_a_statement_with_values_of_its_own_is_refused(store: SqlSessionStore) -> None:
    with pytest.raises(ValueError, match="not a plain bindparam"):
        DriverStatement.compile(sa.select(sessions.c.id).where(sessions.c.step == 5), store._engine.dialect)
    with pytest.raises(ValueError, match="not a plain bindparam"):
        DriverStatement.compile(sa.select(sessions.c.id).where(sessions.c.id.in_(["a", "b"])), store._engine.dialect)


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it_and_the_next_write_goes_on(store: SqlSessionStore) -> None:
    store.create(_meta("session"), [b"arrays"])
    missing = sa.Table("missing", sa.MetaData(), sa.Column("x", sa.Integer))
    broken = DriverStatement.compile(
        sa.update(missing).where(missing.c.x == sa.bindparam("x")).values(x=sa.bindparam("y")), store._engine.dialect
    )
    expected = sa.exc.ProgrammingError if store._engine.dialect.name == "postgresql" else sa.exc.OperationalError

    def failing_step() -> None:
        with store.locked("session") as held:
            held.writes.append(Write(broken, {"x": 1, "y": 2}))

    with pytest.raises(expected):
        failing_step()
    assert _step(store, "session") == 8


def _step(store: SqlSessionStore, session_id: str) -> int:
    with store.locked(session_id) as locked:
        meta = locked.meta
        locked.save(replace(meta, step=meta.step + 1, version=meta.version + 1), None)
    found = store.get(session_id, with_arrays=False)
    assert found is not None
    return found[0].step


def test_writes_go_on_after_a_failed_transaction_and_after_the_connection_is_invalidated(
    store: SqlSessionStore,
) -> None:
    store.create(_meta("session"), [b"arrays"])
    assert _step(store, "session") == 8

    def failing_step() -> None:
        with store.locked("session") as locked:
            locked.save(replace(locked.meta, step=100, version=locked.meta.version + 1), None)
            raise RuntimeError("mid-step")

    with pytest.raises(RuntimeError, match="mid-step"):
        failing_step()
    assert _step(store, "session") == 9
    if store._writer_connection is not None:  # SQLite's kept connection; PostgreSQL's writes check one out
        store._writer_connection.invalidate()
    assert _step(store, "session") == 10


def test_sqlite_write_transactions_hold_the_write_lock_from_their_start_after_an_invalidation(
    tmp_path: Path,
) -> None:
    """BEGIN IMMEDIATE, not a deferred BEGIN that would have to upgrade its lock (and could fail
    with SQLITE_BUSY) once another process has committed in between."""
    database = tmp_path / "db.sqlite3"
    store = SqlSessionStore(f"sqlite:///{database}")
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        store.create(_meta("session"), [b"arrays"])
        for _ in range(2):
            with store._write_transaction(10), pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            assert store._writer_connection is not None
            store._writer_connection.invalidate()
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        store.close()
