"""Every step is applied exactly once, against a real server process.

Concurrency: 16 client threads step one Rprop session (100 float32 params) at once, 20 steps each, each
step with its own random gradients and Idempotency-Key. The step numbers the server returns must be
exactly 1..320, each thread's in the order it sent them, and the params — in every response and at the
end — must be bit for bit what optim_core computes in-process from the gradients taken in the order of
those step numbers. Retrying all 320 requests afterwards, concurrently, must return the original
responses and apply nothing.

Retries: a step retried with the same Idempotency-Key and body returns the first response (same step,
params and ETag) and the step counter does not move, also after later steps and across a server
restart (SIGTERM, then a new process on the same database).
"""

import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from optim_core import RMSprop, Rprop
from tests.databases import fresh_database
from tests.e2e.server_process import (
    ServerFactory,
    ServerProcess,
    assert_same_params,
    assert_same_state_dict,
    json_body,
    # the server_factory fixture
    server_factory_fixture,  # noqa: F401
)

JSON_HEADERS = {"Content-Type": "application/json"}
DTYPE = np.dtype(np.float32)
SEED = 7_310_125
THREADS = 16
STEPS_PER_THREAD = 20
TOTAL_STEPS = THREADS * STEPS_PER_THREAD
SHAPE = (10, 10)
RPROP: dict[str, Any] = {"lr": 0.01, "etas": [0.5, 1.2], "step_sizes": [1e-6, 50.0]}
RMSPROP: dict[str, Any] = {"lr": 0.01, "alpha": 0.9, "momentum": 0.9, "centered": True}
TIMEOUT = 60.0  # a request may wait behind all the others on the session


@dataclass(frozen=True)
class Request:
    thread: int
    index: int
    key: str
    grads: dict[str, np.ndarray]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    etag: str | None
    body: Any

    @classmethod
    def of(cls, response: httpx.Response) -> "Reply":
        return cls(response.status_code, response.headers.get("etag"), response.json())


def step_url(session_id: str) -> str:
    return f"/v1/sessions/{session_id}/step"


def create_session(client: httpx.Client, body: Mapping[str, Any]) -> str:
    response = client.post("/v1/sessions", content=json_body(body), headers=JSON_HEADERS)
    assert response.status_code == 201, response.text[:2000]
    session_id: str = response.json()["id"]
    return session_id


def post_step(client: httpx.Client, session_id: str, request: Request) -> Reply:
    headers = {**JSON_HEADERS, "Idempotency-Key": request.key}
    return Reply.of(client.post(step_url(session_id), content=request.body, headers=headers))


def in_threads(base_url: str, work: Callable[[int, httpx.Client], None]) -> None:
    """Run ``work(thread, client)`` in THREADS threads that start together, each with its own connection."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(thread: int) -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=TIMEOUT) as client:
                barrier.wait(30)
                work(thread, client)
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(thread,), name=f"client-{thread}") for thread in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    assert not errors, f"client threads failed: {errors!r}"


@dataclass
class ConcurrentRun:
    server: ServerProcess
    session_id: str
    initial: dict[str, np.ndarray]
    requests: list[Request]
    replies: dict[str, Reply]  # by Idempotency-Key


def requests_of(thread: int) -> list[Request]:
    rng = np.random.default_rng([SEED, thread])
    requests = []
    for index in range(STEPS_PER_THREAD):
        grads = {"w": rng.standard_normal(SHAPE).astype(DTYPE)}
        key = f"client-{thread}-step-{index}-{uuid.uuid4()}"
        requests.append(Request(thread, index, key, grads, json_body({"grads": grads})))
    return requests


@pytest.fixture(scope="module")
def concurrent_run(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConcurrentRun]:
    """16 threads x 20 steps, at once, on one Rprop session of a real server (which stays up for the module)."""
    directory = tmp_path_factory.mktemp("exactly-once")
    with fresh_database(engine, directory) as database_url, ServerFactory(directory, lambda: database_url) as servers:
        yield step_concurrently(servers())


def step_concurrently(server: ServerProcess) -> ConcurrentRun:
    """16 threads x 20 steps, at once, on a new Rprop session of ``server``."""
    initial = {"w": np.random.default_rng([SEED, THREADS]).standard_normal(SHAPE).astype(DTYPE)}
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        session_id = create_session(
            client, {"optimizer": "rprop", "params": initial, "hyperparameters": RPROP, "dtype": "float32"}
        )
    by_thread = [requests_of(thread) for thread in range(THREADS)]
    replies: dict[str, Reply] = {}

    def work(thread: int, client: httpx.Client) -> None:
        for request in by_thread[thread]:
            replies[request.key] = post_step(client, session_id, request)

    in_threads(server.base_url, work)
    requests = [request for requests in by_thread for request in requests]
    return ConcurrentRun(server, session_id, initial, requests, replies)


def replay_rprop(initial: Mapping[str, np.ndarray], grads_in_order: list[dict[str, np.ndarray]]) -> Iterator[Rprop]:
    """optim_core stepped with ``grads_in_order``; yields the optimizer after each step."""
    optimizer = Rprop(dict(initial), **RPROP)
    for grads in grads_in_order:
        optimizer.step(grads)
        yield optimizer


def test_concurrent_steps_are_each_applied_exactly_once_in_the_order_of_their_step_numbers(
    concurrent_run: ConcurrentRun,
) -> None:
    run = concurrent_run
    failed = {key: reply for key, reply in run.replies.items() if reply.status != 200}
    assert not failed, f"{len(failed)} steps failed, e.g. {next(iter(failed.values()), None)}"
    assert len(run.replies) == TOTAL_STEPS

    steps = {request.key: run.replies[request.key].body["step"] for request in run.requests}
    assert sorted(steps.values()) == list(range(1, TOTAL_STEPS + 1)), "the step numbers are not exactly 1..320"
    for thread in range(THREADS):
        mine = [steps[request.key] for request in run.requests if request.thread == thread]
        assert mine == sorted(mine), f"client {thread} sent its steps one after the other but got {mine}"
    etags = [run.replies[request.key].etag for request in run.requests]
    assert None not in etags
    assert len(set(etags)) == TOTAL_STEPS, "two different steps answered with the same ETag"

    # The replay, in the order the step numbers say; every response is the replay's state after its step.
    by_step = sorted(run.requests, key=lambda request: steps[request.key])
    replay = replay_rprop(run.initial, [request.grads for request in by_step])
    optimizer = None
    for request, optimizer in zip(by_step, replay, strict=True):
        reply = run.replies[request.key]
        assert_same_params(
            reply.body["params"],
            optimizer.params,
            f"the response to step {steps[request.key]} (client {request.thread}, its step {request.index})",
        )
    assert optimizer is not None

    with httpx.Client(base_url=run.server.base_url, timeout=TIMEOUT) as client:
        final = client.get(f"/v1/sessions/{run.session_id}/params").json()
        assert final["step"] == TOTAL_STEPS
        assert_same_params(final["params"], optimizer.params, "GET /params after all steps")
        state_dict = client.get(f"/v1/sessions/{run.session_id}/state_dict").json()
        assert_same_state_dict(state_dict, optimizer.state_dict(), DTYPE, "GET /state_dict after all steps")


def test_concurrent_retries_of_applied_steps_return_the_original_responses_and_apply_nothing(
    concurrent_run: ConcurrentRun,
) -> None:
    run = concurrent_run
    with httpx.Client(base_url=run.server.base_url, timeout=TIMEOUT) as client:
        before = client.get(f"/v1/sessions/{run.session_id}/params").json()
    retried: dict[str, Reply] = {}

    def work(thread: int, client: httpx.Client) -> None:
        # Newest first, so that the retries do not come in the order of the original steps.
        for request in reversed([request for request in run.requests if request.thread == thread]):
            retried[request.key] = post_step(client, run.session_id, request)

    in_threads(run.server.base_url, work)
    for request in run.requests:
        assert retried[request.key] == run.replies[request.key], (
            f"the retry of client {request.thread}'s step {request.index} did not return the original response"
        )
    with httpx.Client(base_url=run.server.base_url, timeout=TIMEOUT) as client:
        after = client.get(f"/v1/sessions/{run.session_id}/params").json()
    assert after["step"] == before["step"], "retries moved the step counter"
    assert after == before, "retries changed the params"


def rmsprop_session(client: httpx.Client) -> tuple[str, RMSprop, list[Request]]:
    """A fresh RMSprop session, its in-process twin, and three step requests (with their own keys) for it."""
    rng = np.random.default_rng([SEED, 1_000])
    initial = {"w": rng.standard_normal(SHAPE).astype(DTYPE), "b": rng.standard_normal(3).astype(DTYPE)}
    session_id = create_session(
        client, {"optimizer": "rmsprop", "params": initial, "hyperparameters": RMSPROP, "dtype": "float32"}
    )
    requests = []
    for index in range(3):
        grads = {name: rng.standard_normal(value.shape).astype(DTYPE) for name, value in initial.items()}
        requests.append(Request(0, index, f"retry-{index}-{uuid.uuid4()}", grads, json_body({"grads": grads})))
    return session_id, RMSprop(initial, **RMSPROP), requests


def assert_at_step(client: httpx.Client, session_id: str, step: int, twin: RMSprop, where: str) -> None:
    current = client.get(f"/v1/sessions/{session_id}/params").json()
    assert current["step"] == step, f"{where}: the session is at step {current['step']}, expected {step}"
    assert_same_params(current["params"], twin.params, f"{where}: GET /params")


def assert_replayed(retry: Reply, original: Reply, where: str) -> None:
    assert retry.status == original.status == 200, f"{where}: {retry.status} {retry.body}"
    assert retry.body == original.body, f"{where}: the retry's body differs from the first response's"
    assert retry.etag == original.etag, f"{where}: the retry's ETag {retry.etag} is not the first's {original.etag}"


def test_a_retried_step_returns_the_first_response_and_the_step_counter_does_not_move(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        session_id, twin, (first, second, _) = rmsprop_session(client)

        original = post_step(client, session_id, first)
        twin.step(first.grads)
        assert original.status == 200, original.body
        assert original.body["step"] == 1
        assert_same_params(original.body["params"], twin.params, "the first step's response")
        assert_replayed(post_step(client, session_id, first), original, "an immediate retry")
        assert_at_step(client, session_id, 1, twin, "after an immediate retry")

        later = post_step(client, session_id, second)
        twin.step(second.grads)
        assert later.status == 200, later.body
        assert later.body["step"] == 2
        # The retry still answers what the first step answered, not the session's state now.
        assert_replayed(post_step(client, session_id, first), original, "a retry after a later step")
        assert_replayed(post_step(client, session_id, second), later, "a retry of the later step")
        assert_at_step(client, session_id, 2, twin, "after the retries")


def test_a_retried_step_after_a_server_restart_returns_the_first_response_and_nothing_is_applied_twice(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        session_id, twin, (first, second, third) = rmsprop_session(client)
        originals = [post_step(client, session_id, request) for request in (first, second)]
        for request in (first, second):
            twin.step(request.grads)
        assert [reply.body["step"] for reply in originals] == [1, 2], [reply.body for reply in originals]

    exit_code = server.stop()
    assert exit_code in (0, -signal.SIGTERM), f"SIGTERM did not shut the server down gracefully (exit code {exit_code})"
    server.start()

    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        for request, original in zip((first, second), originals, strict=True):
            assert_replayed(post_step(client, session_id, request), original, f"retry {request.index} after a restart")
        assert_at_step(client, session_id, 2, twin, "after the retries after a restart")

        different = post_step(client, session_id, Request(0, 9, first.key, third.grads, third.body))
        assert different.status == 422, f"a known key with a different body answered {different.status}"
        assert_at_step(client, session_id, 2, twin, "after reusing a key with a different body")

        # The session goes on from exactly its two steps.
        new = post_step(client, session_id, third)
        twin.step(third.grads)
        assert new.status == 200, new.body
        assert new.body["step"] == 3
        assert_same_params(new.body["params"], twin.params, "the first new step after the restart")
        assert_replayed(post_step(client, session_id, third), new, "a retry of the new step")
        assert_at_step(client, session_id, 3, twin, "at the end")
