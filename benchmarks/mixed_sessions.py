"""Do sessions slow each other? Small steps' latency alone, and while a 10M-param session streams steps.

One server (``python -m service serve``, SQLite by default) holds a session of 10M float32
params and a few of 1k. Clients step the small sessions back to back on keep-alive
connections (a raw asyncio client, each request prebuilt) and record every latency. In
alternating blocks, another process streams binary steps of the 10M session, one after
another, or stays idle: the p50 and p99 of the small steps in each condition, and their
ratio, compare blocks taken in the same minutes. ``--checkout PATH`` measures another
checkout of the service (the previous main, say) in the same run, its blocks interleaved
with this one's.

``python -m benchmarks.mixed_sessions``
``python -m benchmarks.mixed_sessions --checkout /tmp/optim-before``
"""

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from benchmarks.http import BareHttp, create, round_trip, server, step_request

SMALL = 1_000
LARGE = 10_000_000
SMALL_SESSIONS = 4


def stream_large_steps(base: str, session_id: str, streaming: Any, steps: Any) -> None:
    """Step the large session back to back while ``streaming`` is set (until ``steps`` is -1)."""
    grads = np.random.default_rng(0).standard_normal(LARGE, dtype=np.float32)
    request = step_request(base, session_id, grads, "binary")
    while True:
        streaming.wait()
        if steps.value < 0:
            return
        # A new connection for each period: the server closes one left idle between them.
        connection = BareHttp(base)
        while streaming.is_set() and steps.value >= 0:
            connection.round_trip(request)
            with steps.get_lock():
                steps.value += 1
        connection.close()


async def small_steps(base: str, ids: list[str], seconds: float) -> list[float]:
    """Step each small session back to back for ``seconds``; every latency, in seconds."""
    grads = np.random.default_rng(1).standard_normal(SMALL, dtype=np.float32)
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def drive(session_id: str) -> None:
        request = step_request(base, session_id, grads, "json")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < stop:
                started = time.perf_counter()
                status = await round_trip(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                if not status.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"a small step answered {status!r}")
        finally:
            writer.close()

    await asyncio.gather(*(drive(session_id) for session_id in ids))
    return latencies


@dataclass
class Subject:
    """One server under test, with its sessions and its streaming process."""

    label: str
    base: str
    small_ids: list[str]
    streaming: Any
    large_steps: Any
    streamer: Any
    alone: list[float] = field(default_factory=list)
    mixed: list[float] = field(default_factory=list)
    mixed_seconds: float = 0.0
    mixed_large_steps: int = 0


def start(label: str, base: str, rng: np.random.Generator) -> Subject:
    with httpx.Client(base_url=base, timeout=600) as client:
        large_id = create(client, rng.standard_normal(LARGE, dtype=np.float32))
        small_ids = [create(client, rng.standard_normal(SMALL, dtype=np.float32)) for _ in range(SMALL_SESSIONS)]
    context = multiprocessing.get_context("spawn")
    streaming, steps = context.Event(), context.Value("i", 0)
    streamer = context.Process(target=stream_large_steps, args=(base, large_id, streaming, steps), daemon=True)
    streamer.start()
    return Subject(label, base, small_ids, streaming, steps, streamer)


def measure_block(subject: Subject, seconds: float) -> None:
    """One block alone, then one while the large session streams."""
    subject.alone += asyncio.run(small_steps(subject.base, subject.small_ids, seconds))
    before = subject.large_steps.value
    subject.streaming.set()
    while subject.large_steps.value == before:  # its steps are in full flow
        time.sleep(0.01)
    started, counted = time.monotonic(), subject.large_steps.value
    subject.mixed += asyncio.run(small_steps(subject.base, subject.small_ids, seconds))
    subject.mixed_seconds += time.monotonic() - started
    subject.mixed_large_steps += subject.large_steps.value - counted
    subject.streaming.clear()
    time.sleep(0.5)  # its last step ends


def stop(subject: Subject) -> None:
    subject.large_steps.value = -1
    subject.streaming.set()
    subject.streamer.join(timeout=120)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def servers(stack: ExitStack, checkouts: list[tuple[str, str | None]], workers: int) -> Iterator[tuple[str, str]]:
    directory = stack.enter_context(tempfile.TemporaryDirectory())
    for label, checkout in checkouts:
        database = f"sqlite:///{directory}/{label}.sqlite3"
        yield label, stack.enter_context(server(database, workers, checkout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", help="also measure the service in this checkout, interleaved with this one")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="of each block, alone and mixed")
    args = parser.parse_args()
    checkouts: list[tuple[str, str | None]] = [("this checkout", None)]
    if args.checkout:
        checkouts.append((f"checkout {args.checkout}", args.checkout))
    rng = np.random.default_rng(7)
    with ExitStack() as stack:
        subjects = [start(label, base, rng) for label, base in servers(stack, checkouts, args.workers)]
        for _ in range(args.blocks):
            for subject in subjects:
                measure_block(subject, args.seconds)
        for subject in subjects:
            stop(subject)
    print(f"{SMALL_SESSIONS} sessions of {SMALL:,} params stepped back to back (JSON), alone and while a session of ")
    print(f"{LARGE:,} params streams binary steps; {args.blocks} blocks of {args.seconds:g} s each way, interleaved.")
    print(f"Server: --workers {args.workers}, SQLite.\n")
    print(
        "| server | small p50 alone ms | small p99 alone ms | small p50 mixed ms | small p99 mixed ms "
        "| p99 mixed ÷ alone | large steps/s while mixed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for subject in subjects:
        alone, mixed = p99(subject.alone), p99(subject.mixed)
        print(
            f"| {subject.label} | {statistics.median(subject.alone) * 1e3:.2f} | {alone * 1e3:.2f} "
            f"| {statistics.median(subject.mixed) * 1e3:.2f} | {mixed * 1e3:.2f} | {mixed / alone:.1f} "
            f"| {subject.mixed_large_steps / subject.mixed_seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
