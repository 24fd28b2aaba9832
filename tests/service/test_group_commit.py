"""Writers that arrive together share one SQLite transaction, yet each one's work stands or falls alone."""

import threading
from collections.abc import Iterator
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
    def begin() -> Iterator[sa.Connection]:
        with engine.connect() as connection:
            connection.info["writes"] = True
            with connection.begin():
                yield connection

    return GroupCommit(contextmanager(begin))


def stored(engine: sa.Engine) -> set[int]:
    with engine.connect() as connection:
        return {row.writer for row in connection.execute(sa.text("SELECT writer FROM notes"))}


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

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a writer never finished"
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
