"""Data-parallel training through the SDK: workers attach to one aggregating session, and each step() is a
contribution. Real server processes (SQLite, and PostgreSQL when configured), both transports; the numbers are
compared with torch.optim.Rprop on the documented reduction, and with what the server holds, read over plain HTTP.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from optim_client import RemoteRMSprop, RemoteRprop, RoundMovedOnError
from optim_client.transports import Transport
from tests.client.aggregation import (
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
    wait_until,
)
from tests.client.conftest import Server
from tests.client.fault_proxy import FaultProxy
from tests.client.reference import assert_same_bits
from tests.client.torch_models import batches, make_model, twin
from tests.in_a_thread import in_a_thread

SYNC_ONE = {"mode": "sync", "workers": 1}
"""A round closes with each contribution: one worker moves the session on alone."""


def test_a_session_created_with_aggregation_shows_it(round_server: Server, transport: Transport) -> None:
    with connect(round_server, transport) as client:
        creator = aggregating_optimizer(client, make_model(), mode="sync", workers=3, min_workers=2, timeout_s=5)
        aggregation = creator.session.aggregation
        reopened = RemoteRprop.attach(client, creator.session.id, make_model().named_parameters(), worker="w0")

    assert aggregation is not None
    assert {key: aggregation[key] for key in ("mode", "workers", "min_workers", "timeout_s")} == {
        "mode": "sync",
        "workers": 3,
        "min_workers": 2,
        "timeout_s": 5,
    }
    assert reopened.session.aggregation == aggregation


def test_attach_writes_the_sessions_params_into_the_model_and_bases_the_next_contribution_on_their_step(
    round_server: Server, transport: Transport
) -> None:
    with connect(round_server, transport) as client:
        creator = aggregating_optimizer(client, make_model(), **SYNC_ONE)
        mover_model = make_model()
        mover = RemoteRprop.attach(client, creator.session.id, mover_model.named_parameters(), worker="mover")
        for x, y in batches(2):
            backward(mover_model, x, y)
            mover.step()
        model = make_model(seed=7)
        attached = RemoteRprop.attach(client, creator.session.id, model.named_parameters(), worker="late")

    step, params = service_params(round_server, creator.session.id)
    assert step == 2
    assert attached.based_on_step == 2
    assert_same_bits(model_params(model), params)
    assert_same_bits(model_params(mover_model), params)


def test_attach_refuses_params_unlike_the_sessions_and_writes_nothing(
    round_server: Server, transport: Transport
) -> None:
    other_names = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    other_shapes = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    other_dtype = make_model(dtype=torch.float64)
    with connect(round_server, transport) as client:
        session_id = aggregating_optimizer(client, make_model(), **SYNC_ONE).session.id
        for model, message in [
            (other_names, "the session has 4 params"),
            (other_shapes, "param '0.weight' has shape"),
            (other_dtype, "the session's params are float32"),
        ]:
            before = model_params(model)
            with pytest.raises(ValueError, match=message):
                RemoteRprop.attach(client, session_id, model.named_parameters(), worker="w0")
            assert_same_bits(model_params(model), before)


def test_attach_needs_a_worker_of_an_aggregating_session_and_refuses_one_for_an_ordinary_session(
    round_server: Server, transport: Transport
) -> None:
    with connect(round_server, transport) as client:
        aggregating = aggregating_optimizer(client, make_model(), **SYNC_ONE).session.id
        ordinary_model = make_model()
        ordinary = RemoteRprop(ordinary_model.named_parameters(), client=client).session.id

        with pytest.raises(ValueError, match="attach with worker="):
            RemoteRprop.attach(client, aggregating, make_model().named_parameters())
        with pytest.raises(ValueError, match="Invalid worker"):
            RemoteRprop.attach(client, aggregating, make_model().named_parameters(), worker="rank 3")
        with pytest.raises(ValueError, match="cannot attach"):
            RemoteRMSprop.attach(client, aggregating, make_model().named_parameters(), worker="w0")
        with pytest.raises(ValueError, match="ordinary session"):
            RemoteRprop.attach(client, ordinary, make_model().named_parameters(), worker="w0")

        # Without a worker, attaching to an ordinary session takes it up where it is: every step is a step.
        model = make_model(seed=3)
        resumed = RemoteRprop.attach(client, ordinary, model.named_parameters())
        backward(model, *batches(1)[0])
        resumed.step()
    assert resumed.based_on_step == 1
    assert_same_bits(model_params(model), service_params(round_server, ordinary)[1])


def test_workers_of_a_synchronous_session_step_together_on_the_weighted_mean_of_their_gradients(
    round_server: Server, transport: Transport
) -> None:
    rounds = 3
    initial = make_model()
    weights = {"w0": 1, "w1": 2.5, "w2": 4}
    data = {worker: batches(1, seed=10 + rank)[0] for rank, worker in enumerate(weights)}
    with connect(round_server, transport) as client:
        session_id = aggregating_optimizer(client, twin(initial), mode="sync", workers=len(weights)).session.id

    def work(worker: str) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray], int]:
        model = make_model(seed=99)
        sent = []
        with connect(round_server, transport) as client:
            optimizer = RemoteRprop.attach(
                client, session_id, model.named_parameters(), worker=worker, weight=weights[worker]
            )
            for _ in range(rounds):
                sent.append(backward(model, *data[worker]))
                optimizer.step()
        assert optimizer.last_metrics is not None
        assert optimizer.last_metrics["round"] == {
            "contributors": len(weights),
            "total_weight": sum(weights.values()),
            "wait_s": optimizer.last_metrics["round"]["wait_s"],
        }
        return sent, model_params(model), optimizer.based_on_step

    running = {worker: in_a_thread(functools.partial(work, worker)) for worker in weights}
    outcomes = {worker: finished(thread) for worker, thread in running.items()}

    step, params = service_params(round_server, session_id)
    assert step == rounds
    for _, final, based_on_step in outcomes.values():
        assert based_on_step == rounds
        assert_same_bits(final, params)
    means = [
        documented_mean({worker: (weights[worker], outcome[0][index]) for worker, outcome in outcomes.items()})
        for index in range(rounds)
    ]
    assert_same_bits(params, torch_replay(twin(initial), means))


def test_a_contribution_whose_round_stays_open_is_answered_202_and_follows_the_round_until_it_closes(
    round_server: Server, transport: Transport
) -> None:
    initial = make_model()
    with FaultProxy(round_server.base_url) as proxy, connect(proxy.url, transport) as early_client:
        session_id = aggregating_optimizer(early_client, twin(initial), mode="sync", workers=2).session.id
        early_model, late_model = make_model(seed=1), make_model(seed=2)
        early = RemoteRprop.attach(early_client, session_id, early_model.named_parameters(), worker="early")
        with connect(round_server, transport) as late_client:
            late = RemoteRprop.attach(late_client, session_id, late_model.named_parameters(), worker="late")
            (x0, y0), (x1, y1) = batches(2)
            early_grads, late_grads = backward(early_model, x0, y0), backward(late_model, x1, y1)

            early_step = in_a_thread(early.step)
            wait_until(lambda: any(answer.status == 202 for answer in proxy.answers), "a 202 to the early worker")
            assert service_step(round_server, session_id) == 0
            late.step()
            finished(early_step)

        [accepted] = [answer for answer in proxy.answers if answer.status == 202 and answer.method == "POST"]
        polls = proxy.requests("GET", f"/v1/sessions/{session_id}/rounds/0")

    assert accepted.headers["location"] == f"/v1/sessions/{session_id}/rounds/0"
    assert polls
    step, params = service_params(round_server, session_id)
    assert step == early.based_on_step == late.based_on_step == 1
    assert_same_bits(model_params(early_model), params)
    assert_same_bits(model_params(late_model), params)
    assert_same_bits(
        params, torch_replay(twin(initial), [documented_mean({"early": (1, early_grads), "late": (1, late_grads)})])
    )
    assert early.last_metrics is not None
    assert early.last_metrics["round"]["contributors"] == 2


def test_a_contribution_to_a_round_that_closed_without_it_raises_round_moved_on_and_brings_the_params_up_to_date(
    round_server: Server, transport: Transport
) -> None:
    with connect(round_server, transport) as client:
        session_id = aggregating_optimizer(client, make_model(), **SYNC_ONE).session.id
        fast_model, slow_model = make_model(seed=1), make_model(seed=2)
        fast = RemoteRprop.attach(client, session_id, fast_model.named_parameters(), worker="fast")
        slow = RemoteRprop.attach(client, session_id, slow_model.named_parameters(), worker="slow")
        (x0, y0), (x1, y1) = batches(2)
        backward(fast_model, x0, y0)
        fast.step()
        backward(slow_model, x1, y1)

        with pytest.raises(RoundMovedOnError) as refused:
            slow.step()

        assert refused.value.current_step == 1
        assert service_step(round_server, session_id) == 1  # nothing stored, nothing applied
        assert slow.based_on_step == 1
        assert_same_bits(model_params(slow_model), service_params(round_server, session_id)[1])
        assert slow.session.pending_key is None

        backward(slow_model, x1, y1)  # the gradient again, on the params of step 1
        slow.step()
    assert slow.based_on_step == 2
    assert_same_bits(model_params(slow_model), service_params(round_server, session_id)[1])


def test_an_asynchronous_session_applies_each_contribution_and_tells_its_staleness(
    round_server: Server, transport: Transport
) -> None:
    initial = make_model()
    with connect(round_server, transport) as client:
        session_id = aggregating_optimizer(
            client, twin(initial), mode="async", max_staleness=1, staleness_weighting="none"
        ).session.id
        models = {worker: make_model(seed=5) for worker in ("a", "b")}
        workers = {
            worker: RemoteRprop.attach(client, session_id, model.named_parameters(), worker=worker)
            for worker, model in models.items()
        }
        data = batches(5)
        applied: list[dict[str, np.ndarray]] = []
        staleness = []
        for index, worker in enumerate(["a", "b", "a", "a"]):
            applied.append(backward(models[worker], *data[index]))
            workers[worker].step()
            staleness.append(workers[worker].last_staleness)
        step_before = service_step(round_server, session_id)
        backward(models["b"], *data[4])  # on the params of step 2, and the session is at 4

        with pytest.raises(RoundMovedOnError) as refused:
            workers["b"].step()

    assert staleness == [0, 1, 1, 0]
    assert step_before == 4
    assert refused.value.current_step == 4
    assert workers["b"].based_on_step == 4
    step, params = service_params(round_server, session_id)
    assert step == 4
    assert_same_bits(model_params(models["b"]), params)
    assert_same_bits(params, torch_replay(twin(initial), applied))


def test_an_optimizer_that_made_an_aggregating_session_does_not_step_it_itself(
    round_server: Server, transport: Transport
) -> None:
    model = make_model()
    with connect(round_server, transport) as client:
        creator = aggregating_optimizer(client, model, **SYNC_ONE)
        backward(model, *batches(1)[0])
        with pytest.raises(ValueError, match="attach"):
            creator.step()
    assert service_step(round_server, creator.session.id) == 0


def test_a_checkpoint_of_an_aggregating_session_restores_one_that_aggregates_alike(
    round_server: Server, transport: Transport
) -> None:
    with connect(round_server, transport) as client:
        creator = aggregating_optimizer(client, make_model(), mode="async", max_staleness=3)
        restored = RemoteRprop.restore(client, creator.checkpoint(), make_model(seed=4).named_parameters())
    assert creator.session.aggregation is not None
    assert restored.session.aggregation == creator.session.aggregation
