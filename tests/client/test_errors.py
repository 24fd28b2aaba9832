"""Failures: a 4xx surfaces as a typed exception carrying the problem details and is sent once;
connection errors, 5xx and 429 are retried with backoff (Retry-After honoured) within the retry
budget; a creation is retried with its Idempotency-Key, so a lost one still makes one session.

Requests are counted, and faults injected, by a proxy between the client and the real server.
"""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from optim_client import (
    Client,
    ClientError,
    NotFoundError,
    OptimServiceError,
    RetryPolicy,
    ServerError,
    ServiceUnreachableError,
    Session,
    ValidationError,
)
from optim_client.transports import Transport
from tests.client.fake_clock import FakeClock
from tests.client.fault_proxy import FaultProxy
from tests.client.reference import RPROP, initial_params
from tests.e2e.server_process import free_port


def test_an_invalid_hyperparameter_raises_validation_error_with_the_problem_and_is_sent_once(
    proxied_client: Client, proxy: FaultProxy, sleeps: list[float]
) -> None:
    with pytest.raises(ValidationError) as raised:
        Session.create(
            proxied_client, optimizer="rmsprop", params=initial_params("float32"), hyperparameters={"lr": -1}
        )
    error = raised.value
    assert isinstance(error, ValueError)  # as torch.optim raises for an invalid learning rate
    assert isinstance(error, ClientError)
    assert isinstance(error, OptimServiceError)
    assert error.status == 422
    assert error.type == "/problems/validation-error"
    assert error.title == "Invalid request"
    assert "Invalid learning rate: -1" in error.detail
    assert error.errors == [{"loc": ["body", "hyperparameters", "lr"], "msg": "Invalid learning rate: -1"}]
    assert len(proxy.requests("POST", "/v1/sessions")) == 1
    assert sleeps == []


def test_a_step_naming_an_unknown_param_is_rejected_once_and_changes_nothing(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client
) -> None:
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    with pytest.raises(ValidationError) as raised:
        session.step({"w": np.ones((3, 2)), "nope": np.ones(2)})
    assert raised.value.errors[0]["loc"] == ["body", "grads", "nope"]
    assert len(proxy.requests("POST", "/step")) == 1
    assert service.get(session.url).json()["step"] == 0


def test_an_unknown_session_raises_not_found_once(proxied_client: Client, proxy: FaultProxy) -> None:
    with pytest.raises(NotFoundError) as raised:
        Session.open(proxied_client, "no-such-session")
    assert raised.value.status == 404
    assert len(proxy.requests("GET")) == 1


def test_reusing_an_idempotency_key_with_other_grads_raises_validation_error(client: Client) -> None:
    session = Session.create(client, optimizer="rprop", params=initial_params("float32"))
    key = str(uuid.uuid4())
    session.step({"s": 1.0}, idempotency_key=key)
    with pytest.raises(ValidationError, match="Idempotency-Key"):
        session.step({"s": 2.0}, idempotency_key=key)
    assert session.refresh()["step"] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_grads_are_rejected_on_both_transports_and_change_nothing(client: Client, bad: float) -> None:
    # JSON cannot carry them, so the client refuses before sending; safetensors can, and the service answers 422.
    session = Session.create(client, optimizer="rprop", params=initial_params("float32"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        session.step({"w": np.full((3, 2), bad)})
    assert session.refresh()["step"] == 0


def test_a_step_answered_503_then_429_is_retried_after_the_delays_the_service_asked_for(
    proxied_client: Client, proxy: FaultProxy, sleeps: list[float], service: httpx.Client
) -> None:
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    proxy.inject("POST", "/step", status=503, retry_after="2")
    proxy.inject("POST", "/step", status=429, retry_after="1")
    session.step({"s": 1.0})
    attempts = proxy.requests("POST", "/step")
    assert len(attempts) == 3
    assert len({attempt.headers["idempotency-key"] for attempt in attempts}) == 1
    assert sleeps == [2.0, 1.0]
    assert service.get(session.url).json()["step"] == 1


def test_a_5xx_without_retry_after_is_retried_with_exponential_backoff(
    proxied_client: Client, proxy: FaultProxy, sleeps: list[float]
) -> None:
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    proxy.inject("GET", "/params", status=500, times=3)
    session.params()
    assert len(proxy.requests("GET", "/params")) == 4
    assert sleeps == [0.01, 0.02, 0.04]


def test_a_5xx_on_every_attempt_raises_server_error_with_the_problem(proxied_client: Client, proxy: FaultProxy) -> None:
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    proxy.inject("GET", "/state_dict", status=502, times=4)
    with pytest.raises(ServerError) as raised:
        session.state_dict()
    assert (raised.value.status, raised.value.title) == (502, "Injected fault")
    assert len(proxy.requests("GET", "/state_dict")) == 4


def test_a_retry_after_beyond_the_budget_ends_the_retries(
    proxied_client: Client, proxy: FaultProxy, sleeps: list[float]
) -> None:
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    proxy.inject("GET", "/checkpoint", status=503, retry_after="3600")
    with pytest.raises(ServerError):
        session.checkpoint()
    assert len(proxy.requests("GET", "/checkpoint")) == 1
    assert sleeps == []


def test_a_retry_after_longer_than_max_delay_is_honoured_within_the_budget(
    proxied_client: Client, proxy: FaultProxy, sleeps: list[float]
) -> None:
    assert proxied_client.retry.max_delay < 7 < proxied_client.retry.budget
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    proxy.inject("GET", "/checkpoint", status=503, retry_after="7")
    session.checkpoint()
    assert len(proxy.requests("GET", "/checkpoint")) == 2
    assert sleeps == [7.0]


def test_an_unreachable_service_raises_after_every_attempt(transport: Transport) -> None:
    sleeps: list[float] = []
    retry = RetryPolicy(attempts=3, base_delay=0.01, jitter=False, sleep=sleeps.append)
    client = Client(f"http://127.0.0.1:{free_port()}", transport=transport, retry=retry)
    with client, pytest.raises(ServiceUnreachableError) as raised:
        Session.create(client, optimizer="rprop", params={"x": 1.0})
    assert raised.value.attempts == 3
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert sleeps == [0.01, 0.02]


def test_an_unreachable_service_is_retried_until_the_budget_is_spent(transport: Transport) -> None:
    clock = FakeClock()
    retry = RetryPolicy(budget=10.0, base_delay=1.0, max_delay=4.0, jitter=False, sleep=clock.sleep, clock=clock.now)
    client = Client(f"http://127.0.0.1:{free_port()}", transport=transport, retry=retry)
    with client, pytest.raises(ServiceUnreachableError) as raised:
        Session.create(client, optimizer="rprop", params={"x": 1.0})
    # 1, 2 and 4 s: the next wait (4 s, the cap) would end 11 s after the first attempt, past the budget.
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert raised.value.attempts == 4
    assert not raised.value.maybe_applied, "no connection was ever made"


def _session_ids(service: httpx.Client) -> set[str]:
    return {item["id"] for item in service.get("/v1/sessions", params={"limit": 1000}).json()["items"]}


def test_a_creation_whose_response_is_lost_is_retried_with_the_same_key_and_makes_one_session(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client
) -> None:
    before = _session_ids(service)
    proxy.inject("POST", "/v1/sessions", drop_response=True)
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    first, retry = proxy.requests("POST", "/v1/sessions")
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"]
    assert first.body == retry.body
    assert _session_ids(service) - before == {session.id}


def test_a_creation_whose_every_answer_is_lost_says_which_key_finds_the_session_it_may_have_made(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client
) -> None:
    before = _session_ids(service)
    proxy.inject("POST", "/v1/sessions", drop_response=True, times=4)
    params = initial_params("float32")
    with pytest.raises(ServiceUnreachableError, match="A session may have been created") as raised:
        Session.create(proxied_client, optimizer="rprop", params=params)
    assert raised.value.maybe_applied
    key = proxy.requests("POST", "/v1/sessions")[0].headers["idempotency-key"]
    assert repr(key) in str(raised.value)

    session = Session.create(proxied_client, optimizer="rprop", params=params, idempotency_key=key)

    assert _session_ids(service) - before == {session.id}, "the same call with the key found the session it made"


def test_creation_is_retried_when_the_service_answers_503(
    proxied_client: Client, proxy: FaultProxy, sleeps: list[float]
) -> None:
    proxy.inject("POST", "/v1/sessions", status=503)
    Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"), hyperparameters=RPROP)
    assert len(proxy.requests("POST", "/v1/sessions")) == 2
    assert sleeps == [0.01]


def test_a_creation_answered_500_is_retried_with_the_same_key(proxied_client: Client, proxy: FaultProxy) -> None:
    proxy.inject("POST", "/v1/sessions", status=500)
    Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    first, retry = proxy.requests("POST", "/v1/sessions")
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"]


def test_a_delete_whose_response_is_lost_is_retried_and_counts_as_done(
    proxied_client: Client, proxy: FaultProxy
) -> None:
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float32"))
    proxy.inject("DELETE", session.url, drop_response=True)
    session.delete()  # the retry finds it gone: 404, which is what was wanted
    assert len(proxy.requests("DELETE")) == 2
    with pytest.raises(NotFoundError):
        session.refresh()
