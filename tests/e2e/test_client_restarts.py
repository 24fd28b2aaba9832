"""The SDK against a server that is killed and restarted: no step is ever applied twice.

With the default retries, a step sent while the server restarts simply succeeds, once. With retries
too short to outlast a restart, the caller sees the failure, and whatever it does next (retry the
step, or go on with the next one) leaves the session exactly as many steps on as the caller was told
were applied: the sweep kills the server at moments spread over a step, and as soon as a step is
committed (which its 8 MB answer takes a while to follow).
"""

from __future__ import annotations

import statistics
import time

import httpx
import numpy as np

from optim_client import Client, RetryPolicy, ServerError, ServiceUnreachableError, Session
from tests.client.reference import RMSPROP, assert_same_bits, core_optimizer, grads_sequence, initial_params
from tests.e2e.server_process import (
    ServerFactory,
    ServerProcess,
    # the server_factory fixture
    server_factory_fixture,  # noqa: F401
)
from tests.in_a_thread import in_a_thread

OUTAGE_SECONDS = 2.0
PARAMS = 2_000_000
"""float32 params of the swept session: a step long enough (8 MB each way) to be killed in the middle of."""
AT_COMMIT = None
KILL_AT: list[float | None] = [0.2, AT_COMMIT, 0.5, AT_COMMIT, 0.8, AT_COMMIT, 1.1, AT_COMMIT]
"""When the server is killed: in fractions of a step's duration from its start, or once the step is committed."""
TOO_SHORT = RetryPolicy(budget=0.3)
"""Retries that give up while the server is down, so that the caller sees what a failure leaves."""


def kill_once_committed(server: ServerProcess, service: httpx.Client, session: Session, step: int) -> None:
    """Kill the server as soon as the session's step counter reaches ``step``."""
    deadline = time.monotonic() + 30
    while service.get(session.url).json()["step"] < step:
        assert time.monotonic() < deadline, f"step {step} was never committed"
    server.kill()


def restarted(server: ServerProcess) -> None:
    port = server.port
    server.start()
    assert server.port == port, "the server came back on another port; the client cannot follow"


def test_a_step_sent_while_the_server_restarts_succeeds_exactly_once_with_the_default_retries(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    params = initial_params("float32")
    first, second = grads_sequence(2, "float32")
    reference = core_optimizer("rmsprop", params, RMSPROP)
    with Client(server.base_url) as client:
        session = Session.create(client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
        session.step(first)
        server.kill()

        worker, outcome = in_a_thread(lambda: session.step(second))
        time.sleep(OUTAGE_SECONDS)
        assert worker.is_alive(), f"the step gave up during the outage: {outcome}"
        restarted(server)
        worker.join(60)

        [got] = outcome
        assert not isinstance(got, Exception), got
        reference.step(first)
        reference.step(second)
        assert_same_bits(got, reference.params)
        assert session.refresh()["step"] == 2


def test_however_the_server_is_killed_during_a_step_the_session_moves_only_by_the_steps_the_caller_was_told_of(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    rng = np.random.default_rng(20)
    initial = {"w": rng.standard_normal(PARAMS).astype(np.float32)}

    def grads() -> dict[str, np.ndarray]:
        return {"w": rng.standard_normal(PARAMS).astype(np.float32)}

    believed: list[dict[str, np.ndarray]] = []
    """The steps the caller was told were applied, in order: returned, or finished by the next call."""
    failed = applied_unanswered = 0
    with Client(server.base_url, retry=TOO_SHORT) as client, httpx.Client(base_url=server.base_url) as service:
        session = Session.create(client, optimizer="rmsprop", params=initial, hyperparameters=RMSPROP)
        durations = []
        for _ in range(3):
            believed.append(grads())
            started = time.perf_counter()
            session.step(believed[-1])
            durations.append(time.perf_counter() - started)
        step_seconds = statistics.median(durations)

        for index, fraction in enumerate(KILL_AT):
            failing = grads()
            worker, outcome = in_a_thread(lambda failing=failing: session.step(failing))  # type: ignore[misc]
            if fraction is AT_COMMIT:
                kill_once_committed(server, service, session, len(believed) + 1)
            else:
                time.sleep(fraction * step_seconds)
                server.kill()
            worker.join(60)
            restarted(server)
            [answer] = outcome
            if not isinstance(answer, Exception):
                believed.append(failing)
                continue
            assert isinstance(answer, ServiceUnreachableError | ServerError), answer
            assert answer.maybe_applied
            assert session.pending_key is not None
            failed += 1
            # What the caller cannot see, the test can: whether the step was committed before the kill.
            applied_unanswered += service.get(session.url).json()["step"] == len(believed) + 1
            if index % 4 < 2:
                session.step(failing)  # the caller retries the step that failed
                believed.append(failing)
            else:
                going_on = grads()
                session.step(going_on)  # the caller goes on; the failed step is finished first
                believed += [failing, going_on]
            assert service.get(session.url).json()["step"] == len(believed), f"killed at {fraction or 'the commit'}"

        final = session.params()
    missed = f"of {len(KILL_AT)} kills, {failed} failed a step and {applied_unanswered} came after its commit"
    assert failed, missed
    assert applied_unanswered, missed
    assert session.step_count == len(believed)
    reference = core_optimizer("rmsprop", initial, RMSPROP)
    for applied in believed:
        reference.step(applied)
    assert_same_bits(final, reference.params)
