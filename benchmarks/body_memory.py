"""Memory and responsiveness of a server process while it takes the largest bodies its limits accept.

For each request below, starts ``python -m service serve`` (one worker) on a fresh SQLite database
with ``OPTIM_MAX_BODY_BYTES`` and ``OPTIM_MAX_JSON_BODY_BYTES`` as given, and makes a session of one
float32 param of the size the request needs (in binary). While it sends the request from a bare
socket (a client that costs next to nothing: httpx takes seconds to send 500 MB), it samples the
resident memory of the worker and of the JSON decoding processes it starts (``/proc``, every 10 ms),
and polls ``GET /healthz`` from a process of its own (at a higher priority when run as root).

It prints per request: the body's size; the peak resident memory above the baseline before the
request, and its ratio to the body's size; what is resident above that baseline two seconds after
the answer, beside what the session keeps by then in the optimizer cache (the state a PUT loaded);
the request's time; and the slowest ``/healthz`` answer meanwhile. A JSON body has started a JSON
worker process before the baseline is taken.

The requests, each at the largest size its transport accepts:
- a PUT of the session's state_dict (Rprop: ``prev`` and ``step_size``), decoded, checked and loaded
  whole, and answered with a small summary;
- a step whose gradient has the wrong shape: decoded whole, then refused (422), so that what it costs
  is the body's reading and decoding alone;
- for JSON also such a step of numbers as short as JSON has (``0,``), the worst case for a parser
  that makes an object of each.

``python -m benchmarks.body_memory`` (512 MiB bodies and the default JSON limit; about two minutes).
"""

import argparse
import contextlib
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import httpx
import numpy as np
import orjson
from safetensors.numpy import save

from benchmarks.http import serving

MIB = 1 << 20
SAMPLE_SECONDS = 0.01
HEALTH_SECONDS = 0.02
SETTLE_SECONDS = 2.0
JSON = "application/json"
BINARY = "application/vnd.safetensors"
RPROP_GROUPS = [
    {"lr": 0.01, "etas": [0.5, 1.2], "step_sizes": [1e-6, 50.0], "foreach": None, "maximize": False,
     "differentiable": False, "capturable": False, "params": [0]},
]  # fmt: skip


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            return [int(child) for child in file.read().split()]
    except OSError:
        return []


def _command_line(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every process below it."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += _rss(current)
        todo.extend(_children(current))
    return total


def poll_health(base: str, stop: Event, slowest: "Synchronized[float]") -> None:
    """Times ``GET /healthz`` on a connection of its own until ``stop``, keeping the slowest in ``slowest``."""
    with contextlib.suppress(PermissionError):
        os.nice(-10)  # as root: ahead of the client's sending and the sampling, on a machine of few cores
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/healthz").raise_for_status()
            elapsed = time.perf_counter() - started
            with slowest.get_lock():
                slowest.value = max(slowest.value, elapsed)
            time.sleep(HEALTH_SECONDS)


@dataclass
class Watch:
    peak_rss: int = 0
    slowest_health: float = 0.0


@contextmanager
def watching(worker: int, base: str) -> Iterator[Watch]:
    """Samples the worker's memory and times ``/healthz`` (from another process) until the block ends."""
    watch, stop = Watch(), threading.Event()
    spawn = multiprocessing.get_context("spawn")
    poll_stop, slowest = spawn.Event(), spawn.Value("d", 0.0)

    def sample() -> None:
        while not stop.is_set():
            watch.peak_rss = max(watch.peak_rss, tree_rss(worker))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample)
    poller = spawn.Process(target=poll_health, args=(base, poll_stop, slowest))
    poller.start()
    sampler.start()
    time.sleep(1.0)  # the poller is answered before the request starts
    try:
        yield watch
    finally:
        stop.set()
        poll_stop.set()
        sampler.join()
        poller.join()
        watch.slowest_health = slowest.value


def send(base: str, method: str, path: str, media_type: str, body: bytes) -> int:
    """One request from a bare socket; its status once the whole answer is in."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {media_type}\r\n"
        connection.sendall(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        connection.sendall(body)
        answer = b""
        while chunk := connection.recv(1 << 20):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@dataclass
class Request:
    name: str
    method: str
    path: str
    media_type: str
    body: bytes
    status: int
    params: int
    """The size of the session's one param that the request is made for."""
    kept: int = 0
    """Bytes the session keeps afterwards in the optimizer cache (the state a PUT loads)."""


def session(base: str, size: int) -> str:
    """A session of one float32 param of ``size`` elements, made in binary."""
    body = save({"params/w": np.zeros(size, np.float32)}, metadata={"optimizer": '"rprop"'})
    headers = {"content-type": BINARY, "accept": BINARY}
    response = httpx.post(f"{base}/v1/sessions", content=body, headers=headers, timeout=600)
    response.raise_for_status()
    session_id: str = response.headers["location"].rsplit("/", 1)[1]
    return session_id


def measure(request: Request) -> None:
    with tempfile.TemporaryDirectory() as directory:
        database_url = f"sqlite:///{directory}/optim.sqlite3"
        command = [sys.executable, "-m", "service", "serve", "--workers", "1", "--database-url", database_url]
        with serving([*command, "--no-access-log"], "/healthz") as base:
            (master,) = [child for child in _children(os.getpid()) if b"serve" in _command_line(child)]
            (worker,) = _children(master)
            session_id = session(base, request.params)
            # A JSON worker process started (by a body over its threshold that creates nothing) before the baseline.
            warm_up = b'{"optimizer": "none", "params": {"w": [' + b"0," * (1 * MIB) + b"0]}}"
            assert send(base, "POST", "/v1/sessions", JSON, warm_up) == 422
            time.sleep(SETTLE_SECONDS)
            baseline = tree_rss(worker)
            with watching(worker, base) as watch:
                started = time.perf_counter()
                status = send(base, request.method, request.path.format(session_id), request.media_type, request.body)
                elapsed = time.perf_counter() - started
                assert status == request.status, (request.name, status)
                time.sleep(SETTLE_SECONDS)
            after = tree_rss(worker)
    size = len(request.body)
    peak = watch.peak_rss - baseline
    print(
        f"| {request.name} | {size / MIB:.0f} | {peak / MIB:.0f} | {peak / size:.2f} | {(after - baseline) / MIB:.0f} "
        f"| {request.kept / MIB:.0f} | {elapsed:.1f} | {watch.slowest_health * 1e3:.0f} |",
        flush=True,
    )


def json_numbers(values: np.ndarray) -> bytes:
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)


def requests(max_body: int, json_limit: int, rng: np.random.Generator) -> list[Request]:
    # Sizes a little under each limit (a body's own bytes beside its numbers).
    binary_size = int(max_body * 0.98) // 8
    binary_values = rng.standard_normal(binary_size, dtype=np.float32)
    per_number = len(json_numbers(rng.standard_normal(1000, dtype=np.float32))) / 1000
    json_size = int(json_limit * 0.98 / per_number) // 2
    json_values = rng.standard_normal(json_size, dtype=np.float32)
    zeros = int(json_limit * 0.98) // 2
    binary_state = save(
        {"state/0/prev": binary_values, "state/0/step_size": np.abs(binary_values)},
        metadata={"state": '{"0": {"step": 1.0}}', "param_groups": orjson.dumps(RPROP_GROUPS).decode()},
    )
    json_state = (
        b'{"state": {"0": {"step": 1.0, "prev": ' + json_numbers(json_values) + b', "step_size": '
        + json_numbers(np.abs(json_values)) + b'}}, "param_groups": ' + orjson.dumps(RPROP_GROUPS) + b"}"
    )  # fmt: skip
    wrong_shape = np.concatenate([binary_values, binary_values[:1]])
    state_dict, step = "/v1/sessions/{}/state_dict", "/v1/sessions/{}/step"
    return [
        Request("PUT state_dict, safetensors", "PUT", state_dict, BINARY, binary_state, 200, binary_size,
                kept=2 * binary_values.nbytes),
        Request("step of the wrong shape, safetensors (422)", "POST", step, BINARY,
                save({"w": np.concatenate([wrong_shape, wrong_shape])}), 422, binary_size),
        Request("PUT state_dict, JSON", "PUT", state_dict, JSON, json_state, 200, json_size,
                kept=2 * json_values.nbytes),
        Request("step of the wrong shape, JSON (422)", "POST", step, JSON,
                b'{"grads": {"w": ' + json_numbers(np.concatenate([json_values] * 2)) + b"}}", 422, json_size),
        Request("step of zeros (0,0,...) of the wrong shape, JSON (422)", "POST", step, JSON,
                b'{"grads": {"w": [' + b"0," * (zeros - 16) + b"0]}}", 422, 1000),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--max-body-bytes", type=int, default=512 * MIB)
    parser.add_argument("--max-json-body-bytes", type=int, default=None, help="default: the service's")
    parser.add_argument("--only", type=int, nargs="*", help="the requests to measure, by their rows (from 0)")
    args = parser.parse_args()
    from service.config import Settings

    json_limit = args.max_json_body_bytes or Settings.model_fields["max_json_body_bytes"].default
    # The servers inherit them.
    os.environ["OPTIM_MAX_BODY_BYTES"] = str(args.max_body_bytes)
    os.environ["OPTIM_MAX_JSON_BODY_BYTES"] = str(json_limit)
    limits = f"OPTIM_MAX_BODY_BYTES {args.max_body_bytes / MIB:.0f} MiB, "
    limits += f"OPTIM_MAX_JSON_BODY_BYTES {json_limit / MIB:.0f} MiB"
    print(f"{limits}\n")
    print(
        "| request | body MiB | peak above baseline MiB | peak ÷ body | after, above baseline MiB "
        "| of which the session's new state MiB | seconds | slowest /healthz ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row, request in enumerate(requests(args.max_body_bytes, json_limit, np.random.default_rng(0))):
        if args.only is None or row in args.only:
            measure(request)


if __name__ == "__main__":
    main()
