"""Storage that is slow, locked or cut off: every wait is bounded, answered 503 with Retry-After, and changes nothing.

PostgreSQL: a row or table lock held by another connection, a full connection pool, a
backend killed in the middle of a step. SQLite: a session or the write lock held by
another process. The service runs in-process over a real database.
"""

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from service.store.sqlite.file_locks import WRITE_LOCK, LockFile, session_lock
from tests.api.conftest import assert_problem, create_session, ok, send, service_client

BODY = {"optimizer": "rprop", "params": {"w": [1.0, 2.0]}}
GRADS = {"grads": {"w": [1.0, -1.0]}}
BOUND = 1.0
"""The timeouts these tests configure, in seconds."""


def assert_retry_later(response: Any, *, took: float, bound: float = BOUND) -> None:
    assert_problem(response, 503)
    assert int(response.headers["retry-after"]) >= 0
    assert took < bound + 4.0, f"answered after {took:.1f} s; the bound was {bound} s"


def timed_step(client: TestClient, session_id: str) -> tuple[Any, float]:
    started = time.monotonic()
    response = send(client, "POST", f"/v1/sessions/{session_id}/step", GRADS)
    return response, time.monotonic() - started


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[sa.Engine]:
    """A second connection's engine on the test's PostgreSQL schema."""
    engine = sa.create_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_client(postgres_url: str) -> Iterator[TestClient]:
    with service_client(postgres_url, lock_timeout_seconds=BOUND, ready_timeout_seconds=BOUND) as client:
        yield client


def hold_row(postgres: sa.Engine, session_id: str) -> sa.Connection:
    """Another connection holding the session's row lock until it rolls back."""
    connection = postgres.connect()
    connection.execute(sa.text("SELECT id FROM sessions WHERE id = :id FOR UPDATE"), {"id": session_id})
    return connection


def test_postgres_a_session_locked_elsewhere_answers_503_within_the_lock_timeout_and_changes_nothing(
    pg_client: TestClient, postgres: sa.Engine
) -> None:
    session = create_session(pg_client, BODY)
    holder = hold_row(postgres, session.id)
    try:
        response, took = timed_step(pg_client, session.id)
    finally:
        holder.rollback()
        holder.close()

    assert_retry_later(response, took=took)
    assert ok(send(pg_client, "POST", f"{session.url}/step", GRADS))["step"] == 1


def test_postgres_a_table_locked_elsewhere_makes_readyz_say_503_within_its_bound_and_ready_again_after(
    pg_client: TestClient, postgres: sa.Engine
) -> None:
    create_session(pg_client, BODY)
    assert pg_client.get("/readyz").status_code == 200
    with postgres.connect() as locker:
        locker.execute(sa.text("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        response = pg_client.get("/readyz")
        took = time.monotonic() - started
        locker.rollback()

    assert_retry_later(response, took=took)
    assert pg_client.get("/readyz").status_code == 200


def test_postgres_waiting_for_a_free_connection_is_bounded_and_answered_503(
    postgres_url: str, postgres: sa.Engine
) -> None:
    settings = {"pool_size": 1, "pool_timeout_seconds": BOUND, "lock_timeout_seconds": 30.0}
    with service_client(postgres_url, **settings) as client:
        session = create_session(client, BODY)
        holder = hold_row(postgres, session.id)
        waiting: list[Any] = []
        # Two steps wait on the row lock, each holding one of the pool's two connections.
        threads = [threading.Thread(target=lambda: waiting.append(timed_step(client, session.id)[0])) for _ in range(2)]
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: waiting_on_lock(postgres) == 2, "both steps wait on the row lock")
            started = time.monotonic()
            response = client.get(f"/v1/sessions/{session.id}")
            took = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
            for thread in threads:
                thread.join(30)

        assert_retry_later(response, took=took)
        assert sorted(ok(reply)["step"] for reply in waiting) == [1, 2]


def waiting_on_lock(postgres: sa.Engine) -> int:
    """Backends of this database waiting for a lock."""
    with postgres.connect() as connection:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return int(connection.execute(sa.text(query)).scalar_one())


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def test_postgres_a_backend_killed_in_the_middle_of_a_step_is_retried_inside_and_the_step_applies_once(
    postgres_url: str, postgres: sa.Engine
) -> None:
    with service_client(postgres_url, lock_timeout_seconds=30.0) as client:
        session = create_session(client, BODY)
        holder = hold_row(postgres, session.id)
        replies: list[Any] = []
        stepping = threading.Thread(target=lambda: replies.append(timed_step(client, session.id)[0]))
        try:
            stepping.start()
            wait_until(lambda: waiting_on_lock(postgres) == 1, "the step waits on the row lock")
            with postgres.connect() as killer:
                killed = killer.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).all()
            assert killed == [(True,)]
        finally:
            holder.rollback()
            holder.close()
            stepping.join(30)

        assert ok(replies[0])["step"] == 1
        assert ok(client.get(f"/v1/sessions/{session.id}"))["step"] == 1


# SQLite: the locks its server processes share are held by another process.


def hold_in_another_process(lock_path: Path, offset: int, holding: Any, release: Any) -> None:
    locks = LockFile(lock_path)
    with locks.held(offset, timeout=10, what="the test's lock"):
        holding.set()
        release.wait(60)
    locks.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optim.sqlite3'}"


def held_elsewhere(database_url: str, offset: int) -> Iterator[None]:
    database = Path(make_url(database_url).database or "")
    context = multiprocessing.get_context("spawn")
    holding, release = context.Event(), context.Event()
    lock_path = database.with_name(database.name + "-locks")
    holder = context.Process(target=hold_in_another_process, args=(lock_path, offset, holding, release))
    holder.start()
    try:
        assert holding.wait(30), "the other process never took the lock"
        yield
    finally:
        release.set()
        holder.join(30)


@pytest.mark.parametrize("lock", ["session", "write"])
def test_sqlite_a_lock_held_by_another_process_answers_503_within_its_bound_and_changes_nothing(
    sqlite_url: str, lock: str
) -> None:
    settings = {"lock_timeout_seconds": BOUND, "write_timeout_seconds": BOUND}
    with service_client(sqlite_url, **settings) as client:
        session = create_session(client, BODY)
        offset = session_lock(session.id) if lock == "session" else WRITE_LOCK
        for _ in held_elsewhere(sqlite_url, offset):
            response, took = timed_step(client, session.id)
            assert_retry_later(response, took=took)
            if lock == "write":
                readiness = client.get("/readyz")
                assert readiness.status_code == 503, "writes fail, and /readyz said ready"
        assert client.get("/readyz").status_code == 200
        assert ok(send(client, "POST", f"{session.url}/step", GRADS))["step"] == 1
