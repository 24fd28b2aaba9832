"""Quotas and rate limits: a request past one is refused naming the limit and the usage, and changes
nothing. Runs on SQLite and on PostgreSQL."""

import time
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from tests.api.conftest import SAFETENSORS, ClientFactory, assert_problem, ok, send
from tests.tenancy import bearer, create_key, run_cli


def _body(params: int) -> dict[str, Any]:
    return {"optimizer": "rmsprop", "params": {"w": [0.5] * params}, "hyperparameters": {"lr": 0.1}}


def _database(client: TestClient) -> str:
    settings: Settings = client.app.state.service.settings  # type: ignore[attr-defined]
    return settings.database_url


def _keyed(make_client: ClientFactory, **settings: Any) -> tuple[TestClient, str]:
    client = make_client(**settings)
    return client, create_key(_database(client), "team-a")


def _session_ids(client: TestClient, key: str) -> list[str]:
    return [item["id"] for item in ok(client.get("/v1/sessions", headers=bearer(key)))["items"]]


def _usage(client: TestClient, key: str) -> dict[str, Any]:
    quotas: dict[str, Any] = ok(client.get("/v1/tenant", headers=bearer(key)))["quotas"]
    return quotas


def test_a_session_past_max_sessions_is_refused_naming_the_quota_and_nothing_is_created(
    make_client: ClientFactory,
) -> None:
    client, key = _keyed(make_client, tenant_max_sessions=2)
    for _ in range(2):
        ok(send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key)), 201)
    before = _session_ids(client, key)

    refused = send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key))

    problem = assert_problem(refused, 403)
    assert problem["type"].endswith("quota-exceeded")
    assert (problem["quota"], problem["limit"], problem["usage"], problem["requested"]) == ("max_sessions", 2, 2, 1)
    assert _session_ids(client, key) == before
    assert _usage(client, key)["max_sessions"] == {"limit": 2, "usage": 2}


def test_deleting_a_session_makes_room_under_max_sessions(make_client: ClientFactory) -> None:
    client, key = _keyed(make_client, tenant_max_sessions=1)
    first = ok(send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key)), 201)
    assert_problem(send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key)), 403)

    ok(client.delete(f"/v1/sessions/{first['id']}", headers=bearer(key)), 204)

    ok(send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key)), 201)
    assert _usage(client, key)["max_sessions"]["usage"] == 1


def test_a_tenants_own_limit_set_from_the_cli_applies_at_the_next_request(make_client: ClientFactory) -> None:
    client, key = _keyed(make_client, tenant_max_sessions=1)
    ok(send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key)), 201)

    run_cli(_database(client), "tenants", "set", "team-a", "--max-sessions", "2")
    ok(send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key)), 201)
    run_cli(_database(client), "tenants", "set", "team-a", "--max-sessions", "default")

    problem = assert_problem(send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key)), 403)
    assert (problem["limit"], problem["usage"]) == (1, 2)


def test_a_session_past_max_bytes_is_refused_and_nothing_is_created(make_client: ClientFactory) -> None:
    client, key = _keyed(make_client, tenant_max_bytes=100)
    ok(send(client, "POST", "/v1/sessions", _body(16), headers=bearer(key)), 201)  # 64 bytes of float32 params

    refused = send(client, "POST", "/v1/sessions", _body(10), headers=bearer(key))  # 40 more: 104 > 100

    problem = assert_problem(refused, 403)
    assert (problem["quota"], problem["limit"], problem["usage"], problem["requested"]) == ("max_bytes", 100, 64, 40)
    assert len(_session_ids(client, key)) == 1


def test_a_step_whose_new_optimizer_state_would_pass_max_bytes_is_refused_and_changes_nothing(
    make_client: ClientFactory,
) -> None:
    client, key = _keyed(make_client, tenant_max_bytes=100)
    created = ok(send(client, "POST", "/v1/sessions", _body(16), headers=bearer(key)), 201)
    url = f"/v1/sessions/{created['id']}"
    before = client.get(f"{url}/checkpoint", headers={**bearer(key), "Accept": SAFETENSORS}).content

    # RMSprop's first step adds square_avg, as large as the params: 128 bytes in all.
    refused = send(client, "POST", f"{url}/step", {"grads": {"w": [1.0] * 16}}, headers=bearer(key))

    problem = assert_problem(refused, 403)
    assert (problem["quota"], problem["usage"], problem["requested"]) == ("max_bytes", 64, 64)
    assert client.get(f"{url}/checkpoint", headers={**bearer(key), "Accept": SAFETENSORS}).content == before
    assert _usage(client, key)["max_bytes"]["usage"] == 64
    run_cli(_database(client), "tenants", "set", "team-a", "--max-bytes", "128")
    assert ok(send(client, "POST", f"{url}/step", {"grads": {"w": [1.0] * 16}}, headers=bearer(key)))["step"] == 1
    assert _usage(client, key)["max_bytes"]["usage"] == 128


def test_a_session_past_max_params_is_refused(make_client: ClientFactory) -> None:
    client, key = _keyed(make_client, session_max_params=10)
    ok(send(client, "POST", "/v1/sessions", _body(10), headers=bearer(key)), 201)

    problem = assert_problem(send(client, "POST", "/v1/sessions", _body(11), headers=bearer(key)), 403)

    assert (problem["quota"], problem["limit"], problem["requested"]) == ("max_params", 10, 11)
    assert len(_session_ids(client, key)) == 1


def test_every_admitted_response_carries_the_rate_limit_fields_and_past_the_burst_it_is_429(
    make_client: ClientFactory,
) -> None:
    # A bucket that refills once in a thousand seconds: only the burst gets through.
    client, key = _keyed(make_client, tenant_requests_per_second=0.001, tenant_burst=3)
    answers = [client.get("/v1/sessions", headers=bearer(key)) for _ in range(3)]
    refused = send(client, "POST", "/v1/sessions", _body(3), headers=bearer(key))

    for left, answer in zip((2, 1, 0), answers, strict=True):
        ok(answer)
        assert answer.headers["ratelimit-policy"] == '"per-key";q=3;w=3000'
        assert answer.headers["ratelimit"].startswith(f'"per-key";r={left};t=')
    problem = assert_problem(refused, 429)
    assert problem["type"].endswith("rate-limited")
    assert 990 <= int(refused.headers["retry-after"]) <= 1000
    assert refused.headers["ratelimit"].startswith('"per-key";r=0;')
    run_cli(_database(client), "tenants", "set", "team-a", "--burst", "10")
    assert _session_ids(client, key) == []  # the refused creation made nothing


def test_a_key_refills_at_its_rate(make_client: ClientFactory) -> None:
    client, key = _keyed(make_client, tenant_requests_per_second=1.0, tenant_burst=1)
    started = time.monotonic()
    assert client.get("/v1/tenant", headers=bearer(key)).status_code == 200
    refused = client.get("/v1/tenant", headers=bearer(key))
    if time.monotonic() - started < 0.9:  # a token comes back each second: the second request is early
        assert refused.status_code == 429

    time.sleep(1.05)

    assert client.get("/v1/tenant", headers=bearer(key)).status_code == 200


def test_rate_limits_are_per_key(make_client: ClientFactory) -> None:
    client, key = _keyed(make_client, tenant_requests_per_second=0.001, tenant_burst=1)
    other = create_key(_database(client), "team-a")

    assert client.get("/v1/tenant", headers=bearer(key)).status_code == 200
    assert client.get("/v1/tenant", headers=bearer(key)).status_code == 429
    assert client.get("/v1/tenant", headers=bearer(other)).status_code == 200


@pytest.mark.parametrize("limit", ["--max-sessions", "--max-bytes", "--burst"])
def test_tenants_set_refuses_a_negative_limit(client: TestClient, limit: str) -> None:
    with pytest.raises(SystemExit):
        run_cli(_database(client), "tenants", "set", "team-a", limit, "-1")


def test_quota_usage_counts_the_tenants_arrays_exactly(make_client: ClientFactory) -> None:
    client, key = _keyed(make_client)
    created = ok(send(client, "POST", "/v1/sessions", _body(5), headers=bearer(key)), 201)
    ok(send(client, "POST", f"/v1/sessions/{created['id']}/step", {"grads": {"w": [1.0] * 5}}, headers=bearer(key)))
    state = ok(client.get(f"/v1/sessions/{created['id']}/state_dict", headers=bearer(key)))

    arrays = [np.asarray(value, dtype=np.float32) for value in state["state"]["0"].values() if np.ndim(value) > 0]
    assert _usage(client, key)["max_bytes"]["usage"] == 5 * 4 + sum(array.nbytes for array in arrays)
