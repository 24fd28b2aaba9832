"""``serve --workers 2``: two server processes on one port and one SQLite database.

Connections opened together are spread over both processes; steps on one session
through both are each applied exactly once and in one order (each process checks the
optimizers it caches against the database); and the server starts and stops as one: a
port in use is refused, a stop signal stops every process, a worker that dies is
replaced at any time (even as it starts), and a killed supervisor takes its workers with it.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server_process import (
    HOST,
    REPO_ROOT,
    ServerProcess,
    assert_same_params,
    sqlite_url,
)
from tests.e2e.test_exactly_once import TIMEOUT, TOTAL_STEPS, replay_rprop, step_concurrently

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the tests find the worker processes in /proc")

WORKERS = 2
CONNECTIONS = 32
EXIT_TIMEOUT = 20.0


def worker_pids(supervisor: int) -> list[int]:
    """The server processes under gunicorn's master (its children; theirs, such as JSON workers, are not)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if alive(int(pid))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running after {EXIT_TIMEOUT} s: {[p for p in pids if alive(p)]}"
        time.sleep(0.05)


def wait_until_every_worker_serves(server: ServerProcess, workers: int = WORKERS) -> None:
    """Until ``workers`` workers run and each has logged the end of its startup: ``GET /healthz`` answers once
    the first one has, and connections opened before another is up all go to the first."""
    assert server.pid is not None
    deadline = time.monotonic() + EXIT_TIMEOUT
    while True:
        pids = worker_pids(server.pid)
        log = server.log_tail(1 << 20)
        if len(pids) == workers and all(f"[{pid}] [INFO] Application startup complete." in log for pid in pids):
            return
        assert time.monotonic() < deadline, f"not every worker started:\n{server.log_tail()}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, workers=WORKERS) as running:
        wait_until_every_worker_serves(running)
        yield running


def test_both_processes_serve_steps_on_one_session_each_applied_exactly_once(server: ServerProcess) -> None:
    assert server.pid is not None
    workers = worker_pids(server.pid)
    assert len(workers) == WORKERS, f"expected {WORKERS} server processes under the supervisor, found {workers}"
    cpu_before = {pid: cpu_seconds(pid) for pid in workers}
    run = step_concurrently(server)
    used = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in workers}
    replies, requests, initial, session_id = run.replies, run.requests, run.initial, run.session_id

    assert all(reply.status == 200 for reply in replies.values()), [r for r in replies.values() if r.status != 200][:1]
    steps = {request.key: replies[request.key].body["step"] for request in requests}
    assert sorted(steps.values()) == list(range(1, TOTAL_STEPS + 1))
    by_step = sorted(requests, key=lambda request: steps[request.key])
    optimizer = None
    for request, optimizer in zip(by_step, replay_rprop(initial, [r.grads for r in by_step]), strict=True):
        assert_same_params(replies[request.key].body["params"], optimizer.params, f"step {steps[request.key]}")
    assert optimizer is not None
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        final = client.get(f"/v1/sessions/{session_id}/params").json()
    assert final["step"] == TOTAL_STEPS
    assert_same_params(final["params"], optimizer.params, "GET /params after all steps")
    total = sum(used.values())
    assert all(share >= 0.15 * total for share in used.values()), f"CPU seconds by process: {used}"


def established_on(port: int) -> set[int]:
    """Socket inodes of the established TCP connections whose local end is ``port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(int(fields[9]))
    return inodes


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(descriptor)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


async def connections_held(server: ServerProcess, workers: list[int]) -> dict[int, int]:
    """Open CONNECTIONS connections at once, as a job's clients starting together do; how many each worker holds."""
    opened = await asyncio.gather(*(asyncio.open_connection(HOST, server.port) for _ in range(CONNECTIONS)))
    try:
        for _, writer in opened:
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        for reader, _ in opened:
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        established = established_on(server.port)
        return {pid: len(sockets_of(pid) & established) for pid in workers}
    finally:
        for _, writer in opened:
            writer.close()


def test_connections_opened_together_are_spread_over_the_processes(server: ServerProcess) -> None:
    assert server.pid is not None
    held = asyncio.run(connections_held(server, worker_pids(server.pid)))
    assert sum(held.values()) == CONNECTIONS, held
    # Spread evenly at random, fewer than 5 of 32 in one process happens about twice in 10^5 runs.
    assert all(count >= 5 for count in held.values()), f"connections held by each process: {held}"


def test_a_stop_signal_stops_every_process(server: ServerProcess) -> None:
    assert server.pid is not None
    workers = worker_pids(server.pid)
    assert server.stop() in (0, -signal.SIGTERM)
    wait_until_gone(workers)


def replaced(server: ServerProcess, dead: int) -> list[int]:
    """Once gunicorn has replaced the worker ``dead``: the workers, none of them ``dead``."""
    assert server.pid is not None
    deadline = time.monotonic() + EXIT_TIMEOUT
    while len(workers := [pid for pid in worker_pids(server.pid) if pid != dead]) < WORKERS:
        assert time.monotonic() < deadline, f"no new worker after {EXIT_TIMEOUT} s: {workers}"
        time.sleep(0.05)
    return workers


def test_a_worker_that_dies_is_replaced(server: ServerProcess) -> None:
    assert server.pid is not None
    dead, *others = worker_pids(server.pid)
    os.kill(dead, signal.SIGKILL)
    assert set(others) <= set(replaced(server, dead))
    wait_until_every_worker_serves(server)
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        for _ in range(CONNECTIONS):  # each on a new connection, so both workers answer some
            assert client.get("/healthz", headers={"Connection": "close"}).status_code == 200


def test_a_worker_killed_as_it_starts_is_replaced_and_the_server_goes_on(tmp_path: Path) -> None:
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, workers=WORKERS) as server:
        assert server.pid is not None
        # Each time, a worker gets killed within a second of its start: three times in a row.
        for round_number in range(3):
            dead = max(worker_pids(server.pid))  # the newest
            os.kill(dead, signal.SIGKILL)
            workers = replaced(server, dead)
            assert server.running, f"the server stopped after kill {round_number + 1}:\n{server.log_tail()}"
            assert len(workers) == WORKERS
        wait_until_every_worker_serves(server)
        with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
            created = client.post("/v1/sessions", json={"optimizer": "rprop", "params": {"w": [1.0]}})
            assert created.status_code == 201, created.text
            stepped = client.post(f"/v1/sessions/{created.json()['id']}/step", json={"grads": {"w": [1.0]}})
            assert stepped.status_code == 200, stepped.text


def test_a_killed_supervisor_takes_its_workers_with_it(server: ServerProcess) -> None:
    assert server.pid is not None
    workers = worker_pids(server.pid)
    os.kill(server.pid, signal.SIGKILL)  # the supervisor alone, not its process group
    wait_until_gone(workers)


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    unwritable = tmp_path / "file-not-directory"
    unwritable.write_text("")
    command = [sys.executable, "-m", "service", "serve", "--host", HOST, "--port", "0", "--workers", str(WORKERS)]
    command += ["--database-url", sqlite_url(unwritable / "optim.sqlite3")]
    failed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT + 30)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "as it started; stopping" in failed.stderr


def test_a_port_in_use_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "service", "serve", "--host", HOST, "--port", str(server.port)]
    command += ["--database-url", sqlite_url(tmp_path / "other.sqlite3"), "--workers", str(WORKERS)]
    second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT)
    assert second.returncode == 1
    assert f"cannot listen on {HOST}:{server.port}" in second.stderr
    assert "address already in use" in second.stderr.lower()
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
