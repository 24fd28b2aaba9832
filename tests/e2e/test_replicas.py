"""Three real server processes on one PostgreSQL database serve one session as one.

Twelve client threads step the same session, each request going to a random
replica, 300 steps in all. Every guarantee must hold across processes: each step
is applied exactly once and in a single order (the step numbers the server
returns), no replica serves stale state, and a replica killed mid-run loses
nothing that was acknowledged.
"""

import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from optim_core import RMSprop
from tests.databases import postgres_url  # noqa: F401 - the fixture
from tests.e2e.server_process import ServerProcess, json_body

REPLICAS = 3
THREADS = 12
STEPS = 300
SIZE = 64
HYPERPARAMETERS = {"lr": 0.01, "momentum": 0.9, "centered": True}
ATTEMPTS = 20


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:  # noqa: F811
    servers = [ServerProcess(postgres_url, log_dir=tmp_path, name=f"replica{index}") for index in range(REPLICAS)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.close()


def create_session(base_url: str, initial: np.ndarray) -> str:
    body = {"optimizer": "rmsprop", "params": {"w": initial.tolist()}, "hyperparameters": HYPERPARAMETERS}
    response = httpx.post(
        f"{base_url}/v1/sessions", content=json_body(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


def step_until_acknowledged(
    servers: list[ServerProcess], session_id: str, grads: np.ndarray, rng: random.Random
) -> int:
    """POST one step with one Idempotency-Key to random live replicas until one acknowledges it."""
    key = str(uuid.uuid4())
    body = json_body({"grads": {"w": grads.tolist()}})
    for _ in range(ATTEMPTS):
        server = rng.choice(servers)
        try:
            response = httpx.post(
                f"{server.base_url}/v1/sessions/{session_id}/step",
                content=body,
                headers={"content-type": "application/json", "Idempotency-Key": key},
                timeout=30,
            )
        except httpx.TransportError:
            continue
        if response.status_code >= 500:
            continue
        assert response.status_code == 200, response.text
        step: int = response.json()["step"]
        return step
    raise AssertionError(f"no replica acknowledged the step with key {key} in {ATTEMPTS} attempts")


def run_clients(
    servers: list[ServerProcess], session_id: str, on_acknowledged: threading.Event | None = None
) -> dict[int, np.ndarray]:
    """Every thread's steps; the grads of each acknowledged step, by the step number the server gave it."""
    applied: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        grads_rng = np.random.default_rng(index)
        try:
            for _ in range(STEPS // THREADS):
                grads = grads_rng.standard_normal(SIZE).astype(np.float32)
                step = step_until_acknowledged(servers, session_id, grads, rng)
                with lock:
                    assert step not in applied, f"step {step} was handed out twice"
                    applied[step] = grads
                    if on_acknowledged is not None and len(applied) >= STEPS // 3:
                        on_acknowledged.set()
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return applied


def replay(initial: np.ndarray, applied: dict[int, np.ndarray]) -> np.ndarray:
    optimizer = RMSprop({"w": initial}, **HYPERPARAMETERS)  # type: ignore[arg-type]
    for step in sorted(applied):
        optimizer.step({"w": applied[step]})
    return optimizer.params["w"]


def assert_session_is(
    servers: list[ServerProcess], session_id: str, initial: np.ndarray, applied: dict[int, np.ndarray]
) -> None:
    assert sorted(applied) == list(range(1, STEPS + 1))
    expected = replay(initial, applied)
    checkpoints = []
    for server in servers:
        params = httpx.get(f"{server.base_url}/v1/sessions/{session_id}/params").json()
        assert params["step"] == STEPS
        np.testing.assert_array_equal(np.asarray(params["params"]["w"], dtype=np.float32), expected)
        checkpoints.append(httpx.get(f"{server.base_url}/v1/sessions/{session_id}/checkpoint").json())
    assert all(checkpoint == checkpoints[0] for checkpoint in checkpoints)


def test_three_replicas_apply_every_step_once_in_the_order_of_the_returned_step_numbers(
    replicas: list[ServerProcess],
) -> None:
    initial = np.random.default_rng(99).standard_normal(SIZE).astype(np.float32)
    session_id = create_session(replicas[0].base_url, initial)

    applied = run_clients(replicas, session_id)

    assert_session_is(replicas, session_id, initial, applied)


def test_a_replica_killed_mid_run_loses_no_acknowledged_step_and_applies_none_twice(
    replicas: list[ServerProcess],
) -> None:
    initial = np.random.default_rng(7).standard_normal(SIZE).astype(np.float32)
    session_id = create_session(replicas[0].base_url, initial)
    a_third_done = threading.Event()
    victim = replicas[1]

    def kill_when_a_third_is_done() -> None:
        a_third_done.wait(timeout=120)
        victim.kill()

    killer = threading.Thread(target=kill_when_a_third_is_done)
    killer.start()
    applied = run_clients(replicas, session_id, on_acknowledged=a_third_done)
    killer.join()

    assert not victim.running
    assert_session_is([server for server in replicas if server is not victim], session_id, initial, applied)
