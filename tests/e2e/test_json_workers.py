"""The processes that decode and encode large JSON bodies (anyio's workers) end with the server that
started them, however it ends: a stop signal, or SIGKILL."""

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.server_process import ServerProcess, sqlite_url
from tests.e2e.test_server_processes import wait_until_gone

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the tests find the worker processes in /proc")

THRESHOLD_BYTES = 1024
PARAMS = 4096
"""A JSON body of this many floats is over the threshold: it goes to the workers."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"OPTIM_JSON_WORKER_THRESHOLD_BYTES": str(THRESHOLD_BYTES), "OPTIM_JSON_WORKERS": "2"}
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, env=env) as running:
        yield running


def children(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads started them."""
    return [
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    ]


def json_worker_processes(pid: int) -> list[int]:
    """anyio's worker processes under the server ``pid`` (gunicorn's master, whose workers start them)."""
    descendants, frontier = [], [pid]
    while frontier:
        found = [child for parent in frontier for child in children(parent)]
        descendants += found
        frontier = found
    return [child for child in descendants if b"anyio.to_process" in Path(f"/proc/{child}/cmdline").read_bytes()]


def json_workers_of(server: ServerProcess) -> list[int]:
    """Make the server start its JSON workers, with JSON steps over the threshold, and find them."""
    assert server.pid is not None
    params = np.linspace(-1, 1, PARAMS).tolist()
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        created = client.post("/v1/sessions", json={"optimizer": "rmsprop", "params": {"w": params}})
        assert created.status_code == 201, created.text
        for _ in range(4):
            stepped = client.post(f"/v1/sessions/{created.json()['id']}/step", json={"grads": {"w": params}})
            assert stepped.status_code == 200, stepped.text
    workers = json_worker_processes(server.pid)
    assert workers, "the server started no JSON worker"
    return workers


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_json_workers_end_with_their_server(server: ServerProcess, stop_signal: signal.Signals) -> None:
    workers = json_workers_of(server)
    assert server.pid is not None

    os.kill(server.pid, stop_signal)  # the server alone: its process group is left to the workers

    wait_until_gone(workers)
