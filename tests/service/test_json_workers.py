"""The processes that decode and encode large JSON bodies end with the server that started them,
however it ends: a stop signal (after which no exit handler runs) or SIGKILL."""

import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service import json_workers
from service.json_workers import JsonWorkers
from tests.service.server_process import ServerProcess, sqlite_url
from tests.service.test_server_processes import wait_until_gone

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


def spawned_children(pid: int) -> list[int]:
    """multiprocessing's spawned processes under the server ``pid`` (gunicorn's master, whose workers start them)."""
    descendants, frontier = [], [pid]
    while frontier:
        found = [child for parent in frontier for child in children(parent)]
        descendants += found
        frontier = found
    return [child for child in descendants if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


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
    workers = spawned_children(server.pid)
    assert workers, "the server started no JSON worker"
    return workers


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_json_workers_end_with_their_server(server: ServerProcess, stop_signal: signal.Signals) -> None:
    workers = json_workers_of(server)
    assert server.pid is not None

    os.kill(server.pid, stop_signal)  # the server alone: its process group is left to the workers

    wait_until_gone(workers)


def test_requests_that_first_need_the_workers_together_start_one_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[ProcessPoolExecutor] = []

    def slow_to_start(*args: Any, **kwargs: Any) -> ProcessPoolExecutor:
        time.sleep(0.2)  # widens the window in which a second thread could find no pool yet
        pool = ProcessPoolExecutor(*args, **kwargs)
        created.append(pool)
        return pool

    monkeypatch.setattr(json_workers, "ProcessPoolExecutor", slow_to_start)
    workers = JsonWorkers(processes=1, threshold_bytes=0)
    try:
        with ThreadPoolExecutor(4) as threads:
            decoded = list(
                threads.map(lambda _: workers.decode(b'{"grads": {"w": [1.5, -2]}}', [("grads", "*")]), range(4))
            )
    finally:
        workers.close()
        for pool in created[1:]:
            pool.shutdown(cancel_futures=True)
    assert len(created) == 1
    assert [document["grads"]["w"].tolist() for document in decoded] == [[1.5, -2.0]] * 4
