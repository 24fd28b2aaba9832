"""Synchronous data-parallel rounds through a real server, against an ordinary step and the loopback floor.

Starts ``python -m service serve`` on a fresh database and, for N workers and each size of float32
params (safetensors bodies throughout), times the rounds of a synchronous session (``"aggregation":
{"mode": "sync", "workers": N}``): N keep-alive connections, one per worker, each sending a prebuilt
contribution (its ``worker``, and ``based_on_step`` = the round, in the file's ``__metadata__``) from a
thread of its own. A round's time runs from the first send to the last answer; every contributor must
be answered 200 (the round's params). Taken in turn with each round, sample by sample:
- the single-worker step: an ordinary step of the same size on an ordinary session;
- the loopback floor of one gradient's transfer: its body posted to the trivial echo endpoint
  (``benchmarks/echo_app.py``) and answered with nothing ("echo up"), or with as many bytes as the
  step's answer ("echo up+down": what one contributor's exchange moves).

The target: a 4-worker round of 1M params within 2 x the single 1M step + 3 x the transfer (echo up)
of one 1M gradient. The ``budget`` column applies the same rule to every N: 2 x step + (N - 1) x echo up.

Where the target misses (or with ``--breakdown``), rounds are taken apart on a second server whose
contributors are not kept waiting (``OPTIM_ROUND_WAIT_SECONDS`` tiny, so a contribution that only
stores is answered 202 once it is committed and its round looked at once): the N - 1 contributions that
only store, one after another; the one that closes the round (200: the mean, the step, its save); and
the N - 1 answers fetched with ``GET .../rounds/{s}``, as the waiting contributors read them. Each is
timed alone, so their sum is the server's serial work in a round.

``python -m benchmarks.data_parallel`` — SQLite in a temporary directory;
``python -m benchmarks.data_parallel --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test``
— a fresh schema there for each server, dropped afterwards.
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass

import httpx
import numpy as np
import orjson
from safetensors.numpy import save

from benchmarks.http import (
    BINARY,
    BareHttp,
    echo_endpoint,
    echo_request,
    percentiles,
    server,
    step_request,
    timed_together,
)
from tests.databases import postgres_schema

TARGET_WORKERS, TARGET_SIZE = 4, 1_000_000
ANSWER_TIMEOUT_SECONDS = 120.0
"""Longer than the server's round wait (20 s) and any step: a round not answered by then has hung."""
KEEP_ALIVE_SECONDS = 600
"""How long the servers (the service's and the echo endpoint's) keep an idle connection open."""
UNWAITED_ROUND_SECONDS = "0.001"
"""The breakdown server's ``OPTIM_ROUND_WAIT_SECONDS``: a contribution that only stores is answered at once."""


@contextmanager
def fresh_database(database_url: str | None, directory: str, label: str) -> Iterator[str]:
    """A new, empty database: a SQLite file in ``directory``, or a schema of its own on ``database_url``."""
    if database_url is None:
        yield f"sqlite:///{os.path.join(directory, label + '.sqlite3')}"
        return
    with postgres_schema(database_url) as url:
        yield url


@contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` for the block (a server started in it inherits it)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def create_session(client: httpx.Client, initial: np.ndarray, optimizer: str, workers: int | None = None) -> str:
    """A session over ``initial``: synchronous with ``workers`` contributors, or ordinary without."""
    metadata = {"optimizer": optimizer}
    if workers is not None:
        metadata["aggregation"] = orjson.dumps({"mode": "sync", "workers": workers}).decode()
    body = save({"params/w": initial}, metadata=metadata)
    response = client.post("/v1/sessions", content=body, headers={"content-type": BINARY["content-type"]})
    response.raise_for_status()
    session_id: str = response.json()["id"]
    return session_id


def raw_request(base: str, method: str, path: str, body: bytes = b"") -> bytes:
    """A whole HTTP/1.1 request in safetensors (its body, if any, and its answer)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {base.removeprefix('http://')}", f"Accept: {BINARY['accept']}"]
    if body:
        lines += [f"Content-Length: {len(body)}", f"Content-Type: {BINARY['content-type']}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def contribution_request(base: str, session_id: str, grads: np.ndarray, *, worker: int, round_: int) -> bytes:
    body = save({"w": grads}, metadata={"worker": f"w{worker}", "based_on_step": str(round_)})
    return raw_request(base, "POST", f"/v1/sessions/{session_id}/step", body)


def contributions(base: str, session_id: str, grads: np.ndarray, workers: int, round_: int) -> list[bytes]:
    return [contribution_request(base, session_id, grads, worker=i, round_=round_) for i in range(workers)]


def span_of(connection: BareHttp, request: bytes) -> tuple[float, float]:
    """When ``request`` was sent and when its whole answer had come."""
    start = time.perf_counter()
    connection.round_trip(request)
    return start, time.perf_counter()


class Workers:
    """The contributors of one synchronous session, each on a keep-alive connection of its own, sending
    from a thread of its own; ``spans`` holds each round's time from its first send to its last answer.

    Each round's requests are built after the previous round's last answer and before its own first
    send: ``run_round``'s own timing (``timed_together``'s) includes that, its spans do not.
    """

    def __init__(self, base: str, session_id: str, grads: np.ndarray, count: int) -> None:
        self._base, self._session_id, self._grads, self.count = base, session_id, grads, count
        self._connections = [BareHttp(base, timeout=ANSWER_TIMEOUT_SECONDS) for _ in range(count)]
        self._threads = ThreadPoolExecutor(max_workers=count)
        self.round = 0
        self.spans: list[float] = []
        self._requests = contributions(base, session_id, grads, count, self.round)

    def run_round(self) -> None:
        futures: list[Future[tuple[float, float]]] = [
            self._threads.submit(span_of, connection, request)
            for connection, request in zip(self._connections, self._requests, strict=True)
        ]
        done, pending = wait(futures, timeout=ANSWER_TIMEOUT_SECONDS + 10, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                raise RuntimeError(f"round {self.round} of {self.count} workers failed") from future.exception()
        if pending:
            raise RuntimeError(f"round {self.round} of {self.count} workers: {len(pending)} contributors unanswered")
        spans = [future.result() for future in futures]
        self.spans.append(max(end for _, end in spans) - min(start for start, _ in spans))
        self.round += 1
        self._requests = contributions(self._base, self._session_id, self._grads, self.count, self.round)

    def close(self) -> None:
        self._threads.shutdown()
        for connection in self._connections:
            connection.close()


@dataclass
class Cell:
    """The p50 and p95 (seconds) of one (workers, size) cell's round and of its baselines, taken in turn."""

    size: int
    workers: int
    round: tuple[float, float]
    step: tuple[float, float]
    echo_up: tuple[float, float]
    echo_up_down: tuple[float, float]

    @property
    def budget(self) -> float:
        """2 x the single step + (N - 1) x one gradient's transfer, at their p50s."""
        return 2 * self.step[0] + (self.workers - 1) * self.echo_up[0]


@dataclass
class Baselines:
    """The single-worker step and the transfer floors of one size, on connections of their own."""

    step: Callable[[], object]
    echo_up: Callable[[], object]
    echo_up_down: Callable[[], object]


@contextmanager
def baselines(
    base: str, echo_base: str, client: httpx.Client, grads: np.ndarray, initial: np.ndarray, optimizer: str
) -> Iterator[Baselines]:
    ordinary = create_session(client, initial, optimizer)
    stepping = BareHttp(base, timeout=ANSWER_TIMEOUT_SECONDS)
    echoing = BareHttp(echo_base, timeout=ANSWER_TIMEOUT_SECONDS)
    try:
        step = step_request(base, ordinary, grads, "binary")
        answer_size = len(stepping.round_trip(step))
        body = save({"w": grads}, metadata={"worker": "w0", "based_on_step": "0"})
        up, up_down = echo_request(echo_base, body, 0), echo_request(echo_base, body, answer_size)
        yield Baselines(
            step=lambda: stepping.round_trip(step),
            echo_up=lambda: echoing.round_trip(up),
            echo_up_down=lambda: echoing.round_trip(up_down),
        )
    finally:
        stepping.close()
        echoing.close()


def measure_cell(
    base: str, echo_base: str, size: int, workers: int, rounds: int, optimizer: str, rng: np.random.Generator
) -> Cell:
    grads = rng.standard_normal(size, dtype=np.float32)
    initial = rng.standard_normal(size, dtype=np.float32)
    with (
        httpx.Client(base_url=base, timeout=600) as client,
        baselines(base, echo_base, client, grads, initial, optimizer) as floor,
    ):
        session_id = create_session(client, initial, optimizer, workers)
        with closing(Workers(base, session_id, grads, workers)) as team:
            _, step, up, up_down = timed_together(
                [team.run_round, floor.step, floor.echo_up, floor.echo_up_down], rounds
            )
            reached = client.get(f"/v1/sessions/{session_id}").json()["step"]
            if reached != team.round:
                raise RuntimeError(f"{team.round} rounds answered, but the session is at step {reached}")
            spans = team.spans[1:]  # the first was timed_together's warm-up
    return Cell(size, workers, percentiles(spans), percentiles(step), percentiles(up), percentiles(up_down))


def print_cells_header() -> None:
    print(
        "| params | workers | round p50 ms | round p95 ms | single step p50 ms | single step p95 ms "
        "| round ÷ step | echo up p50 ms | echo up+down p50 ms | round ÷ echo up "
        "| budget 2·step + (N-1)·echo up, ms | round ÷ budget |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def print_cell(cell: Cell) -> None:
    (round_p50, round_p95), (step_p50, step_p95) = cell.round, cell.step
    print(
        f"| {cell.size:,} | {cell.workers} | {round_p50 * 1e3:.2f} | {round_p95 * 1e3:.2f} | {step_p50 * 1e3:.2f} "
        f"| {step_p95 * 1e3:.2f} | {round_p50 / step_p50:.2f} | {cell.echo_up[0] * 1e3:.2f} "
        f"| {cell.echo_up_down[0] * 1e3:.2f} | {round_p50 / cell.echo_up[0]:.1f} | {cell.budget * 1e3:.2f} "
        f"| {round_p50 / cell.budget:.2f} |",
        flush=True,
    )


def target_holds(cell: Cell) -> bool:
    holds = cell.round[0] <= cell.budget
    print(
        f"\ntarget: a {cell.workers}-worker round of {cell.size:,} params, p50 {cell.round[0] * 1e3:.2f} ms, "
        f"≤ 2 x single step {cell.step[0] * 1e3:.2f} ms + {cell.workers - 1} x transfer {cell.echo_up[0] * 1e3:.2f} "
        f"ms = {cell.budget * 1e3:.2f} ms: {'holds' if holds else 'MISSES'} "
        f"(round ÷ budget {cell.round[0] / cell.budget:.2f})",
        flush=True,
    )
    return holds


class SerialRound:
    """A synchronous round taken apart on a server that does not keep contributors waiting: the N - 1
    contributions that only store (202), the closing one (200), and the N - 1 answers fetched as waiting
    contributors read them (``GET .../rounds/{s}``), one after another on one connection, each timed."""

    def __init__(self, base: str, session_id: str, grads: np.ndarray, count: int) -> None:
        self._base, self._session_id, self._grads, self.count = base, session_id, grads, count
        self._connection = BareHttp(base, timeout=ANSWER_TIMEOUT_SECONDS)
        self.round = 0
        self.phases: dict[str, list[float]] = {"store": [], "close": [], "fetch": []}
        self._prepare()

    def _prepare(self) -> None:
        self._requests = contributions(self._base, self._session_id, self._grads, self.count, self.round)
        self._fetch = raw_request(self._base, "GET", f"/v1/sessions/{self._session_id}/rounds/{self.round}")

    def _timed(self, phase: str, request: bytes, status: int) -> None:
        start = time.perf_counter()
        self._connection.round_trip(request, status)
        self.phases[phase].append(time.perf_counter() - start)

    def run_round(self) -> None:
        *storing, closing_one = self._requests
        for request in storing:
            self._timed("store", request, 202)
        self._timed("close", closing_one, 200)
        for _ in storing:
            self._timed("fetch", self._fetch, 200)
        self.round += 1
        self._prepare()

    def close(self) -> None:
        self._connection.close()


@dataclass
class Breakdown:
    """The p50s (seconds) of a round's requests taken one by one, and of its baselines, taken in turn."""

    size: int
    workers: int
    store: float
    close: float
    fetch: float
    step: float
    echo_up: float

    @property
    def serial(self) -> float:
        """The server's serial work in a round: N - 1 stores and fetches, one close."""
        return (self.workers - 1) * (self.store + self.fetch) + self.close


def measure_breakdown(
    base: str, echo_base: str, size: int, workers: int, rounds: int, optimizer: str, rng: np.random.Generator
) -> Breakdown:
    grads = rng.standard_normal(size, dtype=np.float32)
    initial = rng.standard_normal(size, dtype=np.float32)
    with (
        httpx.Client(base_url=base, timeout=600) as client,
        baselines(base, echo_base, client, grads, initial, optimizer) as floor,
    ):
        session_id = create_session(client, initial, optimizer, workers)
        with closing(SerialRound(base, session_id, grads, workers)) as serial:
            _, step, up = timed_together([serial.run_round, floor.step, floor.echo_up], rounds)
            phases = serial.phases
    # The first round was timed_together's warm-up: its N - 1 stores and fetches, its one close.
    return Breakdown(
        size,
        workers,
        store=statistics.median(phases["store"][workers - 1 :]),
        close=statistics.median(phases["close"][1:]),
        fetch=statistics.median(phases["fetch"][workers - 1 :]),
        step=statistics.median(step),
        echo_up=statistics.median(up),
    )


def print_breakdowns(breakdowns: list[Breakdown], cells: dict[tuple[int, int], Cell]) -> None:
    print(
        "\nWhere a round's time goes: each request alone, on a server that answers a storing contribution "
        "at once (p50s, ms)\n"
    )
    print(
        "| params | workers | storing contribution (202), each | closing contribution (200) "
        "| answer fetch (GET rounds), each | serial sum | single step | echo up | concurrent round (above) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in breakdowns:
        concurrent = cells[(row.size, row.workers)].round[0]
        print(
            f"| {row.size:,} | {row.workers} | {row.store * 1e3:.2f} | {row.close * 1e3:.2f} | {row.fetch * 1e3:.2f} "
            f"| {row.serial * 1e3:.2f} | {row.step * 1e3:.2f} | {row.echo_up * 1e3:.2f} | {concurrent * 1e3:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory (PostgreSQL: fresh schemas)")
    parser.add_argument(
        "--rounds", type=int, default=20, help="rounds timed per (workers, size), each with its baselines"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--optimizer", choices=["rmsprop", "rprop"], default="rmsprop")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="take every round of 2 or more workers apart (by default only the target's, when it misses)",
    )
    args = parser.parse_args()
    # The servers inherit them: a connection waits idle while the others' samples run, and a round of 8
    # contributors of 1M params on PostgreSQL may take longer than the default keep-alive of 5 s.
    for name in ("OPTIM_KEEP_ALIVE_TIMEOUT_SECONDS", "OPTIM_HEADER_TIMEOUT_SECONDS", "UVICORN_TIMEOUT_KEEP_ALIVE"):
        os.environ.setdefault(name, str(KEEP_ALIVE_SECONDS))
    rng = np.random.default_rng(0)
    engine = (args.database_url or "sqlite").split(":")[0]
    print(
        f"database: {engine}; {args.optimizer}, float32, safetensors; {args.rounds} rounds per row; loopback; "
        f"{os.cpu_count()} cores\n"
    )
    cells: dict[tuple[int, int], Cell] = {}
    with tempfile.TemporaryDirectory() as directory, echo_endpoint() as echo_base:
        with (
            fresh_database(args.database_url, directory, "rounds") as url,
            server(url) as base,
        ):
            print_cells_header()
            for size in args.sizes:
                for workers in args.workers:
                    cell = measure_cell(base, echo_base, size, workers, args.rounds, args.optimizer, rng)
                    cells[(size, workers)] = cell
                    print_cell(cell)
        target = cells.get((TARGET_SIZE, TARGET_WORKERS))
        missed = target is not None and not target_holds(target)
        if target is None:
            print(f"\ntarget: not measured (it needs --workers {TARGET_WORKERS} and --sizes {TARGET_SIZE})")
        taken_apart = [key for key in cells if key[1] >= 2] if args.breakdown else []
        if missed and not taken_apart:
            taken_apart = [(TARGET_SIZE, TARGET_WORKERS)]
        if taken_apart:
            with (
                fresh_database(args.database_url, directory, "breakdown") as url,
                environment("OPTIM_ROUND_WAIT_SECONDS", UNWAITED_ROUND_SECONDS),
                server(url) as base,
            ):
                breakdowns = [
                    measure_breakdown(base, echo_base, size, workers, args.rounds, args.optimizer, rng)
                    for size, workers in taken_apart
                ]
            print_breakdowns(breakdowns, cells)


if __name__ == "__main__":
    main()
