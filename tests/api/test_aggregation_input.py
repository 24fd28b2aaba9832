"""Bad input to aggregating sessions, and contribution fields where there is no aggregation: a 4xx
problem+json naming the field, and nothing changed (docs/api.md, "Data-parallel training")."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.aggregation import (
    ASYNC,
    assert_names_field,
    contribute_json,
    contribute_safetensors,
    create,
    create_body,
    params,
    summary,
)
from tests.api.conftest import send, session_count

MAX_STEP = 2**53 - 1


@pytest.fixture
def client(module_client: TestClient) -> TestClient:
    """One service for the module: no test here waits on a round (each session's round closes with one worker)."""
    return module_client


BAD_AGGREGATIONS = [
    pytest.param({"mode": "sync", "workers": 0}, ("workers",), id="no-workers"),
    pytest.param({"mode": "sync", "workers": 1025}, ("workers",), id="too-many-workers"),
    pytest.param({"mode": "sync", "workers": 2.5}, ("workers",), id="fractional-workers"),
    pytest.param({"mode": "sync", "workers": "4"}, ("workers",), id="workers-as-a-string"),
    pytest.param({"mode": "sync"}, ("workers",), id="workers-missing"),
    pytest.param({"mode": "sync", "workers": None}, ("workers",), id="workers-null"),
    pytest.param({"mode": "sync", "workers": 2, "min_workers": None, "timeout_s": 5}, ("min_workers",), id="min-null"),
    pytest.param({"mode": "sync", "workers": 2, "min_workers": 0, "timeout_s": 5}, ("min_workers",), id="min-zero"),
    pytest.param({"mode": "sync", "workers": 2, "min_workers": 3, "timeout_s": 5}, ("min_workers",), id="min-over"),
    pytest.param({"mode": "sync", "workers": 4, "min_workers": 3}, ("timeout_s", "min_workers"), id="min-no-timeout"),
    pytest.param({"mode": "sync", "workers": 2, "timeout_s": 0}, ("timeout_s",), id="timeout-zero"),
    pytest.param({"mode": "sync", "workers": 2, "timeout_s": -1}, ("timeout_s",), id="timeout-negative"),
    pytest.param({"mode": "sync", "workers": 2, "timeout_s": 86_401}, ("timeout_s",), id="timeout-over-a-day"),
    pytest.param({"mode": "async", "max_staleness": -1}, ("max_staleness",), id="staleness-negative"),
    pytest.param({"mode": "async", "max_staleness": 1.5}, ("max_staleness",), id="staleness-fractional"),
    pytest.param({"mode": "async", "staleness_weighting": "linear"}, ("staleness_weighting",), id="weighting"),
    pytest.param({"mode": "async", "workers": 2}, ("workers",), id="workers-in-async"),
    pytest.param({"mode": "sync", "workers": 2, "max_staleness": 1}, ("max_staleness",), id="staleness-in-sync"),
    pytest.param({"mode": "ring", "workers": 2}, ("mode",), id="unknown-mode"),
    pytest.param({"workers": 2}, ("mode",), id="mode-missing"),
]


@pytest.mark.parametrize(("aggregation", "fields"), BAD_AGGREGATIONS)
def test_a_bad_aggregation_is_422_naming_the_field_and_creates_nothing(
    client: TestClient, aggregation: dict[str, Any], fields: tuple[str, ...]
) -> None:
    before = session_count(client)

    response = send(client, "POST", "/v1/sessions", create_body(aggregation))

    assert_names_field(response, 422, *fields)
    assert session_count(client) == before


@pytest.mark.parametrize(
    "aggregation",
    [
        {"mode": "sync", "workers": 1},
        {"mode": "sync", "workers": 1024, "min_workers": 1, "timeout_s": 86_400},
        {"mode": "sync", "workers": 3, "min_workers": 2, "timeout_s": 0.5},
        {"mode": "async"},
        {"mode": "async", "max_staleness": 0, "staleness_weighting": "inverse"},
        {"mode": "async", "max_staleness": None, "staleness_weighting": "none"},
    ],
)
def test_the_bounds_of_an_aggregation_are_accepted(client: TestClient, aggregation: dict[str, Any]) -> None:
    session_id = create(client, aggregation)

    shown = summary(client, session_id)["aggregation"]
    assert {key: shown[key] for key in aggregation} == aggregation


ONE_WORKER = {"mode": "sync", "workers": 1}
"""A round closes with its first contribution: one stored by mistake would have moved the session."""


def _unchanged(client: TestClient, session_id: str, before: dict[str, Any]) -> None:
    """The session is as it was, and rank3 can still make the round's one contribution (none of it was stored)."""
    assert params(client, session_id) == before
    answer = contribute_json(client, session_id, {"worker": "rank3", "based_on_step": before["step"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["step"] == before["step"] + 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"based_on_step": 0, "weight": 1}, "worker", id="worker-missing"),
        pytest.param({"worker": "", "based_on_step": 0}, "worker", id="worker-empty"),
        pytest.param({"worker": "r" * 65, "based_on_step": 0}, "worker", id="worker-too-long"),
        pytest.param(
            {"worker": "rank 3", "based_on_step": 0},
            "worker",
            id="worker-with-a-space",
        ),
        pytest.param(
            {"worker": "rank/3", "based_on_step": 0},
            "worker",
            id="worker-with-a-slash",
        ),
        pytest.param(
            {"worker": 3, "based_on_step": 0},
            "worker",
            id="worker-a-number",
        ),
        pytest.param({"worker": "rank3"}, "based_on_step", id="based-on-step-missing"),
        pytest.param({"worker": "rank3", "based_on_step": -1}, "based_on_step", id="based-on-step-negative"),
        pytest.param({"worker": "rank3", "based_on_step": MAX_STEP + 1}, "based_on_step", id="based-on-step-over"),
        pytest.param({"worker": "rank3", "based_on_step": 0.5}, "based_on_step", id="based-on-step-fractional"),
        pytest.param({"worker": "rank3", "based_on_step": "0"}, "based_on_step", id="based-on-step-a-string"),
        pytest.param({"worker": "rank3", "based_on_step": 0, "weight": 0}, "weight", id="weight-zero"),
        pytest.param({"worker": "rank3", "based_on_step": 0, "weight": -2}, "weight", id="weight-negative"),
        pytest.param({"worker": "rank3", "based_on_step": 0, "weight": 1e16}, "weight", id="weight-over-1e15"),
        pytest.param({"worker": "rank3", "based_on_step": 0, "weight": "2"}, "weight", id="weight-a-string"),
    ],
)
def test_a_bad_contribution_in_json_is_422_naming_the_field_and_changes_nothing(
    client: TestClient, fields: dict[str, Any], field: str
) -> None:
    session_id = create(client, ONE_WORKER)
    before = params(client, session_id)

    assert_names_field(contribute_json(client, session_id, fields), 422, field)

    _unchanged(client, session_id, before)


@pytest.mark.parametrize("weight", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_weight_in_json_is_refused_and_changes_nothing(client: TestClient, weight: str) -> None:
    """JSON has no NaN or Infinity: the body is malformed (400), or the field wrong (422); never stored."""
    session_id = create(client, ONE_WORKER)
    before = params(client, session_id)
    body = f'{{"grads": {{"w": [[0,0,0],[0,0,0]]}}, "worker": "rank3", "based_on_step": 0, "weight": {weight}}}'

    response = send(client, "POST", f"/v1/sessions/{session_id}/step", raw=body.encode())

    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    _unchanged(client, session_id, before)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        pytest.param({"based_on_step": "0"}, "worker", id="worker-missing"),
        pytest.param(
            {"worker": "rank 3", "based_on_step": "0"},
            "worker",
            id="worker-with-a-space",
        ),
        pytest.param({"worker": "rank3"}, "based_on_step", id="based-on-step-missing"),
        pytest.param({"worker": "rank3", "based_on_step": "-1"}, "based_on_step", id="based-on-step-negative"),
        pytest.param({"worker": "rank3", "based_on_step": str(MAX_STEP + 1)}, "based_on_step", id="based-on-step-over"),
        pytest.param({"worker": "rank3", "based_on_step": "1.5"}, "based_on_step", id="based-on-step-fractional"),
        pytest.param({"worker": "rank3", "based_on_step": "zero"}, "based_on_step", id="based-on-step-a-word"),
        pytest.param({"worker": "rank3", "based_on_step": "0", "weight": "NaN"}, "weight", id="weight-nan"),
        pytest.param({"worker": "rank3", "based_on_step": "0", "weight": "nan"}, "weight", id="weight-nan-lower"),
        pytest.param({"worker": "rank3", "based_on_step": "0", "weight": "Infinity"}, "weight", id="weight-infinite"),
        pytest.param({"worker": "rank3", "based_on_step": "0", "weight": "inf"}, "weight", id="weight-inf"),
        pytest.param({"worker": "rank3", "based_on_step": "0", "weight": "0"}, "weight", id="weight-zero"),
        pytest.param({"worker": "rank3", "based_on_step": "0", "weight": "-1"}, "weight", id="weight-negative"),
        pytest.param({"worker": "rank3", "based_on_step": "0", "weight": "1e16"}, "weight", id="weight-over-1e15"),
        pytest.param({"worker": "rank3", "based_on_step": "0", "weight": "heavy"}, "weight", id="weight-a-word"),
    ],
)
def test_a_bad_contribution_in_safetensors_metadata_is_422_naming_the_field_and_changes_nothing(
    client: TestClient, metadata: dict[str, str], field: str
) -> None:
    session_id = create(client, ONE_WORKER)
    before = params(client, session_id)

    assert_names_field(contribute_safetensors(client, session_id, metadata), 422, field)

    _unchanged(client, session_id, before)


@pytest.mark.parametrize("field", ["worker", "based_on_step", "weight"])
@pytest.mark.parametrize("transport", ["json", "safetensors"])
def test_contribution_fields_on_an_ordinary_session_are_422_naming_them_and_change_nothing(
    client: TestClient, field: str, transport: str
) -> None:
    session_id = create(client, None)
    before = params(client, session_id)
    value: dict[str, Any] = {"worker": "rank3", "based_on_step": 0, "weight": 2}

    if transport == "json":
        response = contribute_json(client, session_id, {field: value[field]})
    else:
        response = contribute_safetensors(client, session_id, {field: str(value[field])})

    assert_names_field(response, 422, field)
    assert params(client, session_id) == before


@pytest.mark.parametrize("aggregation", [ONE_WORKER, ASYNC], ids=["sync", "async"])
def test_a_contribution_with_a_bad_gradient_is_422_and_is_not_stored(
    client: TestClient, aggregation: dict[str, Any]
) -> None:
    session_id = create(client, aggregation)
    before = params(client, session_id)
    bad = {"grads": {"w": [1.0, 2.0]}, "worker": "rank3", "based_on_step": 0}

    response = send(client, "POST", f"/v1/sessions/{session_id}/step", bad)

    assert_names_field(response, 422, "w")
    _unchanged(client, session_id, before)


def test_a_max_staleness_past_the_largest_step_is_refused(client: TestClient) -> None:
    body = {"optimizer": "rprop", "params": {"w": [1.0]}, "aggregation": {"mode": "async", "max_staleness": 1e30}}
    response = send(client, "POST", "/v1/sessions", body)
    assert response.status_code == 422
    assert "max_staleness" in response.text
