"""Writes that arrive together share one SQLite transaction, yet each batch stands or falls alone; unless
SQLite rolls the whole transaction back, and then every batch in it fails and none is committed."""

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.store import StorageBusy, StorageFailure
from service.store.sql import build_engine
from service.store.sqlite.commit_queue import CommitQueue, Write

WRITERS = 24
DOOMED = 13
"""The writer whose insert makes SQLite roll back its whole transaction (a trigger's RAISE(ROLLBACK))."""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = build_engine(f"sqlite:///{tmp_path / 'queue.sqlite3'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE notes (writer INTEGER PRIMARY KEY)"))
    yield engine
    engine.dispose()


def queue_on(engine: sa.Engine, *, first_begin: threading.Event | None = None) -> CommitQueue:
    """A commit queue over ``engine``; its first transaction waits for ``first_begin``, if given."""
    numbers = itertools.count(1)

    @contextmanager
    def begin(timeout: float) -> Iterator[sa.Connection]:
        if next(numbers) == 1 and first_begin is not None:
            assert first_begin.wait(30)
        with engine.connect() as connection:
            connection.info["writes"] = True
            with connection.begin():
                yield connection

    def in_transaction(connection: sa.Connection) -> bool:
        return bool(connection.connection.driver_connection.in_transaction)  # type: ignore[union-attr]

    return CommitQueue(begin, in_transaction=in_transaction, wait_seconds=30, settle_seconds=30)


def note(writer: int, *, fail: bool = False) -> list[Write]:
    batch = [Write(sa.text("INSERT INTO notes VALUES (:writer)"), {"writer": writer})]
    if fail:
        batch.append(Write(sa.text("INSERT INTO notes VALUES (:writer)"), {"writer": writer}))  # a duplicate key
    return batch


def stored(engine: sa.Engine) -> set[int]:
    with engine.connect() as connection:
        return {row.writer for row in connection.execute(sa.text("SELECT writer FROM notes"))}


def in_threads(write: Callable[[int], None], writers: range = range(WRITERS)) -> list[threading.Thread]:
    threads = [threading.Thread(target=write, args=(writer,)) for writer in writers]
    for thread in threads:
        thread.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a writer never finished"


def run_writers(queue: CommitQueue, failing: set[int]) -> dict[int, BaseException | None]:
    outcomes: dict[int, BaseException | None] = {}
    start = threading.Barrier(WRITERS)

    def write(writer: int) -> None:
        start.wait()
        try:
            queue.commit(note(writer, fail=writer in failing))
        except Exception as error:
            outcomes[writer] = error
        else:
            outcomes[writer] = None

    join(in_threads(write))
    return outcomes


def test_concurrent_writers_are_all_committed(engine: sa.Engine) -> None:
    outcomes = run_writers(queue_on(engine), failing=set())

    assert outcomes == dict.fromkeys(range(WRITERS))
    assert stored(engine) == set(range(WRITERS))


def test_a_failing_batch_rolls_back_alone_and_its_writer_hears_its_own_error(engine: sa.Engine) -> None:
    failing = {0, 5, 11, 23}

    outcomes = run_writers(queue_on(engine), failing=failing)

    assert {writer for writer, error in outcomes.items() if error is not None} == failing
    assert all(isinstance(outcomes[writer], sa.exc.IntegrityError) for writer in failing)
    assert stored(engine) == set(range(WRITERS)) - failing


def test_a_writer_after_a_failed_one_still_commits(engine: sa.Engine) -> None:
    queue = queue_on(engine)

    with pytest.raises(sa.exc.IntegrityError):
        queue.commit(note(1, fail=True))
    queue.commit(note(2))

    assert stored(engine) == {2}


def wait_until_queued(queue: CommitQueue, writers: int) -> None:
    """Until ``writers`` writers wait for a transaction (the queue's own list: no other way to know)."""
    deadline = time.monotonic() + 30
    while len(queue._waiting) < writers:
        assert time.monotonic() < deadline, f"{len(queue._waiting)} writers queued, expected {writers}"
        time.sleep(0.001)


def test_when_sqlite_rolls_back_the_whole_transaction_every_batch_in_it_fails_and_none_is_committed(
    engine: sa.Engine,
) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                f"CREATE TRIGGER doom BEFORE INSERT ON notes WHEN NEW.writer = {DOOMED} "
                "BEGIN SELECT RAISE(ROLLBACK, 'the whole transaction goes'); END"
            )
        )
    first_begin = threading.Event()
    queue = queue_on(engine, first_begin=first_begin)
    outcomes: dict[int, BaseException | None] = {}

    def write(writer: int) -> None:
        try:
            queue.commit(note(writer))
        except Exception as error:
            outcomes[writer] = error
        else:
            outcomes[writer] = None

    # Writer 0 leads a transaction of its own, which waits until all the others have queued: they
    # then share the next transaction, which the doomed writer's insert makes SQLite roll back.
    threads = in_threads(write, range(1))
    wait_until_leading(queue)
    threads += in_threads(write, range(1, WRITERS))
    wait_until_queued(queue, WRITERS - 1)
    first_begin.set()
    join(threads)

    assert outcomes[0] is None
    for writer in range(1, WRITERS):
        error = outcomes[writer]
        assert isinstance(error, StorageFailure), f"writer {writer}: {error!r}"
        assert "rolled back the whole write transaction" in str(error), str(error)
    assert stored(engine) == {0}


def wait_until_leading(queue: CommitQueue) -> None:
    deadline = time.monotonic() + 30
    while not queue._leading:
        assert time.monotonic() < deadline, "no writer leads"
        time.sleep(0.001)


def test_a_writer_still_queued_after_its_wait_leaves_the_queue_with_storage_busy(engine: sa.Engine) -> None:
    first_begin = threading.Event()
    queue = queue_on(engine, first_begin=first_begin)
    leader = in_threads(lambda writer: queue.commit(note(writer)), range(1))
    wait_until_leading(queue)
    started = time.monotonic()

    with pytest.raises(StorageBusy, match="no write transaction was free"):
        queue.commit(note(1), timeout=0.5)

    waited = time.monotonic() - started
    first_begin.set()
    join(leader)
    assert 0.4 < waited < 5, waited
    assert stored(engine) == {0}
    assert not queue._waiting
