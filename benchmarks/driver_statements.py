"""What running the step's statements on the driver's cursor saves, against SQLAlchemy's ``Connection.execute``.

One process, one SQLite database holding one session's row, as the store keeps it. In turn,
block by block, the same statements run both ways inside a write transaction (rolled back,
so that the disk's sync does not drown the difference): the query that reads the held session
and the UPDATE that saves a step. It prints the median time of each, in microseconds.

``python -m benchmarks.driver_statements``
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service.store.base import SessionMeta
from service.store.driver_statements import DriverStatement
from service.store.sql import READ_HELD, SAVE, SqlSessionStore

BLOCK = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        store = SqlSessionStore(f"sqlite:///{directory}/optim.sqlite3")
        now = datetime(2026, 1, 1)
        groups = [{"lr": 0.01, "alpha": 0.99, "params": ["w"]}]
        meta = SessionMeta("s", "rmsprop", "float32", 0, 1, groups, {"w": [1000]}, now, now)
        store.create(meta, [bytes(8000)])
        engine = store._engine
        save, read = SAVE[False, True], READ_HELD
        dialect = engine.dialect
        driver_save, driver_read = DriverStatement.compile(save, dialect), DriverStatement.compile(read, dialect)
        values = {
            "session_id": "s", "old_version": 1, "new_step": 1, "new_version": 2, "new_updated_at": now,
            "new_arrays": bytes(8000), "new_arrays_slot": None,
        }  # fmt: skip
        key = {"session_id": "s"}
        ways: dict[str, Callable[[sa.Connection], Any]] = {
            "read, Connection.execute": lambda connection: connection.execute(read, key).first(),
            "read, driver's cursor": lambda connection: driver_read.first(connection, key),
            "save, Connection.execute": lambda connection: connection.execute(save, values).rowcount,
            "save, driver's cursor": lambda connection: driver_save.rowcount(connection, values),
        }
        samples: dict[str, list[float]] = {name: [] for name in ways}
        with engine.connect() as connection:
            connection.info["writes"] = True
            for _ in range(args.blocks):
                for name, run in ways.items():
                    with connection.begin() as transaction:
                        for _ in range(BLOCK):
                            started = time.perf_counter()
                            run(connection)
                            samples[name].append(time.perf_counter() - started)
                        transaction.rollback()
        store.close()
    print(f"SQLite; median of {args.blocks} blocks of {BLOCK}, the ways taken in turn\n")
    print("| statement | µs |\n|---|---:|")
    for name, taken in samples.items():
        print(f"| {name} | {statistics.median(taken) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
