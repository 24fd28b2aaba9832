"""Aggregating sessions in-process: the reduction's numbers, retries by worker, the rounds resource,
refusals of stale contributions, and aggregation in the summary and the checkpoint
(docs/api.md, "Data-parallel training")."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.aggregation import (
    ASYNC,
    ROUND_WAIT_SECONDS,
    SYNC,
    contribute_json,
    contribute_safetensors,
    create,
    open_round,
    params,
    round_state,
    summary,
)
from tests.api.conftest import ClientFactory, assert_problem, ok, send, strict_json
from tests.e2e.data_parallel.reduction import Contribution, weighted_mean
from tests.optimizers import core_optimizer

HYPERPARAMETERS = {"lr": 0.01, "momentum": 0.9, "centered": True}
SHAPES = {"w": (8, 8), "b": (8,), "s": ()}


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client(round_wait_seconds=ROUND_WAIT_SECONDS)


def _arrays(rng: np.random.Generator, dtype: str) -> dict[str, np.ndarray]:
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def _post(client: TestClient, session_id: str, body: dict[str, Any], **headers: str) -> Any:
    return send(client, "POST", f"/v1/sessions/{session_id}/step", body, headers=headers)


def _contribution(grads: dict[str, np.ndarray], worker: str, based_on_step: int, weight: float) -> dict[str, Any]:
    return {
        "grads": {name: value.tolist() for name, value in grads.items()},
        "worker": worker,
        "based_on_step": based_on_step,
        "weight": weight,
    }


def _round_not_found(response: Any) -> None:
    assert assert_problem(response, 404)["type"].endswith("round-not-found"), response.text


def _problem_moved_on(response: Any, current_step: int) -> None:
    problem = assert_problem(response, 409)
    assert problem["type"].endswith("round-moved-on"), problem
    assert problem["current_step"] == current_step, problem


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_round_steps_once_with_the_weighted_mean_in_worker_order_over_those_who_sent_each_param(
    make_client: ClientFactory, dtype: str
) -> None:
    """Three workers; "b" comes from two of them, "s" from none (skipped: no state, as in a step).
    In float64 the order of the additions shows in the bits, and the test checks that it does."""
    client = make_client(round_wait_seconds=ROUND_WAIT_SECONDS)
    rng = np.random.default_rng(3)
    initial = _arrays(rng, dtype)
    created = ok(
        send(
            client,
            "POST",
            "/v1/sessions",
            {
                "optimizer": "rmsprop",
                "dtype": dtype,
                "params": {name: value.tolist() for name, value in initial.items()},
                "hyperparameters": HYPERPARAMETERS,
                "aggregation": {"mode": "sync", "workers": 3},
            },
        ),
        201,
    )
    session_id = created["id"]
    # Listed out of order; "a10" < "a9" < "b" by code point. Weights that differ, so that weights show.
    workers = [("b", 3.0), ("a10", 0.5), ("a9", 7.25)]
    sent = []
    for worker, weight in workers:
        grads = {name: value for name, value in _arrays(rng, "float64").items() if name != "s"}
        if worker == "a9":
            del grads["b"]
        sent.append(Contribution(worker, weight, grads))

    answers = [_post(client, session_id, _contribution(dict(c.grads), c.worker, 0, c.weight)) for c in sent]

    assert [answer.status_code for answer in answers] == [202, 202, 200]
    closed = strict_json(answers[-1].content)
    for answer in answers[:2]:
        polled = round_state(client, session_id, 0)
        assert polled.status_code == 200, polled.text
        assert strict_json(polled.content) == closed
        assert answer.headers["location"] == f"/v1/sessions/{session_id}/rounds/0"
    mean = weighted_mean(sent, initial)
    assert sorted(mean) == ["b", "w"]
    reference = core_optimizer("rmsprop", {name: value.copy() for name, value in initial.items()}, HYPERPARAMETERS)
    reference.step(mean)
    assert closed["step"] == 1
    for name, value in reference.params.items():
        got = np.asarray(closed["params"][name], dtype=dtype)
        assert got.tobytes() == np.asarray(value).tobytes(), f"param {name!r}"
    assert np.asarray(closed["params"]["s"], dtype=dtype).tobytes() == initial["s"].tobytes()
    assert closed["metrics"]["round"]["contributors"] == 3
    assert closed["metrics"]["round"]["total_weight"] == sum(weight for _, weight in workers)
    state = ok(client.get(f"/v1/sessions/{session_id}/state_dict"))["state"]
    assert sorted(state) == ["0", "1"], "a param no worker sent got optimizer state"
    if dtype == "float64":
        renamed = {"a10": "c", "a9": "b", "b": "a"}  # the reverse order
        reversed_mean = weighted_mean([Contribution(renamed[c.worker], c.weight, c.grads) for c in sent], initial)
        assert reversed_mean["w"].tobytes() != mean["w"].tobytes(), "these values do not show the order; change them"


@pytest.mark.parametrize("key", ["same", "none", "another"])
def test_a_retry_by_the_same_worker_is_the_same_contribution_open_or_closed_with_or_without_its_key(
    client: TestClient, key: str
) -> None:
    session_id = create(client, SYNC)
    first_key = {"Idempotency-Key": "k-first"}
    retry_key = {"same": first_key, "none": {}, "another": {"Idempotency-Key": "k-other"}}[key]
    fields = {"worker": "rank3", "based_on_step": 0, "weight": 2}

    first = contribute_json(client, session_id, fields, **first_key)
    assert first.status_code == 202, first.text
    again_while_open = contribute_json(client, session_id, fields, **retry_key)
    assert again_while_open.status_code == 202, again_while_open.text
    assert open_round(client, session_id, 0)["contributions"] == 1

    closing = contribute_json(client, session_id, {"worker": "rank4", "based_on_step": 0})
    assert closing.status_code == 200, closing.text
    again_when_closed = contribute_json(client, session_id, fields, **retry_key)
    assert again_when_closed.status_code == 200, again_when_closed.text
    assert strict_json(again_when_closed.content) == strict_json(closing.content)
    assert again_when_closed.headers["etag"] == closing.headers["etag"]

    contribute_json(client, session_id, {"worker": "rank3", "based_on_step": 1})
    assert contribute_json(client, session_id, {"worker": "rank4", "based_on_step": 1}).status_code == 200
    again_two_rounds_on = contribute_json(client, session_id, fields, **retry_key)
    assert again_two_rounds_on.status_code == 200, again_two_rounds_on.text
    assert strict_json(again_two_rounds_on.content) == strict_json(closing.content)
    assert summary(client, session_id)["step"] == 2


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_a_retry_by_the_same_worker_with_another_body_is_422_and_changes_nothing(
    client: TestClient, closed: bool
) -> None:
    session_id = create(client, SYNC)
    fields = {"worker": "rank3", "based_on_step": 0, "weight": 2}
    assert contribute_json(client, session_id, fields).status_code == 202
    if closed:
        assert contribute_json(client, session_id, {"worker": "rank4", "based_on_step": 0}).status_code == 200
    before = params(client, session_id)

    other_weight = contribute_json(client, session_id, {**fields, "weight": 3})
    other_transport = contribute_safetensors(
        client, session_id, {"worker": "rank3", "based_on_step": "0", "weight": "2"}
    )

    for response in (other_weight, other_transport):
        assert assert_problem(response, 422)["type"].endswith("contribution-changed"), response.text
    assert params(client, session_id) == before
    if not closed:
        assert open_round(client, session_id, 0)["contributions"] == 1


def test_rounds_answer_202_while_open_200_once_closed_and_404_ahead_of_the_session(client: TestClient) -> None:
    session_id = create(client, {"mode": "sync", "workers": 2})

    empty = open_round(client, session_id, 0)
    assert empty == {"round": 0, "contributions": 0, "workers": 2, "closed": False}
    _round_not_found(round_state(client, session_id, 1))
    contribute_json(client, session_id, {"worker": "a", "based_on_step": 0})
    assert open_round(client, session_id, 0) == {"round": 0, "contributions": 1, "workers": 2, "closed": False}
    closing = contribute_json(client, session_id, {"worker": "b", "based_on_step": 0})
    assert closing.status_code == 200

    closed = round_state(client, session_id, 0)
    assert closed.status_code == 200
    assert strict_json(closed.content) == strict_json(closing.content)
    assert open_round(client, session_id, 1)["contributions"] == 0
    _round_not_found(round_state(client, session_id, 2))


@pytest.mark.parametrize("based_on_step", [0, 2], ids=["behind", "ahead"])
def test_a_sync_contribution_for_another_round_is_409_round_moved_on_and_stores_nothing(
    client: TestClient, based_on_step: int
) -> None:
    session_id = create(client, {"mode": "sync", "workers": 1})
    assert contribute_json(client, session_id, {"worker": "a", "based_on_step": 0}).status_code == 200
    before = params(client, session_id)

    _problem_moved_on(contribute_json(client, session_id, {"worker": "b", "based_on_step": based_on_step}), 1)

    assert params(client, session_id) == before
    assert open_round(client, session_id, 1)["contributions"] == 0


@pytest.mark.parametrize("based_on_step", [0, 3], ids=["too-stale", "ahead"])
def test_an_async_contribution_too_stale_or_ahead_is_409_round_moved_on_and_changes_nothing(
    client: TestClient, based_on_step: int
) -> None:
    session_id = create(client, ASYNC)  # max_staleness 1
    for step in range(2):
        answer = contribute_json(client, session_id, {"worker": "a", "based_on_step": step})
        assert answer.status_code == 200, answer.text
        assert strict_json(answer.content)["staleness"] == 0
    before = params(client, session_id)

    _problem_moved_on(contribute_json(client, session_id, {"worker": "a", "based_on_step": based_on_step}), 2)

    assert params(client, session_id) == before
    one_behind = contribute_json(client, session_id, {"worker": "b", "based_on_step": 1})
    assert strict_json(one_behind.content)["staleness"] == 1


@pytest.mark.parametrize(
    "aggregation",
    [None, {"mode": "sync", "workers": 3, "min_workers": 2, "timeout_s": 30}, ASYNC],
    ids=["ordinary", "sync", "async"],
)
def test_aggregation_is_in_the_summary_and_the_checkpoint_and_a_checkpoint_restores_it(
    client: TestClient, aggregation: dict[str, Any] | None
) -> None:
    session_id = create(client, aggregation)

    shown = summary(client, session_id)["aggregation"]
    snapshot = ok(client.get(f"/v1/sessions/{session_id}/checkpoint"))
    restored = ok(send(client, "POST", "/v1/sessions", snapshot), 201)

    if aggregation is None:
        assert shown is None
    else:
        assert {key: shown[key] for key in aggregation} == aggregation
    assert snapshot["aggregation"] == shown
    assert summary(client, restored["id"])["aggregation"] == shown
    assert restored["aggregation"] == shown


def test_a_checkpoint_holds_the_applied_state_only_not_an_open_rounds_contributions(client: TestClient) -> None:
    session_id = create(client, SYNC)
    assert contribute_json(client, session_id, {"worker": "a", "based_on_step": 0}).status_code == 202

    snapshot = ok(client.get(f"/v1/sessions/{session_id}/checkpoint"))
    restored = ok(send(client, "POST", "/v1/sessions", snapshot), 201)["id"]

    assert snapshot["step"] == 0
    assert open_round(client, restored, 0)["contributions"] == 0
    assert open_round(client, session_id, 0)["contributions"] == 1


def test_aggregation_does_not_change_after_creation(client: TestClient) -> None:
    session_id = create(client, SYNC)

    response = send(client, "PATCH", f"/v1/sessions/{session_id}", {"aggregation": {"mode": "sync", "workers": 3}})

    assert 400 <= response.status_code < 500, response.text
    assert summary(client, session_id)["aggregation"]["workers"] == 2


def test_a_retry_whose_rounds_answer_is_gone_is_409_round_answer_expired_and_applies_nothing(
    make_client: ClientFactory,
) -> None:
    """With no answer copied, a closed round's answer comes from the session while no later step has changed it."""
    client = make_client(round_wait_seconds=ROUND_WAIT_SECONDS, idempotency_response_copy_max_bytes=0)
    session_id = create(client, {"mode": "sync", "workers": 1})
    first = contribute_json(client, session_id, {"worker": "a", "based_on_step": 0})
    assert first.status_code == 200, first.text
    again = contribute_json(client, session_id, {"worker": "a", "based_on_step": 0})
    assert again.status_code == 200, again.text
    assert strict_json(again.content) == strict_json(first.content)
    assert contribute_json(client, session_id, {"worker": "b", "based_on_step": 1}).status_code == 200
    before = params(client, session_id)

    expired = contribute_json(client, session_id, {"worker": "a", "based_on_step": 0})

    problem = assert_problem(expired, 409)
    assert problem["type"].endswith("round-answer-expired"), problem
    assert problem["current_step"] == 2, problem
    assert params(client, session_id) == before
    polled = assert_problem(round_state(client, session_id, 0), 409)
    assert polled["type"].endswith("round-answer-expired"), polled


@pytest.mark.parametrize("aggregation", [None, ASYNC], ids=["ordinary", "async"])
def test_a_session_without_rounds_has_no_round_to_get(client: TestClient, aggregation: dict[str, Any] | None) -> None:
    session_id = create(client, aggregation)

    _round_not_found(round_state(client, session_id, 0))


def test_a_round_short_of_min_workers_stays_open_past_its_timeout_and_closes_with_the_next_contribution(
    client: TestClient,
) -> None:
    timeout_s = 0.5
    session_id = create(client, {"mode": "sync", "workers": 3, "min_workers": 2, "timeout_s": timeout_s})
    assert contribute_json(client, session_id, {"worker": "a", "based_on_step": 0}).status_code == 202
    time.sleep(timeout_s)  # the round's timeout passes with one contribution in, fewer than min_workers

    assert open_round(client, session_id, 0)["contributions"] == 1
    closing = contribute_json(client, session_id, {"worker": "b", "based_on_step": 0})

    assert closing.status_code == 200, closing.text
    telemetry = strict_json(closing.content)["metrics"]["round"]
    assert telemetry["contributors"] == 2
    assert telemetry["wait_s"] >= timeout_s
    assert summary(client, session_id)["step"] == 1


def test_a_sync_contribution_ignores_if_match_and_an_async_one_honours_it(client: TestClient) -> None:
    sync_id = create(client, {"mode": "sync", "workers": 1})
    async_id = create(client, ASYNC)
    stale = {"If-Match": '"999"'}

    sync_answer = contribute_json(client, sync_id, {"worker": "a", "based_on_step": 0}, **stale)
    async_answer = contribute_json(client, async_id, {"worker": "a", "based_on_step": 0}, **stale)

    assert sync_answer.status_code == 200, sync_answer.text
    assert_problem(async_answer, 412)
    assert summary(client, async_id)["step"] == 0


def test_an_async_contribution_retried_with_its_idempotency_key_gets_the_first_answer_and_applies_nothing(
    client: TestClient,
) -> None:
    session_id = create(client, ASYNC)
    key = {"Idempotency-Key": "async-1"}

    first = contribute_json(client, session_id, {"worker": "a", "based_on_step": 0}, **key)
    again = contribute_json(client, session_id, {"worker": "a", "based_on_step": 0}, **key)

    assert first.status_code == again.status_code == 200
    assert strict_json(again.content) == strict_json(first.content)
    assert summary(client, session_id)["step"] == 1


def test_a_non_finite_contribution_to_a_round_is_422_even_where_steps_skip_them_and_is_not_stored(
    client: TestClient,
) -> None:
    session_id = create(client, {"mode": "sync", "workers": 1}, nonfinite="skip")
    before = params(client, session_id)
    overflowing = {"grads": {"w": [[1e39, 0.0, 0.0], [0.0, 0.0, 0.0]]}, "worker": "a", "based_on_step": 0}

    response = send(client, "POST", f"/v1/sessions/{session_id}/step", overflowing)

    assert_problem(response, 422)
    assert params(client, session_id) == before
    assert contribute_json(client, session_id, {"worker": "a", "based_on_step": 0}).status_code == 200
