"""A contribution counts once, whatever befalls the worker that sent it: a lost answer, a restart, a round that
outlasts the client's patience. Real server processes, a proxy that loses answers, both transports."""

from __future__ import annotations

import pytest

from optim_client import (
    RemoteRprop,
    ResponseExpiredError,
    RetryPolicy,
    RoundTimeoutError,
    ServerError,
    ServiceUnreachableError,
    Session,
)
from optim_client.transports import Transport
from tests.client.aggregation import (
    ROUND_WAIT_SECONDS,
    aggregating_optimizer,
    backward,
    connect,
    documented_mean,
    finished,
    model_params,
    # the round_server fixture
    round_server_fixture,  # noqa: F401
    service_params,
    service_step,
    torch_replay,
)
from tests.client.conftest import Server
from tests.client.fault_proxy import FaultProxy
from tests.client.reference import assert_same_bits, grads_sequence, initial_params
from tests.client.torch_models import batches, make_model, twin
from tests.e2e.server_process import (
    ServerFactory,
    # the server_factory fixture
    server_factory_fixture,  # noqa: F401
)
from tests.in_a_thread import in_a_thread

ONE_ATTEMPT = RetryPolicy(attempts=1)


def test_a_worker_restarted_after_sending_sends_its_contribution_again_and_it_counts_once(
    round_server: Server, transport: Transport
) -> None:
    initial = make_model()
    (x0, y0), (x1, y1) = batches(2)
    with FaultProxy(round_server.base_url) as proxy, connect(proxy.url, transport, retry=ONE_ATTEMPT) as lost:
        session_id = aggregating_optimizer(lost, twin(initial), mode="sync", workers=2).session.id
        first_model = make_model(seed=1)
        first = RemoteRprop.attach(lost, session_id, first_model.named_parameters(), worker="w0")
        sent = backward(first_model, x0, y0)
        proxy.inject("POST", "/step", drop_response=True)
        with pytest.raises(ServiceUnreachableError) as failure:
            first.step()  # stored, and the process dies before it hears of it
        assert failure.value.maybe_applied
        assert first.session.pending_key is not None

        with connect(round_server, transport) as client:
            restarted_model = make_model(seed=9)
            restarted = RemoteRprop.attach(client, session_id, restarted_model.named_parameters(), worker="w0")
            assert restarted.based_on_step == 0  # the round is still open
            assert_same_bits(backward(restarted_model, x0, y0), sent)
            resent = in_a_thread(restarted.step)

            other_model = make_model(seed=2)
            other = RemoteRprop.attach(client, session_id, other_model.named_parameters(), worker="w1")
            other_grads = backward(other_model, x1, y1)
            other.step()
            finished(resent)
        assert first.resolve_pending()

    step, params = service_params(round_server, session_id)
    assert step == 1
    for model in (first_model, restarted_model, other_model):
        assert_same_bits(model_params(model), params)
    for optimizer in (first, restarted, other):
        assert optimizer.last_metrics is not None
        assert optimizer.last_metrics["round"]["contributors"] == 2
        assert optimizer.last_metrics["round"]["total_weight"] == 2
    assert_same_bits(params, torch_replay(twin(initial), [documented_mean({"w0": (1, sent), "w1": (1, other_grads)})]))


def test_a_contribution_whose_round_outlasts_the_clients_round_timeout_stays_pending_and_its_retry_finishes_it(
    round_server: Server, transport: Transport
) -> None:
    with connect(round_server, transport, round_timeout=0) as impatient, connect(round_server, transport) as client:
        session_id = aggregating_optimizer(client, make_model(), mode="sync", workers=2).session.id
        early_model, late_model = make_model(seed=1), make_model(seed=2)
        early = RemoteRprop.attach(impatient, session_id, early_model.named_parameters(), worker="early")
        late = RemoteRprop.attach(client, session_id, late_model.named_parameters(), worker="late")
        (x0, y0), (x1, y1) = batches(2)
        backward(early_model, x0, y0)
        with pytest.raises(RoundTimeoutError) as waited:
            early.step()
        assert (waited.value.round, waited.value.contributions, waited.value.workers) == (0, 1, 2)
        assert early.session.pending_key is not None
        assert early.based_on_step == 0

        backward(late_model, x1, y1)
        late.step()
        early.step()  # the same .grad: the retry of the pending contribution, which the closed round answers

    step, params = service_params(round_server, session_id)
    assert step == early.based_on_step == late.based_on_step == 1
    assert early.session.pending_key is None
    assert_same_bits(model_params(early_model), params)
    assert early.last_metrics is not None
    assert early.last_metrics["round"]["contributors"] == 2


def test_a_contribution_whose_round_cannot_be_followed_stays_pending_and_is_finished_once_it_can(
    round_server: Server, transport: Transport
) -> None:
    with FaultProxy(round_server.base_url) as proxy, connect(proxy.url, transport) as proxied:
        session_id = aggregating_optimizer(proxied, make_model(), mode="sync", workers=2).session.id
        early_model, late_model = make_model(seed=1), make_model(seed=2)
        early = RemoteRprop.attach(proxied, session_id, early_model.named_parameters(), worker="early")
        (x0, y0), (x1, y1) = batches(2)
        backward(early_model, x0, y0)
        proxy.inject("GET", "/rounds/0", status=503, times=4)
        with pytest.raises(ServerError) as failure:
            early.step()  # stored (202), and every poll of its round fails
        assert failure.value.maybe_applied
        assert early.session.pending_key is not None

        with connect(round_server, transport) as client:
            late = RemoteRprop.attach(client, session_id, late_model.named_parameters(), worker="late")
            backward(late_model, x1, y1)
            late.step()
        assert early.resolve_pending()

    step, params = service_params(round_server, session_id)
    assert step == early.based_on_step == 1
    assert early.session.pending_key is None
    assert_same_bits(model_params(early_model), params)
    assert_same_bits(model_params(late_model), params)


def test_a_pending_contribution_whose_rounds_answer_is_gone_brings_the_params_up_to_date(
    server_factory: ServerFactory, transport: Transport
) -> None:
    server = server_factory(
        env={"OPTIM_ROUND_WAIT_SECONDS": ROUND_WAIT_SECONDS, "OPTIM_IDEMPOTENCY_RESPONSE_COPY_MAX_BYTES": "0"}
    )
    with (
        connect(server.base_url, transport, round_timeout=0) as impatient,
        connect(server.base_url, transport) as client,
    ):
        session_id = aggregating_optimizer(client, make_model(), mode="sync", workers=2).session.id
        a_model, b_model, c_model = make_model(seed=1), make_model(seed=2), make_model(seed=3)
        a = RemoteRprop.attach(impatient, session_id, a_model.named_parameters(), worker="a")
        b = RemoteRprop.attach(client, session_id, b_model.named_parameters(), worker="b")
        data = batches(4)
        # Round 0: a's contribution is stored, a stops waiting, and b's closes the round.
        backward(a_model, *data[0])
        with pytest.raises(RoundTimeoutError):
            a.step()
        backward(b_model, *data[1])
        b.step()
        # Round 1: b and c close it, and the session's params are no longer round 0's answer.
        c = RemoteRprop.attach(client, session_id, c_model.named_parameters(), worker="c")
        backward(b_model, *data[2])
        b_in_round_1 = in_a_thread(b.step)
        backward(c_model, *data[3])
        c.step()
        finished(b_in_round_1)

        with pytest.raises(ResponseExpiredError, match="The contribution was applied"):
            a.step()  # its retry: round 0 closed with it, and the session's params have moved on since

    step, params = service_params(Server(server.base_url), session_id)
    assert step == 2
    assert a.based_on_step == 2
    assert a.session.pending_key is None
    assert_same_bits(model_params(a_model), params)


def test_the_same_contribution_sent_twice_to_an_asynchronous_session_is_applied_once(
    round_server: Server, transport: Transport
) -> None:
    [grads] = grads_sequence(1, "float32")
    with connect(round_server, transport) as client:
        session = Session.create(
            client, optimizer="rprop", params=initial_params("float32"), aggregation={"mode": "async"}
        )
        first = session.contribute(grads, worker="w0", based_on_step=0, weight=8)
        again = Session.open(client, session.id).contribute(grads, worker="w0", based_on_step=0, weight=8)

    assert service_step(round_server, session.id) == 1
    assert session.step_count == 1
    assert_same_bits(again, first)


def test_worker_names_that_read_as_json_values_travel_as_names(round_server: Server, transport: Transport) -> None:
    # A safetensors body carries its fields as JSON text: the name "null" is sent as "\"null\"", not as null.
    [grads] = grads_sequence(1, "float32")
    names = ["null", "true", "1e3", "007", "12"]
    with connect(round_server, transport) as client:
        session = Session.create(
            client, optimizer="rprop", params=initial_params("float32"), aggregation={"mode": "async"}
        )
        for step, worker in enumerate(names):
            session.contribute(grads, worker=worker, based_on_step=step)
    assert service_step(round_server, session.id) == len(names)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"worker": "", "based_on_step": 0}, "Invalid worker"),
        ({"worker": "w" * 65, "based_on_step": 0}, "Invalid worker"),
        ({"worker": "w0", "based_on_step": -1}, "Invalid based_on_step"),
        ({"worker": "w0", "based_on_step": 0, "weight": 0}, "Invalid weight"),
        ({"worker": "w0", "based_on_step": 0, "weight": float("inf")}, "Invalid weight"),
        ({"worker": "w0", "based_on_step": 0, "weight": 2e15}, "Invalid weight"),
    ],
)
def test_a_contribution_the_service_would_refuse_is_refused_before_it_is_sent(
    round_server: Server, transport: Transport, fields: dict[str, object], message: str
) -> None:
    [grads] = grads_sequence(1, "float32")
    with connect(round_server, transport) as client:
        session = Session.create(
            client, optimizer="rprop", params=initial_params("float32"), aggregation={"mode": "async"}
        )
        with pytest.raises(ValueError, match=message):
            session.contribute(grads, **fields)  # type: ignore[arg-type]
    assert service_step(round_server, session.id) == 0
