"""Step round trips through real uvicorn servers, durable commits included, against baselines run alongside.

Starts ``python -m service serve`` (one or more replicas) on a fresh database and measures:
- step latency p50/p95 for one RMSprop session of N float32 params, over JSON and over
  safetensors, each step committed before it is acknowledged. The client is a bare HTTP/1.1
  connection sending a prebuilt request and reading the whole response, so that what is timed
  is the server and the loopback, as in the floors below;
- the same binary step from an SDK-like client (httpx, with the gradients encoded and the
  params decoded by ``safetensors.numpy`` inside the timing);
- for context in the same run: the same step in-process (optim_core only); two loopback floors
  for the same request and response bytes: a bare socket to an echo process, and a trivial
  FastAPI endpoint on uvicorn that reads the body and answers as many bytes (the HTTP stack's
  own cost, ``benchmarks/echo_app.py``), each timed in turn with the binary step, sample by sample;
  and a trivial endpoint of the service (``GET /healthz``);
- steps per second across concurrent sessions of 1k params: one keep-alive connection per
  session, driven by a raw asyncio client (cheap, so the server gets the CPU), spread over the
  replicas.

Run as a module (a script named http.py would shadow the standard library):
``python -m benchmarks.http`` — SQLite in a temporary directory;
``python -m benchmarks.http --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test --replicas 1 2 3``.
"""

import argparse
import asyncio
import functools
import multiprocessing
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager

import httpx
import numpy as np
import orjson
import sqlalchemy as sa
from safetensors.numpy import load, save

from optim_core import RMSprop

JSON = {"content-type": "application/json"}
BINARY = {"content-type": "application/vnd.safetensors", "accept": "application/vnd.safetensors"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


STARTED = b"Application startup complete."
"""What uvicorn logs (at level info) when a worker process has started serving."""


@contextmanager
def serving(command: list[str], ready_path: str, processes: int = 1, cwd: str | None = None) -> Iterator[str]:
    """Run ``command`` (given ``--port``, in ``cwd``) until it answers ``ready_path`` and all its ``processes``
    have started (a worker that starts late would get none of the connections opened before); its base URL."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([*command, "--port", str(port), "--log-level", "info"], stderr=log, cwd=cwd)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{base}{ready_path}")
                    log.seek(0)
                    if log.read().count(STARTED) >= processes:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{command} did not start:\n{log.read().decode(errors='replace')[-3000:]}")
                time.sleep(0.1)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=30)


def server(database_url: str, workers: int = 1, checkout: str | None = None) -> AbstractContextManager[str]:
    """The service of this checkout (or of the one at ``checkout``) on ``database_url``, migrated first (older
    releases could fail to start several workers on a new SQLite file together)."""
    migrate = [sys.executable, "-m", "service", "migrate", "--database-url", database_url]
    subprocess.run(migrate, cwd=checkout, check=True, capture_output=True)
    command = [sys.executable, "-m", "service", "serve", "--database-url", database_url]
    return serving([*command, "--workers", str(workers), "--no-access-log"], "/healthz", workers, cwd=checkout)


def echo_endpoint() -> AbstractContextManager[str]:
    return serving([sys.executable, "-m", "uvicorn", "benchmarks.echo_app:app", "--no-access-log"], "/docs")


class BareHttp:
    """One keep-alive HTTP/1.1 connection that sends prebuilt requests and reads whole responses:
    a client that costs next to nothing beside the server it measures."""

    def __init__(self, base: str, timeout: float | None = None) -> None:
        """``timeout``: the longest any one send or receive may block (None: forever), so that a server
        that never answers fails the benchmark rather than hanging it."""
        host, port = base.removeprefix("http://").split(":")
        self._socket = socket.create_connection((host, int(port)), timeout=timeout)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def round_trip(self, request: bytes, status: int = 200) -> bytearray:
        """Send ``request`` and read the whole response, which must have ``status``; its body."""
        self._socket.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self._socket.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
        body = bytearray(length)
        body[: len(rest)] = rest
        view, filled = memoryview(body), len(rest)
        while filled < length:
            count = self._socket.recv_into(view[filled:])
            if not count:
                raise ConnectionError("the server closed the connection")
            filled += count
        if not lines[0].startswith(f"HTTP/1.1 {status}".encode()):
            raise RuntimeError(f"answered {lines[0]!r}: {bytes(body[:2000])!r}")
        return body

    def close(self) -> None:
        self._socket.close()


def _receive_into(sock: socket.socket, buffer: bytearray) -> bool:
    """Fill ``buffer`` from ``sock``; False if the peer closed first."""
    view, received = memoryview(buffer), 0
    while received < len(buffer):
        count = sock.recv_into(view[received:])
        if not count:
            return False
        received += count
    return True


SIZES = struct.Struct("<QQ")


def echo_server(listener: socket.socket) -> None:
    """On one kept-alive connection: read the sizes, then a request of the first, and answer with
    as many bytes as the second. Buffers are allocated once per size, so the floor is the copying
    through the loopback alone."""
    connection, _ = listener.accept()
    incoming, outgoing = bytearray(), b""
    with connection:
        sizes = bytearray(SIZES.size)
        while _receive_into(connection, sizes):
            request_size, response_size = SIZES.unpack(sizes)
            if len(incoming) != request_size:
                incoming = bytearray(request_size)
            if len(outgoing) != response_size:
                outgoing = bytes(response_size)
            _receive_into(connection, incoming)
            connection.sendall(outgoing)


@contextmanager
def echo_process() -> Iterator[Callable[[bytes, int], None]]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    process = multiprocessing.get_context("fork").Process(target=echo_server, args=(listener,), daemon=True)
    process.start()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    response = bytearray()

    def round_trip(request: bytes, response_size: int) -> None:
        nonlocal response
        if len(response) != response_size:
            response = bytearray(response_size)
        sock.sendall(SIZES.pack(len(request), response_size))
        sock.sendall(request)
        _receive_into(sock, response)

    try:
        yield round_trip
    finally:
        sock.close()
        process.join(timeout=5)
        listener.close()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def timed(run: Callable[[], object], repeats: int) -> list[float]:
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return samples


def timed_together(runs: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Samples of each of ``runs``, taken in turn: a ratio between two of them compares runs made
    under the same conditions, however this VM's speed drifts during the benchmark."""
    for run in runs:
        run()
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, taken in zip(runs, samples, strict=True):
            start = time.perf_counter()
            run()
            taken.append(time.perf_counter() - start)
    return samples


def create(client: httpx.Client, initial: np.ndarray) -> str:
    body = save({"params/w": initial}, metadata={"optimizer": "rmsprop"})
    response = client.post("/v1/sessions", content=body, headers={"content-type": BINARY["content-type"]})
    response.raise_for_status()
    session_id: str = response.json()["id"]
    return session_id


def sdk_like_step(client: httpx.Client, session_id: str, grads: np.ndarray) -> None:
    """A binary step as an SDK makes it: encode, post, decode, all timed."""
    response = client.post(f"/v1/sessions/{session_id}/step", content=save({"w": grads}), headers=BINARY)
    response.raise_for_status()
    load(response.content)


def echo_request(base: str, body: bytes, response_size: int) -> bytes:
    head = f"POST /echo?size={response_size} HTTP/1.1\r\nHost: {base.removeprefix('http://')}\r\n"
    head += f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n"
    return head.encode() + body


def latency_table(base: str, sizes: list[int], rng: np.random.Generator) -> None:
    print(
        "| params | JSON p50 ms | JSON p95 ms | binary p50 ms | binary p95 ms | JSON ÷ binary "
        "| binary via httpx, encode+decode, p50 ms | in-process step ms | socket floor ms | binary ÷ socket floor "
        "| echo endpoint floor ms | binary ÷ echo floor | trivial endpoint ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with (
        httpx.Client(base_url=base, timeout=600) as client,
        echo_process() as echo,
        echo_endpoint() as echo_base,
    ):
        trivial, _ = percentiles(timed(lambda: client.get("/healthz"), 200))
        for size in sizes:
            # New connections for each size, each opened just before its use: uvicorn closes one idle for 5 s.
            bare = BareHttp(base)
            # A few seconds of samples for each size: this VM has slow and fast phases of a second or so.
            repeats = 1000 if size <= 1_000 else 200 if size <= 100_000 else 30 if size <= 1_000_000 else 20
            json_repeats = repeats if size <= 1_000_000 else 3
            grads = rng.standard_normal(size, dtype=np.float32)
            session_id = create(client, rng.standard_normal(size, dtype=np.float32))
            json_request = step_request(base, session_id, grads, "json")
            binary_request = step_request(base, session_id, grads, "binary")
            json_p50, json_p95 = percentiles(timed(lambda: bare.round_trip(json_request), json_repeats))  # noqa: B023
            response_size = len(bare.round_trip(binary_request))
            optimizer = RMSprop({"w": rng.standard_normal(size, dtype=np.float32)})
            body = save({"w": grads})
            to_echo = echo_request(echo_base, body, response_size)
            bare_echo = BareHttp(echo_base)
            # The binary step and its floors in turn, so that their ratios compare like with like.
            binary_samples, floor_samples, echo_samples = timed_together(
                [
                    lambda: bare.round_trip(binary_request),  # noqa: B023
                    lambda: echo(body, response_size),  # noqa: B023
                    lambda: bare_echo.round_trip(to_echo),  # noqa: B023
                ],
                repeats,
            )
            binary_p50, binary_p95 = percentiles(binary_samples)
            floor, _ = percentiles(floor_samples)
            echo_floor, _ = percentiles(echo_samples)
            sdk, _ = percentiles(timed(lambda: sdk_like_step(client, session_id, grads), repeats))  # noqa: B023
            core, _ = percentiles(timed(lambda: optimizer.step({"w": grads}), repeats))  # noqa: B023
            print(
                f"| {size:,} | {json_p50 * 1e3:.2f} | {json_p95 * 1e3:.2f} | {binary_p50 * 1e3:.2f} "
                f"| {binary_p95 * 1e3:.2f} | {json_p50 / binary_p50:.1f} | {sdk * 1e3:.2f} | {core * 1e3:.3f} "
                f"| {floor * 1e3:.2f} | {binary_p50 / floor:.2f} | {echo_floor * 1e3:.2f} "
                f"| {binary_p50 / echo_floor:.2f} | {trivial * 1e3:.2f} |",
                flush=True,
            )
            bare.close()
            bare_echo.close()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """Send ``request`` and read its whole response; the status line."""
    writer.write(request)
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def drive_connection(host: str, port: int, request: bytes, stop: float) -> int:
    """Keep one HTTP/1.1 connection busy with ``request`` until ``stop``; the number of 200 answers.

    A raw asyncio client, so that the load generator costs little of the CPU the server shares.
    """
    reader, writer = await asyncio.open_connection(host, port)
    done = 0
    try:
        while time.monotonic() < stop:
            status = await round_trip(reader, writer, request)
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"step answered {status!r}")
            done += 1
    finally:
        writer.close()
    return done


def step_request(base: str, session_id: str, grads: np.ndarray, transport: str) -> bytes:
    if transport == "json":
        body, headers = orjson.dumps({"grads": {"w": grads}}, option=orjson.OPT_SERIALIZE_NUMPY), JSON
    else:
        body, headers = save({"w": grads}), BINARY
    host = base.removeprefix("http://")
    lines = [f"POST /v1/sessions/{session_id}/step HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def ab_table(bases: dict[str, str], sizes: list[int], rng: np.random.Generator) -> None:
    """The step's p50 on two servers (this checkout and another), their requests taken in turn."""
    labels = list(bases)
    print(f"\n| params | transport | {' | '.join(f'{label} p50 ms' for label in labels)} | {labels[0]} ÷ {labels[1]} |")
    print("|---:|---|" + "---:|" * (len(labels) + 1))
    with ExitStack() as stack:
        clients = {
            label: stack.enter_context(httpx.Client(base_url=base, timeout=600)) for label, base in bases.items()
        }
        for size in sizes:
            repeats = 2000 if size <= 1_000 else 200 if size <= 100_000 else 40 if size <= 1_000_000 else 16
            grads = rng.standard_normal(size, dtype=np.float32)
            initial = rng.standard_normal(size, dtype=np.float32)
            for transport in ("json", "binary") if size <= 1_000_000 else ("binary",):
                runs: list[Callable[[], object]] = []
                for label, base in bases.items():
                    bare = stack.enter_context(closing(BareHttp(base)))
                    request = step_request(base, create(clients[label], initial), grads, transport)
                    runs.append(functools.partial(bare.round_trip, request))
                samples = timed_together(runs, repeats)
                p50s = [statistics.median(taken) for taken in samples]
                cells = " | ".join(f"{p50 * 1e3:.3f}" for p50 in p50s)
                print(f"| {size:,} | {transport} | {cells} | {p50s[0] / p50s[1]:.3f} |", flush=True)


def throughput(bases: list[str], sessions: int, seconds: float, transport: str, rng: np.random.Generator) -> float:
    with httpx.Client(base_url=bases[0], timeout=60) as client:
        ids = [create(client, rng.standard_normal(1000, dtype=np.float32)) for _ in range(sessions)]
    grads = rng.standard_normal(1000, dtype=np.float32)

    async def run() -> int:
        stop = time.monotonic() + seconds
        drivers = []
        for index, session_id in enumerate(ids):
            base = bases[index % len(bases)]
            host, port = base.removeprefix("http://").split(":")
            request = step_request(base, session_id, grads, transport)
            drivers.append(drive_connection(host, int(port), request, stop))
        return sum(await asyncio.gather(*drivers))

    start = time.monotonic()
    steps = asyncio.run(run())
    return steps / (time.monotonic() - start)


def fresh_database(database_url: str | None, directory: str, label: str) -> str:
    if database_url is None:
        return f"sqlite:///{os.path.join(directory, label + '.sqlite3')}"
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("DROP TABLE IF EXISTS idempotency_records, sessions, storage_probes, alembic_version")
        )
    engine.dispose()
    return database_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory (PostgreSQL: it is emptied)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1], help="replica counts for the throughput rows")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=sorted({1, os.cpu_count() or 1}),
        help="processes per replica (serve --workers) for the throughput rows; default 1 and one per core",
    )
    parser.add_argument(
        "--checkout",
        help="also run the service of this checkout (the previous main, say): an A/B table of step p50s, each "
        "pair of requests taken in turn, and its throughput rows beside this checkout's",
    )
    args = parser.parse_args()
    # The servers inherit it: a JSON step of 10M params is over the default limit of JSON bodies.
    os.environ.setdefault("OPTIM_MAX_JSON_BODY_BYTES", str(1 << 30))
    rng = np.random.default_rng(0)
    engine = (args.database_url or "sqlite").split(":")[0]
    print(f"database: {engine}; RMSprop, float32; loopback; {os.cpu_count()} cores\n")
    with tempfile.TemporaryDirectory() as directory:
        checkouts: dict[str, str | None] = {"this checkout": None}
        if args.checkout:
            checkouts[args.checkout] = args.checkout
        if args.sizes and args.checkout:
            if args.database_url:
                raise SystemExit("--checkout compares two servers on SQLite: leave out --database-url")
            with ExitStack() as stack:
                bases = {
                    label: stack.enter_context(server(f"sqlite:///{directory}/ab-{index}.sqlite3", checkout=checkout))
                    for index, (label, checkout) in enumerate(checkouts.items())
                }
                ab_table(bases, args.sizes, rng)
        elif args.sizes:
            with server(fresh_database(args.database_url, directory, "latency")) as base:
                latency_table(base, args.sizes, rng)
        sessions = f"{args.sessions} sessions x 1k params"
        print(f"\n| server | replicas | workers each | {sessions}, JSON steps/s | binary steps/s |")
        print("|---|---:|---:|---:|---:|")
        for replicas in args.replicas:
            for workers in args.workers:
                rates: dict[str, list[float]] = {label: [] for label in checkouts}
                for transport in ("json", "binary"):
                    for label, checkout in checkouts.items():  # in turn, so that both see the same minutes
                        name = f"throughput-{replicas}-{workers}-{transport}-{len(rates[label])}-{label[:4]}"
                        url = fresh_database(args.database_url, directory, name.replace("/", "_"))
                        with ExitStack() as stack:
                            urls = [stack.enter_context(server(url, workers, checkout)) for _ in range(replicas)]
                            rates[label].append(throughput(urls, args.sessions, args.seconds, transport, rng))
                for label, (json_rate, binary_rate) in rates.items():
                    print(f"| {label} | {replicas} | {workers} | {json_rate:.0f} | {binary_rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
