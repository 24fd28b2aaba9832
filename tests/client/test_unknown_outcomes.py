"""A step is never applied twice, whatever the caller does after a failure.

Every step carries If-Match with the ETag of the session's last answer. A step whose outcome is unknown
(every attempt's answer lost, or a 5xx) stays pending: the session's next change sends it again with
its Idempotency-Key and If-Match, so it is applied exactly once, and a ``step()`` with the same grads
is that retry rather than a step of its own. A 412 says whether the step was applied, or that this
cannot be told. Faults come from a proxy in front of a real server; the numbers are optim_core's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from optim_client import (
    Client,
    RemoteRMSprop,
    ResponseExpiredError,
    RetryPolicy,
    ServerError,
    ServiceUnreachableError,
    Session,
    StepConflictError,
)
from optim_client.transports import Transport
from tests.client.conftest import FAST_RETRY, Server
from tests.client.fault_proxy import FaultProxy
from tests.client.reference import RMSPROP, assert_same_bits, core_optimizer, grads_sequence, initial_params
from tests.client.torch_models import assert_same_params, batches, make_model, tolerances, train_step, twin
from tests.e2e.server_process import (
    ServerFactory,
    ServerProcess,
    # the server_factory fixture
    server_factory_fixture,  # noqa: F401
)

Grads = dict[str, np.ndarray]
ATTEMPTS = 4
"""The attempts of the proxied client (conftest.py): a fault injected this many times fails the call."""


def lose_every_answer(proxy: FaultProxy) -> None:
    """The next step reaches the service on every attempt, and no answer comes back: it is applied, unseen."""
    proxy.inject("POST", "/step", drop_response=True, times=ATTEMPTS)


def answer_503_every_time(proxy: FaultProxy) -> None:
    """The next step never reaches the service; every attempt is answered 503, which may follow a commit."""
    proxy.inject("POST", "/step", status=503, times=ATTEMPTS)


@contextmanager
def a_step_applied_and_every_answer_lost(server: ServerProcess) -> Iterator[tuple[Client, Session, Grads]]:
    """A client of ``server`` through a proxy; a session of it whose first step was applied and every answer
    to it lost; and grads for another step."""
    with FaultProxy(server.base_url) as proxy, Client(proxy.url, retry=FAST_RETRY) as client:
        session = Session.create(client, optimizer="rmsprop", params=initial_params("float32"))
        first, second = grads_sequence(2, "float32")
        lose_every_answer(proxy)
        with pytest.raises(ServiceUnreachableError):
            session.step(first)
        yield client, session, second


def server_step(service: httpx.Client, session: Session) -> int:
    step: int = service.get(session.url).json()["step"]
    return step


def test_every_step_carries_if_match_with_the_etag_of_the_answer_before_it(
    proxied_client: Client, proxy: FaultProxy
) -> None:
    session = Session.create(proxied_client, optimizer="rmsprop", params=initial_params("float32"))
    first, second, third, fourth = grads_sequence(4, "float32")
    session.step(first)
    session.update(hyperparameters={"lr": 0.05})
    session.step(second)
    session.load_state_dict(session.state_dict())
    session.step(third)
    session.params()
    session.checkpoint()
    Session.open(proxied_client, session.id).step(fourth)
    session.refresh()
    session.step(fourth)

    steps = [index for index, seen in enumerate(proxy.seen) if seen.path.endswith("/step")]
    assert len(steps) == 5
    for index in steps:
        assert proxy.seen[index].headers["if-match"] == proxy.answers[index - 1].headers["etag"], proxy.seen[index]
    assert len({proxy.seen[index].headers["if-match"] for index in steps}) == 5


@pytest.mark.parametrize("fault", [lose_every_answer, answer_503_every_time])
def test_a_step_whose_outcome_is_unknown_raises_saying_so_and_stays_pending(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client, fault: Any
) -> None:
    session = Session.create(proxied_client, optimizer="rmsprop", params=initial_params("float32"))
    [grads] = grads_sequence(1, "float32")
    fault(proxy)

    with pytest.raises((ServiceUnreachableError, ServerError)) as raised:
        session.step(grads)

    assert raised.value.maybe_applied
    assert "The step may have been applied" in str(raised.value)
    assert "resolve_pending()" in str(raised.value)
    attempts = proxy.requests("POST", "/step")
    assert len(attempts) == ATTEMPTS
    assert session.pending_key == attempts[0].headers["idempotency-key"]
    assert session.step_count == 0, "the session does not claim what it does not know"


@pytest.mark.parametrize("fault", [lose_every_answer, answer_503_every_time])
@pytest.mark.parametrize("next_grads", ["the same grads", "new grads"])
def test_the_next_step_after_an_unknown_outcome_finishes_the_pending_one_exactly_once(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client, fault: Any, next_grads: str
) -> None:
    params = initial_params("float32")
    session = Session.create(proxied_client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
    first, second = grads_sequence(2, "float32")
    fault(proxy)
    with pytest.raises((ServiceUnreachableError, ServerError)):
        session.step(first)
    pending = proxy.requests("POST", "/step")[0]

    got = session.step(first if next_grads == "the same grads" else second)

    applied = [first] if next_grads == "the same grads" else [first, second]
    reference = core_optimizer("rmsprop", params, RMSPROP)
    for grads in applied:
        reference.step(grads)
    assert_same_bits(got, reference.params)
    assert server_step(service, session) == session.step_count == len(applied)
    assert session.pending_key is None
    sent = proxy.requests("POST", "/step")[ATTEMPTS:]
    assert [seen.headers["idempotency-key"] for seen in sent[:1]] == [pending.headers["idempotency-key"]]
    assert (sent[0].body, sent[0].headers["if-match"]) == (pending.body, pending.headers["if-match"])
    assert len(sent) == len(applied)


def test_resolve_pending_finishes_the_pending_step_and_returns_its_params(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client
) -> None:
    params = initial_params("float64")
    session = Session.create(proxied_client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
    [grads] = grads_sequence(1, "float64")
    lose_every_answer(proxy)
    with pytest.raises(ServiceUnreachableError):
        session.step(grads)

    got = session.resolve_pending()

    reference = core_optimizer("rmsprop", params, RMSPROP)
    reference.step(grads)
    assert got is not None
    assert_same_bits(got, reference.params)
    assert session.resolve_pending() is None
    assert server_step(service, session) == session.step_count == 1


def test_a_pending_step_is_finished_before_a_hyperparameter_change_under_the_hyperparameters_it_was_sent_with(
    proxied_client: Client, proxy: FaultProxy
) -> None:
    params = initial_params("float32")
    session = Session.create(proxied_client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
    first, second = grads_sequence(2, "float32")
    answer_503_every_time(proxy)
    with pytest.raises(ServerError):
        session.step(first)

    session.update(hyperparameters={"lr": 0.5})
    got = session.step(second)

    reference = core_optimizer("rmsprop", params, RMSPROP)
    reference.step(first)
    for group in reference.param_groups:
        group["lr"] = 0.5
    reference.step(second)
    assert_same_bits(got, reference.params)


def test_a_step_on_a_session_another_client_changed_is_412_not_applied_and_the_next_step_applies(
    client: Client, service: httpx.Client
) -> None:
    params = initial_params("float32")
    ours = Session.create(client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
    theirs = Session.open(client, ours.id)
    first, second = grads_sequence(2, "float32")
    theirs.step(first)

    with pytest.raises(StepConflictError) as raised:
        ours.step(second)

    conflict = raised.value
    assert (conflict.status, conflict.applied) == (412, False)
    assert (conflict.expected_step, conflict.step) == (0, 1)
    assert "The step was not applied" in str(conflict)
    assert server_step(service, ours) == ours.step_count == 1
    got = ours.step(second)
    reference = core_optimizer("rmsprop", params, RMSPROP)
    reference.step(first)
    reference.step(second)
    assert_same_bits(got, reference.params)


def test_a_pending_step_sent_before_another_clients_change_is_412_and_certainly_not_applied(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client
) -> None:
    session = Session.create(proxied_client, optimizer="rmsprop", params=initial_params("float32"))
    first, second = grads_sequence(2, "float32")
    answer_503_every_time(proxy)
    with pytest.raises(ServerError):
        session.step(first)
    Session.open(proxied_client, session.id).update(hyperparameters={"lr": 0.5})

    with pytest.raises(StepConflictError) as raised:
        session.step(second)

    assert raised.value.applied is False
    assert "no step was applied since it was sent" in str(raised.value)
    assert session.pending_key is None
    assert server_step(service, session) == 0, "neither the pending step nor the new one"
    session.step(second)
    assert server_step(service, session) == 1


def test_a_pending_step_whose_key_the_service_forgot_is_refused_not_applied_again_and_says_it_may_have_been(
    server_factory: ServerFactory,
) -> None:
    ttl = 0.5
    server = server_factory(
        env={"OPTIM_IDEMPOTENCY_KEY_TTL_SECONDS": str(ttl), "OPTIM_IDEMPOTENCY_SWEEP_SECONDS": "0.1"}
    )
    with a_step_applied_and_every_answer_lost(server) as (_, session, second):
        time.sleep(ttl + 1.0)  # the service forgets the key

        with pytest.raises(StepConflictError) as raised:
            session.step(second)

        conflict = raised.value
        assert conflict.applied is None
        assert "Whether the step was applied cannot be told" in str(conflict)
        assert "one step and one version on" in str(conflict)
        assert (conflict.expected_step, conflict.step) == (0, 1)
        assert session.pending_key is None
        assert session.refresh()["step"] == 1, "the pending step was applied once, and the new one not sent"


def test_a_pending_step_whose_answer_the_service_no_longer_keeps_raises_saying_it_was_applied(
    server_factory: ServerFactory,
) -> None:
    # Only the newest answer of a session is kept: another client's step drops the pending step's.
    server = server_factory(env={"OPTIM_IDEMPOTENCY_RESPONSE_BYTES_KEPT": "0"})
    with a_step_applied_and_every_answer_lost(server) as (client, session, second):
        Session.open(client, session.id).step(second)

        with pytest.raises(ResponseExpiredError) as raised:
            session.resolve_pending()

        assert raised.value.status == 409
        assert "The step was applied" in str(raised.value)
        assert session.pending_key is None
        assert session.step_count == 2, "the session read where it is now"
        session.step(second)
        assert session.refresh()["step"] == 3


def test_a_torch_step_repeated_after_an_unknown_outcome_is_applied_once_as_torch_applies_it(
    server: Server, transport: Transport
) -> None:
    remote_model = make_model()
    local_model = twin(remote_model)
    local = torch.optim.RMSprop(local_model.parameters(), lr=0.01, momentum=0.9)
    sleeps: list[float] = []
    retry = RetryPolicy(attempts=ATTEMPTS, base_delay=0.01, jitter=False, sleep=sleeps.append)
    with FaultProxy(server.base_url) as proxy, Client(proxy.url, transport=transport, retry=retry) as client:
        remote = RemoteRMSprop(remote_model.named_parameters(), client=client, lr=0.01, momentum=0.9)
        (x, y), (x2, y2) = batches(2)
        lose_every_answer(proxy)
        with pytest.raises(ServiceUnreachableError):
            train_step(remote_model, remote, x, y)
        remote.param_groups[0]["lr"] = 0.1  # changed after the failed step: it applies from the next one

        remote.step()  # the same .grad: the retry of the step that failed
        train_step(remote_model, remote, x2, y2)

        train_step(local_model, local, x, y)
        local.param_groups[0]["lr"] = 0.1
        train_step(local_model, local, x2, y2)
        assert remote.session.refresh()["step"] == 2
    assert_same_params(remote_model, local_model, *tolerances("rmsprop", torch.float32))


def test_a_torch_optimizer_whose_session_another_client_stepped_raises_412_and_takes_the_services_values(
    client: Client,
) -> None:
    model = make_model()
    remote = RemoteRMSprop(model.named_parameters(), client=client, lr=0.01)
    [(x, y)] = batches(1)
    Session.open(client, remote.session.id).step(
        {name: np.ones(tuple(value.shape)) for name, value in model.state_dict().items()}
    )

    with pytest.raises(StepConflictError) as raised:
        train_step(model, remote, x, y)

    assert raised.value.applied is False
    held = remote.session.params()
    for name, value in model.named_parameters():
        assert value.detach().numpy().tobytes() == held[name].tobytes()
