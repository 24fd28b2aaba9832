"""A disk that fills up under concurrent writers: the server answers, heals, and loses nothing.

A real server keeps its SQLite database on a small tmpfs. Sessions of about 240 KB of
arrays are stepped by 16 writer threads until the disk is full. Then:

- no request waits beyond its bound: every one is answered, 200, or 507 (503 at most)
  as problem+json with ``Retry-After``; a 500 or a timeout fails the test;
- reads go on, and ``/readyz`` says 503;
- once space is freed (a ballast file deleted), ``/readyz`` says 200 and every session
  takes steps again, without a restart;
- SIGTERM stops the server gracefully, within its grace period;
- after a restart, each session holds exactly the replay of the steps that were
  acknowledged (200), in the order of the step numbers they returned: a step that got
  507 was not applied, and none that got 200 was lost.

Both placements of the arrays are covered: in the database rows, and in slot files.
"""

import os
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from optim_core import RMSprop
from tests.e2e.server_process import ServerProcess, assert_same_params, json_body, sqlite_url
from tests.e2e.small_disk import fill, small_disk

DISK_BYTES = 40 << 20
HEADROOM_BYTES = 4 << 20
"""Free space left beside the ballast once the sessions exist: enough for a few steps, not for the run."""
SESSIONS = 12
PARAMS = 30_000
"""float32 params and RMSprop's square_avg: 240 KB per session."""
WRITERS = 16
FULL_ANSWERS = 40
"""507s to see before the disk counts as full."""
REQUEST_TIMEOUT = 60.0
"""Far beyond every bound the server keeps: a request that takes this long waited forever."""
PHASE_TIMEOUT = 120.0
GRACEFUL_STOP_SECONDS = 15.0
"""The server's grace period (10 s) and a margin; ServerProcess.stop kills it after this."""
HYPERPARAMETERS = {"lr": 0.01, "alpha": 0.9}
JSON = {"Content-Type": "application/json"}


@dataclass
class Attempt:
    session: int
    grads: dict[str, np.ndarray]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Run:
    ids: list[str]
    initial: list[dict[str, np.ndarray]]
    attempts: list[Attempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def full_answers(self) -> int:
        with self.lock:
            return sum(attempt.status == 507 for attempt in self.attempts)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", DISK_BYTES) as mounted:
        yield mounted


def step(client: httpx.Client, run: Run, session: int, rng: np.random.Generator) -> Attempt:
    grads = {"w": rng.standard_normal(PARAMS).astype(np.float32)}
    response = client.post(
        f"/v1/sessions/{run.ids[session]}/step",
        content=json_body({"grads": grads}),
        headers={**JSON, "Idempotency-Key": uuid.uuid4().hex},
    )
    attempt = Attempt(session, grads, response.status_code, response.json(), dict(response.headers))
    with run.lock:
        run.attempts.append(attempt)
    return attempt


def write_until_full(server: ServerProcess, run: Run) -> None:
    """WRITERS threads step the sessions until FULL_ANSWERS steps got 507; every answer must be 200, 503 or 507."""
    stop = threading.Event()
    failures: list[str] = []

    def write(writer: int) -> None:
        rng = np.random.default_rng(writer)
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
            while not stop.is_set():
                try:
                    attempt = step(client, run, writer % SESSIONS, rng)
                except httpx.HTTPError as error:
                    failures.append(f"writer {writer}: {type(error).__name__}: {error}")
                    stop.set()
                    return
                if attempt.status not in (200, 503, 507):
                    failures.append(f"writer {writer}: {attempt.status} {attempt.body}")
                    stop.set()
                    return
                if run.full_answers() >= FULL_ANSWERS:
                    stop.set()

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(WRITERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PHASE_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    assert not any(thread.is_alive() for thread in threads), "a writer never got an answer"
    assert not failures, failures
    assert run.full_answers() >= FULL_ANSWERS, "the disk never filled up"


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def replay(run: Run, session: int) -> tuple[int, dict[str, np.ndarray]]:
    """The acknowledged steps of ``session`` applied in the order of their step numbers: (steps, params)."""
    acknowledged = sorted(
        (attempt for attempt in run.attempts if attempt.session == session and attempt.status == 200),
        key=lambda attempt: attempt.body["step"],
    )
    numbers = [attempt.body["step"] for attempt in acknowledged]
    assert numbers == list(range(1, len(numbers) + 1)), f"session {session}'s acknowledged steps: {numbers}"
    optimizer = RMSprop({"w": run.initial[session]["w"]}, lr=0.01, alpha=0.9)
    for attempt in acknowledged:
        optimizer.step(attempt.grads)
        assert_same_params(attempt.body["params"], optimizer.params, f"the answer to step {attempt.body['step']}")
    return len(numbers), optimizer.params


@pytest.mark.parametrize(
    "array_files_min_bytes", [pytest.param(1 << 30, id="arrays-in-rows"), pytest.param(0, id="arrays-in-slot-files")]
)
def test_a_full_disk_answers_507_keeps_reads_heals_when_space_is_freed_and_loses_no_acknowledged_step(
    disk: Path, tmp_path: Path, array_files_min_bytes: int
) -> None:
    env = {"OPTIM_ARRAY_FILES_MIN_BYTES": str(array_files_min_bytes), "OPTIM_WRITE_TIMEOUT_SECONDS": "5"}
    server = ServerProcess(sqlite_url(disk / "optim.sqlite3"), log_dir=tmp_path, env=env).start()
    try:
        rng = np.random.default_rng(1)
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
            initial = [{"w": rng.standard_normal(PARAMS).astype(np.float32)} for _ in range(SESSIONS)]
            ids = []
            for params in initial:
                body = {"optimizer": "rmsprop", "params": params, "hyperparameters": HYPERPARAMETERS}
                created = client.post("/v1/sessions", content=json_body(body), headers=JSON)
                assert created.status_code == 201, created.text[:500]
                ids.append(created.json()["id"])
            run = Run(ids=ids, initial=initial)
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            fill(disk / "ballast", free - HEADROOM_BYTES)

            write_until_full(server, run)

            full = next(attempt for attempt in run.attempts if attempt.status == 507)
            assert full.headers["content-type"] == "application/problem+json", full.headers
            assert int(full.headers["retry-after"]) >= 0
            assert full.body["status"] == 507
            assert "nothing was changed" in full.body["detail"], full.body
            assert client.get("/healthz").status_code == 200
            for session_id in ids:
                assert client.get(f"/v1/sessions/{session_id}/params").status_code == 200, "a read failed"
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503, not_ready.text
            assert not_ready.headers["content-type"] == "application/problem+json"

            (disk / "ballast").unlink()
            wait_for(lambda: client.get("/readyz").status_code == 200, "/readyz says ready again")
            for session in range(SESSIONS):
                wait_for(
                    lambda session=session: step(client, run, session, rng).status == 200,
                    f"session {session} takes steps again",
                )

        started = time.monotonic()
        assert server.stop(GRACEFUL_STOP_SECONDS) in (0, -signal.SIGTERM), server.log_tail()
        assert time.monotonic() - started < GRACEFUL_STOP_SECONDS

        server.start()
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
            statuses: defaultdict[int, int] = defaultdict(int)
            for attempt in run.attempts:
                statuses[attempt.status] += 1
            for session, session_id in enumerate(ids):
                steps, params = replay(run, session)
                stored = client.get(f"/v1/sessions/{session_id}/params").json()
                assert stored["step"] == steps, f"session {session}: {dict(statuses)}"
                assert_same_params(stored["params"], params, f"session {session} after the restart")
    finally:
        server.close()
