"""What API keys and per-key rate limits cost a step: a keyed server against a keyless one, in one run.

Two real servers of this checkout (``python -m service serve``), each on a database of its own:
one with no key (it serves without keys on loopback), one with a key, so that each of its requests
looks the key up, checks its secret and takes a token from the key's rate-limit bucket (one upsert).
The same RMSprop step is sent to both from bare keep-alive connections, the two taken in turn sample
by sample (this VM's speed drifts by minutes), and the table gives each p50 and their ratio.

``python -m benchmarks.authentication`` — SQLite in a temporary directory;
``python -m benchmarks.authentication --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test``
— two PostgreSQL databases made beside that one (``optim_bench_keyless``, ``optim_bench_keyed``).
"""

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager

import httpx
import numpy as np
import sqlalchemy as sa

from benchmarks.http import BareHttp, create, server, step_request, timed_together

SIZES = [1_000, 100_000]
REPEATS = {1_000: 3000, 100_000: 300}


@contextmanager
def databases(base_url: str | None, directory: str) -> Iterator[dict[str, str]]:
    """A fresh database per label: files in ``directory``, or PostgreSQL databases beside ``base_url``."""
    labels = ("keyless", "keyed")
    if base_url is None:
        yield {label: f"sqlite:///{os.path.join(directory, label + '.sqlite3')}" for label in labels}
        return
    url = sa.make_url(base_url)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    names = {label: f"optim_bench_{label}" for label in labels}
    with admin.connect() as connection:
        for name in names.values():
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield {label: url.set(database=name).render_as_string(hide_password=False) for label, name in names.items()}
    finally:
        with admin.connect() as connection:
            for name in names.values():
                connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def new_key(database_url: str) -> str:
    """A key made as an operator makes one: ``optim-service keys create``, its last line."""
    subprocess.run([sys.executable, "-m", "service", "migrate", "--database-url", database_url], check=True)
    printed = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"],
        env={**os.environ, "OPTIM_DATABASE_URL": database_url},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return printed.rstrip("\n").splitlines()[-1]


def with_header(request: bytes, name: str, value: str) -> bytes:
    """``request`` (a whole HTTP/1.1 request) with one more header after its request line."""
    line, _, rest = request.partition(b"\r\n")
    return line + f"\r\n{name}: {value}\r\n".encode() + rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a PostgreSQL URL; SQLite in a temporary directory if omitted")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    engine = "postgresql" if args.database_url else "sqlite"
    print(f"database: {engine}; RMSprop, float32; loopback; one worker per server; default rate limits")
    print("\n| params | transport | keyless p50 ms | keyed p50 ms | keyed ÷ keyless |")
    print("|---:|---|---:|---:|---:|")
    with (
        tempfile.TemporaryDirectory() as directory,
        databases(args.database_url, directory) as urls,
        ExitStack() as stack,
    ):
        key = new_key(urls["keyed"])
        bases = {label: stack.enter_context(server(url)) for label, url in urls.items()}
        headers = {"keyless": {}, "keyed": {"Authorization": f"Bearer {key}"}}
        for size in SIZES:
            initial = rng.standard_normal(size, dtype=np.float32)
            grads = rng.standard_normal(size, dtype=np.float32)
            for transport in ("json", "binary"):
                runs: list[Callable[[], object]] = []
                for label, base in bases.items():
                    with httpx.Client(base_url=base, headers=headers[label], timeout=60) as client:
                        request = step_request(base, create(client, initial), grads, transport)
                    for name, value in headers[label].items():
                        request = with_header(request, name, value)
                    bare = stack.enter_context(closing(BareHttp(base)))
                    runs.append(functools.partial(bare.round_trip, request))
                keyless, keyed = (statistics.median(taken) for taken in timed_together(runs, REPEATS[size]))
                print(
                    f"| {size:,} | {transport} | {keyless * 1e3:.3f} | {keyed * 1e3:.3f} | {keyed / keyless:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
