"""SIGTERM stops a real server within its grace period, whatever its storage is doing.

A step waits for the SQLite write lock, which another process holds far longer than the
grace period; the server is told to stop meanwhile. It must be gone within the grace
period (and a margin), and the step must get an answer or a closed connection, never hang.
"""

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from service.store.sqlite.file_locks import WRITE_LOCK, LockFile
from tests.e2e.server_process import ServerProcess, sqlite_url

GRACE_SECONDS = 2.0
MARGIN_SECONDS = 5.0


def hold_the_write_lock(lock_path: Path, holding: Any, release: Any) -> None:
    locks = LockFile(lock_path)
    with locks.held(WRITE_LOCK, timeout=10, what="the write lock"):
        holding.set()
        release.wait(120)
    locks.close()


def test_sigterm_stops_the_server_within_its_grace_period_while_a_write_waits_on_storage(tmp_path: Path) -> None:
    database = tmp_path / "optim.sqlite3"
    env = {"OPTIM_GRACEFUL_SHUTDOWN_SECONDS": str(GRACE_SECONDS), "OPTIM_WRITE_TIMEOUT_SECONDS": "120"}
    server = ServerProcess(sqlite_url(database), log_dir=tmp_path, env=env).start()
    context = multiprocessing.get_context("spawn")
    holding, release = context.Event(), context.Event()
    holder = context.Process(
        target=hold_the_write_lock, args=(database.with_name(database.name + "-locks"), holding, release)
    )
    answers: list[Any] = []
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            session = client.post("/v1/sessions", json={"optimizer": "rprop", "params": {"w": [1.0]}}).json()["id"]
        holder.start()
        assert holding.wait(30)

        def step() -> None:
            try:
                with httpx.Client(base_url=server.base_url, timeout=60) as client:
                    answers.append(client.post(f"/v1/sessions/{session}/step", json={"grads": {"w": [1.0]}}))
            except httpx.HTTPError as error:
                answers.append(error)

        stepping = threading.Thread(target=step)
        stepping.start()
        time.sleep(1.0)  # the step now waits for the write lock
        started = time.monotonic()
        server.stop(GRACE_SECONDS + MARGIN_SECONDS + 10)
        took = time.monotonic() - started
        stepping.join(30)
    finally:
        release.set()
        holder.join(30)
        server.close()

    assert took < GRACE_SECONDS + MARGIN_SECONDS, f"the server took {took:.1f} s to stop"
    assert not stepping.is_alive(), "the step never ended"
    assert answers, "the step got no answer"
