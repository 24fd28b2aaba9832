"""The client waits as the service asks: a 409 for a repeat of a step still in flight, and a 429 for a key over
its rate, are retried after the Retry-After they carry, and every step is applied once. Real server
processes, on SQLite and on PostgreSQL; a proxy records what they answered."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import numpy as np

from optim_client import Client, RetryPolicy, Session
from tests.client.fault_proxy import Answer, FaultProxy
from tests.client.reference import grads_sequence, initial_params
from tests.e2e.server_process import (
    ServerFactory,
    # the server_factory fixture
    server_factory_fixture,  # noqa: F401
)
from tests.held_from_outside import held_from_outside
from tests.in_a_thread import in_a_thread
from tests.tenancy import create_key

IN_FLIGHT_SECONDS = 0.5
"""How long the first request is given to take its key and start waiting for the session the test holds."""


def sleeping_and_recording(sleeps: list[float]) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    return sleep


def answered(proxy: FaultProxy, status: int) -> list[Answer]:
    return [answer for answer in list(proxy.answers) if answer.status == status]


def test_a_step_repeated_while_its_first_request_is_in_flight_waits_as_the_409_says_and_is_applied_once(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    sleeps: list[float] = []
    retry = RetryPolicy(jitter=False, sleep=sleeping_and_recording(sleeps))
    with FaultProxy(server.base_url) as proxy, Client(proxy.url, retry=retry) as client:
        session = Session.create(client, optimizer="rmsprop", params=initial_params("float32"))
        [grads] = grads_sequence(1, "float32")
        body = client.encode({"grads": grads}, root="grads")
        headers = {"Content-Type": body.media_type, "Idempotency-Key": "in-flight"}
        with held_from_outside(server.database_url, session_id=session.id):
            first, first_answer = in_a_thread(
                lambda: httpx.post(f"{server.base_url}{session.url}/step", content=body.content, headers=headers)
            )
            time.sleep(IN_FLIGHT_SECONDS)  # the first request holds the key, and waits for the session
            ours, our_answer = in_a_thread(lambda: session.step(grads, idempotency_key="in-flight"))
            deadline = time.monotonic() + 10
            while not answered(proxy, 409) and time.monotonic() < deadline:
                time.sleep(0.01)
        first.join(30)
        ours.join(30)

        in_flight = answered(proxy, 409)
        assert in_flight, "the repeat never met the first request in flight"
        assert sleeps == [float(answer.headers["retry-after"]) for answer in in_flight]
        [params] = our_answer
        expected = first_answer[0].json()
        assert expected["step"] == 1
        for name, value in params.items():
            assert value.tobytes() == np.asarray(expected["params"][name], np.float32).tobytes()
        assert session.refresh()["step"] == 1


def test_a_key_over_its_rate_is_answered_429_and_the_client_waits_as_retry_after_says(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"OPTIM_TENANT_REQUESTS_PER_SECOND": "2", "OPTIM_TENANT_BURST": "2"}, start=False)
    key = create_key(server.database_url, "team-a")
    server.start()
    sleeps: list[float] = []
    retry = RetryPolicy(jitter=False, sleep=sleeping_and_recording(sleeps))
    with FaultProxy(server.base_url) as proxy, Client(proxy.url, api_key=key, retry=retry) as client:
        session = Session.create(client, optimizer="rmsprop", params=initial_params("float32"))
        sequence = grads_sequence(4, "float32")
        for grads in sequence:
            session.step(grads)

        limited = answered(proxy, 429)
        assert limited, "the key never went over its rate"
        assert all("ratelimit" in answer.headers for answer in limited)
        assert sleeps == [float(answer.headers["retry-after"]) for answer in limited]
        assert len({seen.headers["idempotency-key"] for seen in proxy.requests("POST", "/step")}) == len(sequence)
        assert session.refresh()["step"] == len(sequence)
