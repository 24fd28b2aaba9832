"""Writers that arrive together share one SQLite transaction, yet each one's work stands or falls alone;
and writers with the same key (the session they write) never share one."""

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.store.group_commit import GroupCommit
from service.store.sql import build_engine

WRITERS = 24


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = build_engine(f"sqlite:///{tmp_path / 'group.sqlite3'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE notes (writer INTEGER PRIMARY KEY)"))
    yield engine
    engine.dispose()


def transaction_on(engine: sa.Engine) -> GroupCommit:
    """Group commit over ``engine``; each transaction it begins is numbered in ``connection.info["transaction"]``."""
    numbers = itertools.count(1)

    def begin() -> Iterator[sa.Connection]:
        with engine.connect() as connection:
            connection.info["writes"] = True
            connection.info["transaction"] = next(numbers)
            with connection.begin():
                yield connection

    return GroupCommit(contextmanager(begin))


def stored(engine: sa.Engine) -> set[int]:
    with engine.connect() as connection:
        return {row.writer for row in connection.execute(sa.text("SELECT writer FROM notes"))}


def in_threads(write: Callable[[int], None]) -> None:
    """``write(writer)`` for each of the WRITERS, each in a thread of its own; all must finish."""
    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a writer never finished"


def run_writers(group: GroupCommit, failing: set[int]) -> dict[int, BaseException | None]:
    outcomes: dict[int, BaseException | None] = {}
    start = threading.Barrier(WRITERS)

    def write(writer: int) -> None:
        start.wait()
        try:
            with group.transaction() as connection:
                connection.execute(sa.text("INSERT INTO notes VALUES (:writer)"), {"writer": writer})
                if writer in failing:
                    raise ValueError(f"writer {writer} fails after writing")
        except ValueError as error:
            outcomes[writer] = error
        else:
            outcomes[writer] = None

    in_threads(write)
    return outcomes


def test_concurrent_writers_are_all_committed(engine: sa.Engine) -> None:
    outcomes = run_writers(transaction_on(engine), failing=set())

    assert outcomes == dict.fromkeys(range(WRITERS))
    assert stored(engine) == set(range(WRITERS))


def test_a_failing_writer_rolls_back_alone_and_hears_its_own_error(engine: sa.Engine) -> None:
    failing = {0, 5, 11, 23}

    outcomes = run_writers(transaction_on(engine), failing=failing)

    assert {writer for writer, error in outcomes.items() if error is not None} == failing
    assert all(str(outcomes[writer]) == f"writer {writer} fails after writing" for writer in failing)
    assert stored(engine) == set(range(WRITERS)) - failing


def test_a_writer_after_a_failed_one_still_commits(engine: sa.Engine) -> None:
    group = transaction_on(engine)

    def write_then_fail() -> None:
        with group.transaction() as connection:
            connection.execute(sa.text("INSERT INTO notes VALUES (1)"))
            raise ValueError("on purpose")

    with pytest.raises(ValueError, match="on purpose"):
        write_then_fail()
    with group.transaction() as connection:
        connection.execute(sa.text("INSERT INTO notes VALUES (2)"))

    assert stored(engine) == {2}


def wait_until_queued(group: GroupCommit, writers: int) -> None:
    """Until ``writers`` writers wait for a transaction (GroupCommit's queue: no other way to know)."""
    deadline = time.monotonic() + 30
    while len(group._waiting) < writers:
        assert time.monotonic() < deadline, f"{len(group._waiting)} writers queued, expected {writers}"
        time.sleep(0.001)


def test_a_writer_whose_key_the_transaction_holds_waits_for_a_later_one_and_writers_with_other_keys_join(
    engine: sa.Engine,
) -> None:
    group = transaction_on(engine)
    keys = {0: "a", 1: "a", 2: "b", 3: "a", 4: None, 5: "b", 6: "c", 7: None}
    transaction_of: dict[int, int] = {}
    leading = threading.Event()
    release = threading.Event()

    def write(writer: int) -> None:
        with group.transaction(key=keys[writer]) as connection:
            connection.execute(sa.text("INSERT INTO notes VALUES (:writer)"), {"writer": writer})
            transaction_of[writer] = connection.info["transaction"]
            if writer == 0:
                leading.set()
                assert release.wait(30)

    threads = [threading.Thread(target=write, args=(writer,)) for writer in keys]
    threads[0].start()
    assert leading.wait(30)
    # The others queue up one by one, in this order, while writer 0 holds its transaction open.
    for queued, thread in enumerate(threads[1:], start=1):
        thread.start()
        wait_until_queued(group, queued)
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a writer never finished"

    assert stored(engine) == set(keys)
    writers_of: defaultdict[int, list[int]] = defaultdict(list)
    for writer, transaction in transaction_of.items():
        writers_of[transaction].append(writer)
    for transaction, writers in writers_of.items():
        held = [keys[writer] for writer in writers if keys[writer] is not None]
        assert len(held) == len(set(held)), f"transaction {transaction} holds writers {writers} with keys {held}"
    # Every writer whose key it did not hold yet joined writer 0's transaction...
    assert sorted(writers_of[transaction_of[0]]) == [0, 2, 4, 6, 7], dict(writers_of)
    # ... and writers with the same key committed in the order they came.
    for key in ("a", "b"):
        same_key = [transaction_of[writer] for writer in sorted(keys) if keys[writer] == key]
        assert same_key == sorted(set(same_key)), f"the transactions of key {key!r}, in order of arrival: {same_key}"


def test_concurrent_keyed_writers_all_commit_and_no_transaction_holds_a_key_twice(engine: sa.Engine) -> None:
    group = transaction_on(engine)
    transaction_of: dict[int, int] = {}
    start = threading.Barrier(WRITERS)

    def write(writer: int) -> None:
        start.wait()
        with group.transaction(key=f"session-{writer % 3}") as connection:
            connection.execute(sa.text("INSERT INTO notes VALUES (:writer)"), {"writer": writer})
            transaction_of[writer] = connection.info["transaction"]

    in_threads(write)

    assert stored(engine) == set(range(WRITERS))
    keys_of: defaultdict[int, list[int]] = defaultdict(list)
    for writer, transaction in transaction_of.items():
        keys_of[transaction].append(writer % 3)
    shared = {transaction: keys for transaction, keys in keys_of.items() if len(keys) != len(set(keys))}
    assert not shared, f"transactions holding a key more than once (transaction: keys): {shared}"
