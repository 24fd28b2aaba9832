"""Sessions: create, get, list (with pagination), patch, delete; the summary; Location and ETag."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from fastapi.testclient import TestClient

from optim_core import RMSprop, Rprop
from tests.api.conftest import (
    ClientFactory,
    assert_problem,
    assert_same_json,
    assert_same_param_bits,
    create_session,
    ok,
    send,
    service_client,
    step,
    summary_groups,
)

SUMMARY_KEYS = {
    "id",
    "optimizer",
    "dtype",
    "step",
    "param_groups",
    "shapes",
    "created_at",
    "updated_at",
    "tenant",
    "aggregation",
    "clip_grad_norm",
    "nonfinite",
}
RPROP_KEYS = ["lr", "etas", "step_sizes", "foreach", "maximize", "differentiable", "capturable"]
RMSPROP_KEYS = [
    "lr",
    "momentum",
    "alpha",
    "eps",
    "centered",
    "weight_decay",
    "capturable",
    "foreach",
    "maximize",
    "differentiable",
]

PARAMS: dict[str, Any] = {"w": [[1.0, -2.0, 3.0], [0.5, 0.0, -0.25]], "b": [0.1, -0.2], "s": 1.5}
SHAPES = {"w": [2, 3], "b": [2], "s": []}


def _rprop(**extra: Any) -> dict[str, Any]:
    return {"optimizer": "rprop", "params": PARAMS, **extra}


def _core_params(dtype: str) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=dtype) for name, value in PARAMS.items()}


def _assert_summary(summary: dict[str, Any]) -> None:
    assert set(summary) == SUMMARY_KEYS, sorted(summary)
    assert isinstance(summary["id"], str)
    assert isinstance(summary["step"], int)
    assert not isinstance(summary["step"], bool)
    for key in ("created_at", "updated_at"):
        assert isinstance(summary[key], str), summary[key]
        datetime.fromisoformat(summary[key])


def test_create_returns_201_with_location_etag_and_the_summary_plus_params(client: TestClient) -> None:
    response = send(client, "POST", "/v1/sessions", _rprop())

    body = ok(response, 201)
    assert set(body) == SUMMARY_KEYS | {"params"}
    _assert_summary({key: value for key, value in body.items() if key != "params"})
    assert urlsplit(response.headers["location"]).path == f"/v1/sessions/{body['id']}"
    assert response.headers["etag"]
    assert (body["optimizer"], body["dtype"], body["step"]) == ("rprop", "float32", 0)
    assert body["shapes"] == SHAPES
    assert_same_param_bits(body["params"], _core_params("float32"), "float32")


def test_the_location_header_leads_to_the_created_session(client: TestClient) -> None:
    created = create_session(client, _rprop())

    summary = ok(client.get(created.location))

    assert summary["id"] == created.id


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_create_keeps_the_requested_dtype_and_the_exact_values(client: TestClient, dtype: str) -> None:
    created = create_session(client, _rprop(dtype=dtype))

    assert created.body["dtype"] == dtype
    assert_same_param_bits(created.body["params"], _core_params(dtype), dtype)
    assert_same_param_bits(ok(client.get(f"{created.url}/params"))["params"], _core_params(dtype), dtype)


def test_create_takes_json_ints_as_numbers(client: TestClient) -> None:
    created = create_session(client, {"optimizer": "rprop", "params": {"w": [[1, -2], [0, 3]], "s": 7}})

    expected = {"w": np.array([[1.0, -2.0], [0.0, 3.0]], np.float32), "s": np.array(7.0, np.float32)}
    assert_same_param_bits(created.body["params"], expected, "float32")


@pytest.mark.parametrize(
    ("optimizer", "core", "keys"), [("rprop", Rprop, RPROP_KEYS), ("rmsprop", RMSprop, RMSPROP_KEYS)]
)
def test_summary_lists_every_hyperparameter_with_torchs_defaults_and_the_param_names(
    client: TestClient, optimizer: str, core: type[Rprop] | type[RMSprop], keys: list[str]
) -> None:
    created = create_session(client, {"optimizer": optimizer, "params": PARAMS})

    groups = created.body["param_groups"]
    assert len(groups) == 1
    assert set(groups[0]) == {*keys, "params"}
    assert_same_json(groups, summary_groups(core(_core_params("float32")).param_groups), "param_groups")
    assert ok(client.get(created.url))["param_groups"] == groups


def test_create_with_param_groups_applies_defaults_and_per_group_overrides_like_the_core(client: TestClient) -> None:
    body = {
        "optimizer": "rmsprop",
        "params": PARAMS,
        "hyperparameters": {"lr": 0.05, "alpha": 0.9},
        "param_groups": [
            {"params": ["w"], "lr": 0.1, "momentum": 0.5},
            {"params": ["s", "b"], "centered": True, "weight_decay": 0.01},
        ],
    }
    params = _core_params("float32")
    core = RMSprop(
        [
            {"params": {"w": params["w"]}, "lr": 0.1, "momentum": 0.5},
            {"params": {"s": params["s"], "b": params["b"]}, "centered": True, "weight_decay": 0.01},
        ],
        lr=0.05,
        alpha=0.9,
    )

    created = create_session(client, body)

    assert_same_json(created.body["param_groups"], summary_groups(core.param_groups), "param_groups")
    assert [group["params"] for group in created.body["param_groups"]] == [["w"], ["s", "b"]]


def test_get_returns_the_summary_and_the_same_etag_as_creation(client: TestClient) -> None:
    created = create_session(client, _rprop())

    response = client.get(created.url)

    summary = ok(response)
    _assert_summary(summary)
    assert summary == {key: value for key, value in created.body.items() if key != "params"}
    assert response.headers["etag"] == created.etag


def _bits_of_entropy(session_id: str) -> float:
    alphabet = 16 if re.fullmatch(r"[0-9a-f]+", session_id) or re.fullmatch(r"[0-9A-F]+", session_id) else 64
    return len(session_id) * math.log2(alphabet)


def test_session_ids_are_distinct_url_safe_and_carry_at_least_128_bits(client: TestClient) -> None:
    ids = [create_session(client, _rprop()).id for _ in range(20)]

    assert len(set(ids)) == len(ids)
    for session_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", session_id), session_id
        assert _bits_of_entropy(session_id) >= 128, session_id
    # Random ids: no two share a long common prefix (a counter or a timestamp would).
    prefixes = {session_id[:8] for session_id in ids}
    assert len(prefixes) == len(ids), ids


def test_list_without_parameters_lists_every_session_once(client: TestClient) -> None:
    ids = {create_session(client, _rprop()).id for _ in range(5)}

    page = ok(client.get("/v1/sessions"))

    assert set(page) == {"items", "next_cursor"}
    assert page["next_cursor"] is None
    assert sorted(item["id"] for item in page["items"]) == sorted(ids)
    for item in page["items"]:
        _assert_summary(item)


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 1000])
def test_list_pages_are_disjoint_and_together_list_every_session_once(client: TestClient, limit: int) -> None:
    ids = {create_session(client, _rprop()).id for _ in range(7)}

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(20):
        query: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor is not None else {})
        page = ok(client.get("/v1/sessions", params=query))
        assert 0 < len(page["items"]) <= limit
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)

    assert cursor is None, "pagination did not end"
    assert sorted(seen) == sorted(ids)


def test_list_pages_hold_100_sessions_by_default(make_client: ClientFactory) -> None:
    client = make_client(sqlite_synchronous="NORMAL")
    ids = {create_session(client, _rprop()).id for _ in range(101)}

    first = ok(client.get("/v1/sessions"))
    second = ok(client.get("/v1/sessions", params={"cursor": first["next_cursor"]}))

    assert len(first["items"]) == 100
    assert len(second["items"]) == 1
    assert second["next_cursor"] is None
    assert {item["id"] for item in first["items"] + second["items"]} == ids


def test_list_of_an_empty_service_is_empty(client: TestClient) -> None:
    assert ok(client.get("/v1/sessions")) == {"items": [], "next_cursor": None}


def test_list_shows_the_current_summary_of_each_session(client: TestClient) -> None:
    created = create_session(client, _rprop())
    ok(step(client, created.id, {"s": 1.0}))

    (item,) = ok(client.get("/v1/sessions"))["items"]

    assert item == ok(client.get(created.url))
    assert item["step"] == 1


def test_create_with_step_starts_the_step_counter_there(client: TestClient) -> None:
    created = create_session(client, _rprop(step=41))

    assert created.body["step"] == 41
    assert ok(step(client, created.id, {"b": [1.0, 1.0]}))["step"] == 42
    assert ok(client.get(created.url))["step"] == 42


def test_patch_hyperparameters_sets_them_in_every_group_and_returns_the_summary_with_a_new_etag(
    client: TestClient,
) -> None:
    created = create_session(client, _rprop(param_groups=[{"params": ["w"], "lr": 0.5}, {"params": ["b", "s"]}]))
    params = _core_params("float32")
    core = Rprop([{"params": {"w": params["w"]}, "lr": 0.5}, {"params": {"b": params["b"], "s": params["s"]}}])
    for group in core.param_groups:
        group.update(lr=0.25, etas=(0.25, 1.5), maximize=True)

    response = send(
        client, "PATCH", created.url, {"hyperparameters": {"lr": 0.25, "etas": [0.25, 1.5], "maximize": True}}
    )

    summary = ok(response)
    _assert_summary(summary)
    assert_same_json(summary["param_groups"], summary_groups(core.param_groups), "param_groups")
    assert response.headers["etag"] != created.etag
    get = client.get(created.url)
    assert ok(get) == summary
    assert get.headers["etag"] == response.headers["etag"]


def test_patch_param_groups_sets_each_groups_own_hyperparameters(client: TestClient) -> None:
    created = create_session(
        client, {"optimizer": "rmsprop", "params": PARAMS, "param_groups": [{"params": ["w", "b"]}, {"params": ["s"]}]}
    )
    core = RMSprop([{"params": {"w": np.zeros((2, 3)), "b": np.zeros(2)}}, {"params": {"s": np.zeros(())}}])
    core.param_groups[0].update(lr=0.5, centered=True)
    core.param_groups[1].update(momentum=0.9)

    summary = ok(
        send(
            client,
            "PATCH",
            created.url,
            {"param_groups": [{"lr": 0.5, "centered": True, "params": ["w", "b"]}, {"momentum": 0.9}]},
        )
    )

    assert_same_json(summary["param_groups"], summary_groups(core.param_groups), "param_groups")
    assert summary["step"] == 0


def test_patch_does_not_change_params_or_the_step_counter(client: TestClient) -> None:
    created = create_session(client, _rprop())
    ok(step(client, created.id, {"w": np.ones((2, 3))}))
    before = ok(client.get(f"{created.url}/params"))

    ok(send(client, "PATCH", created.url, {"hyperparameters": {"lr": 0.3}}))

    assert ok(client.get(f"{created.url}/params")) == before
    assert ok(client.get(created.url))["step"] == 1


def test_updated_at_moves_forward_and_created_at_stays(client: TestClient) -> None:
    created = create_session(client, _rprop())
    ok(step(client, created.id, {"s": 1.0}))
    ok(send(client, "PATCH", created.url, {"hyperparameters": {"lr": 0.3}}))

    summary = ok(client.get(created.url))

    assert summary["created_at"] == created.body["created_at"]
    assert datetime.fromisoformat(summary["updated_at"]) >= datetime.fromisoformat(created.body["updated_at"])
    assert datetime.fromisoformat(summary["updated_at"]) >= datetime.fromisoformat(summary["created_at"])


ENDPOINTS_OF_A_SESSION: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("PATCH", "", {"hyperparameters": {"lr": 0.1}}),
    ("DELETE", "", None),
    ("POST", "/step", {"grads": {"s": 1.0}}),
    ("GET", "/params", None),
    ("GET", "/state_dict", None),
    ("GET", "/checkpoint", None),
]


def test_delete_returns_204_and_afterwards_every_call_on_the_id_is_404(client: TestClient) -> None:
    created = create_session(client, _rprop())
    state_dict = ok(client.get(f"{created.url}/state_dict"))

    assert client.delete(created.url).status_code == 204

    for method, suffix, body in [*ENDPOINTS_OF_A_SESSION, ("PUT", "/state_dict", state_dict)]:
        assert_problem(send(client, method, f"{created.url}{suffix}", body), 404)


def test_a_deleted_session_is_no_longer_listed_and_others_stay(client: TestClient) -> None:
    kept = create_session(client, _rprop())
    deleted = create_session(client, _rprop())

    ok(client.delete(deleted.url), 204)

    assert [item["id"] for item in ok(client.get("/v1/sessions"))["items"]] == [kept.id]
    assert ok(client.get(kept.url))["id"] == kept.id


def test_sessions_survive_a_restart_over_the_same_database(new_database: Callable[[], str]) -> None:
    database = new_database()
    with service_client(database) as first:
        created = create_session(first, _rprop(dtype="float64"))
        stepped = ok(step(first, created.id, {"w": np.full((2, 3), 0.5), "s": -1.0}))
        before = ok(first.get(f"{created.url}/checkpoint"))

    with service_client(database) as second:
        assert ok(second.get(f"{created.url}/checkpoint")) == before
        assert ok(second.get(f"{created.url}/params"))["params"] == stepped["params"]


def test_healthz_answers_ok_and_readyz_answers_200_when_storage_answers(client: TestClient) -> None:
    assert ok(client.get("/healthz")) == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_openapi_describes_every_endpoint_and_docs_are_served(client: TestClient) -> None:
    spec = ok(client.get("/openapi.json"))
    paths = {
        re.sub(r"\{[^}]+\}", "{id}", path): {method.upper() for method in ops} for path, ops in spec["paths"].items()
    }

    expected = {
        "/v1/sessions": {"GET", "POST"},
        "/v1/sessions/{id}": {"GET", "PATCH", "DELETE"},
        "/v1/sessions/{id}/step": {"POST"},
        "/v1/sessions/{id}/params": {"GET"},
        "/v1/sessions/{id}/state_dict": {"GET", "PUT"},
        "/v1/sessions/{id}/checkpoint": {"GET"},
        "/healthz": {"GET"},
        "/readyz": {"GET"},
    }
    for path, methods in expected.items():
        assert path in paths, f"{path} missing from openapi.json: {sorted(paths)}"
        assert methods <= paths[path], f"{path}: {paths[path]}"
    assert client.get("/docs").status_code == 200
