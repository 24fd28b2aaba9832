"""Tenants: each session is its creator's tenant's, invisible to every other tenant, and reached only with
a valid API key once a key exists. Runs on SQLite and on PostgreSQL."""

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.tenancy.startup import InsecureStart
from tests.api.conftest import SAFETENSORS, ClientFactory, assert_problem, ok, send
from tests.tenancy import bearer, create_key, key_id, run_cli

BODY = {"optimizer": "rmsprop", "params": {"w": [1.0, -2.0, 3.0]}, "hyperparameters": {"lr": 0.1}}
STATE_DICT = {
    "state": {},
    "param_groups": [
        {
            "lr": 0.1, "momentum": 0.0, "alpha": 0.99, "eps": 1e-8, "centered": False, "weight_decay": 0.0,
            "capturable": False, "foreach": None, "maximize": False, "differentiable": False,
            "params": [0], "param_names": ["w"],
        }
    ],
}  # fmt: skip
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "{url}", None),
    ("PATCH", "{url}", {"hyperparameters": {"lr": 0.5}}),
    ("DELETE", "{url}", None),
    ("POST", "{url}/step", {"grads": {"w": [1.0, 1.0, 1.0]}}),
    ("GET", "{url}/params", None),
    ("GET", "{url}/state_dict", None),
    ("PUT", "{url}/state_dict", STATE_DICT),
    ("GET", "{url}/checkpoint", None),
]
"""Every endpoint of one session, with a body it would accept from the session's own tenant."""


def _database(client: TestClient) -> str:
    settings: Settings = client.app.state.service.settings  # type: ignore[attr-defined]
    return settings.database_url


def _snapshot(client: TestClient, session_url: str, key: str) -> tuple[str, bytes, dict[str, Any]]:
    """Everything a session holds, exactly: its ETag, its checkpoint's bytes, and its summary."""
    checkpoint = client.get(f"{session_url}/checkpoint", headers={**bearer(key), "Accept": SAFETENSORS})
    summary = client.get(session_url, headers=bearer(key))
    assert checkpoint.status_code == summary.status_code == 200, summary.text
    return summary.headers["etag"], checkpoint.content, summary.json()


def _request(client: TestClient, method: str, url: str, body: Any, headers: dict[str, str]) -> Any:
    return send(client, method, url, body, headers=headers)


@pytest.fixture
def tenants(client: TestClient) -> tuple[TestClient, str, str, str]:
    """The service with a session of tenant A (stepped once), and keys of tenants A and B."""
    database = _database(client)
    key_a, key_b = create_key(database, "team-a"), create_key(database, "team-b")
    created = ok(send(client, "POST", "/v1/sessions", BODY, headers=bearer(key_a)), 201)
    ok(send(client, "POST", f"/v1/sessions/{created['id']}/step", {"grads": {"w": [1, 1, 1]}}, headers=bearer(key_a)))
    return client, f"/v1/sessions/{created['id']}", key_a, key_b


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_another_tenants_session_is_404_on_every_endpoint_exactly_as_a_missing_one_and_stays_byte_for_byte_the_same(
    tenants: tuple[TestClient, str, str, str], method: str, path: str, body: Any
) -> None:
    client, session_url, key_a, key_b = tenants
    before = _snapshot(client, session_url, key_a)

    # One request id for both, which each problem names as its instance.
    headers = {**bearer(key_b), "X-Request-ID": "one-id"}
    refused = _request(client, method, path.format(url=session_url), body, headers)
    missing = _request(client, method, path.format(url="/v1/sessions/NoSuchSession0"), body, headers)

    problem = assert_problem(refused, 404)
    expected = assert_problem(missing, 404)
    session_id = session_url.rsplit("/", 1)[1]
    assert problem["detail"].replace(session_id, "NoSuchSession0") == expected["detail"]
    assert {**problem, "detail": ""} == {**expected, "detail": ""}
    assert _snapshot(client, session_url, key_a) == before


def test_a_list_shows_only_the_callers_tenants_sessions(tenants: tuple[TestClient, str, str, str]) -> None:
    client, session_url, key_a, key_b = tenants
    of_b = ok(send(client, "POST", "/v1/sessions", BODY, headers=bearer(key_b)), 201)

    listed_a = ok(client.get("/v1/sessions", headers=bearer(key_a)))["items"]
    listed_b = ok(client.get("/v1/sessions", headers=bearer(key_b)))["items"]

    assert [item["id"] for item in listed_a] == [session_url.rsplit("/", 1)[1]]
    assert [item["id"] for item in listed_b] == [of_b["id"]]
    assert {item["tenant"] for item in listed_a} == {"team-a"}


@pytest.mark.parametrize(("method", "path", "body"), [*ENDPOINTS, ("GET", "/v1/sessions", None)])
def test_without_a_key_every_endpoint_is_401_with_a_bearer_challenge_once_a_key_exists(
    tenants: tuple[TestClient, str, str, str], method: str, path: str, body: Any
) -> None:
    client, session_url, key_a, _ = tenants
    before = _snapshot(client, session_url, key_a)

    refused = _request(client, method, path.format(url=session_url), body, {})

    assert_problem(refused, 401)
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert _snapshot(client, session_url, key_a) == before


@pytest.mark.parametrize(
    "token",
    [
        "osk_000000000000_" + "A" * 43,  # shaped like a key, but no such key
        "not-a-key",
        "",
    ],
)
def test_a_key_that_is_not_one_is_401_naming_an_invalid_token(
    tenants: tuple[TestClient, str, str, str], token: str
) -> None:
    client, session_url, _, _ = tenants

    refused = client.get(session_url, headers={"Authorization": f"Bearer {token}"})

    assert_problem(refused, 401)
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


def test_a_key_with_a_wrong_secret_is_401(tenants: tuple[TestClient, str, str, str]) -> None:
    client, session_url, key_a, _ = tenants
    secret = key_a.split("_", 2)[2]
    forged = key_a[: -len(secret)] + ("B" if secret[0] != "B" else "C") + secret[1:]

    assert_problem(client.get(session_url, headers=bearer(forged)), 401)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_a_revoked_key_is_401_at_once_on_every_endpoint(
    tenants: tuple[TestClient, str, str, str], method: str, path: str, body: Any
) -> None:
    client, session_url, key_a, _ = tenants
    spare = create_key(_database(client), "team-a")
    before = _snapshot(client, session_url, spare)

    assert "revoked" in run_cli(_database(client), "keys", "revoke", key_id(key_a))
    refused = _request(client, method, path.format(url=session_url), body, bearer(key_a))

    assert_problem(refused, 401)
    assert _snapshot(client, session_url, spare) == before


def test_keys_list_shows_tenant_creation_and_last_use_but_never_a_secret(
    tenants: tuple[TestClient, str, str, str],
) -> None:
    client, _, key_a, key_b = tenants

    listing = run_cli(_database(client), "keys", "list")

    for key in (key_a, key_b):
        assert key_id(key) in listing
        assert key.split("_", 2)[2] not in listing
    row_a = next(line for line in listing.splitlines() if key_id(key_a) in line)
    assert "team-a" in row_a
    assert row_a.count("Z") == 2  # created, and last used (by the fixture's requests)


def test_an_admin_key_lists_every_tenants_sessions_and_reads_their_summaries_but_cannot_step_them(
    tenants: tuple[TestClient, str, str, str],
) -> None:
    client, session_url, key_a, key_b = tenants
    ok(send(client, "POST", "/v1/sessions", BODY, headers=bearer(key_b)), 201)
    admin = create_key(_database(client), "operators", admin=True)
    before = _snapshot(client, session_url, key_a)

    listed = ok(client.get("/v1/sessions", headers=bearer(admin)))["items"]
    summary = ok(client.get(session_url, headers=bearer(admin)))
    stepped = send(client, "POST", f"{session_url}/step", {"grads": {"w": [1, 1, 1]}}, headers=bearer(admin))
    read = client.get(f"{session_url}/params", headers=bearer(admin))

    assert sorted(item["tenant"] for item in listed) == ["team-a", "team-b"]
    assert summary["tenant"] == "team-a"
    assert_problem(stepped, 403)
    assert_problem(read, 403)
    assert _snapshot(client, session_url, key_a) == before


def test_idempotency_keys_are_scoped_per_tenant(tenants: tuple[TestClient, str, str, str]) -> None:
    client, _, key_a, key_b = tenants
    headers = {"Idempotency-Key": "the-same-key"}

    of_a = ok(send(client, "POST", "/v1/sessions", BODY, headers={**bearer(key_a), **headers}), 201)
    of_b = ok(send(client, "POST", "/v1/sessions", BODY, headers={**bearer(key_b), **headers}), 201)
    again_a = ok(send(client, "POST", "/v1/sessions", BODY, headers={**bearer(key_a), **headers}), 201)

    assert of_a["id"] != of_b["id"]
    assert again_a["id"] == of_a["id"]
    assert of_b["tenant"] == "team-b"


def test_tenant_shows_the_callers_quotas_usage_and_rate_limit(make_client: ClientFactory) -> None:
    client = make_client(tenant_max_sessions=5, tenant_requests_per_second=10.0, tenant_burst=20)
    key = create_key(_database(client), "team-a")
    ok(send(client, "POST", "/v1/sessions", BODY, headers=bearer(key)), 201)

    view = ok(client.get("/v1/tenant", headers=bearer(key)))

    assert view["tenant"] == "team-a"
    assert view["key"] == {"id": key_id(key), "admin": False}
    assert view["quotas"]["max_sessions"] == {"limit": 5, "usage": 1}
    assert view["quotas"]["max_bytes"]["usage"] == 3 * 4  # three float32 params, no optimizer state yet
    assert view["rate_limit"] == {"requests_per_second": 10.0, "burst": 20}


def test_without_any_key_a_loopback_server_serves_requests_without_one_until_a_key_is_made(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.tenancy.authentication.KEYLESS_CHECK_SECONDS", 0.0)
    ok(send(client, "POST", "/v1/sessions", BODY), 201)
    assert ok(client.get("/v1/tenant"))["key"] is None

    create_key(_database(client), "team-a")

    assert_problem(client.get("/v1/sessions"), 401)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::"])
def test_a_server_on_a_public_address_without_keys_refuses_to_start_naming_the_way_out(
    new_database: Callable[[], str], host: str
) -> None:
    app = create_app(Settings(database_url=new_database(), host=host))

    with pytest.raises(InsecureStart) as refused, TestClient(app):
        pass

    assert "optim-service keys create --tenant" in str(refused.value)
    assert "--insecure-no-auth" in str(refused.value)


def test_a_server_on_a_public_address_serves_with_its_bootstrap_key_and_requires_it(
    new_database: Callable[[], str], tmp_path: Any
) -> None:
    key = run_cli(new_database(), "keys", "generate").strip()
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    settings = Settings(database_url=new_database(), host="0.0.0.0", bootstrap_key_file=key_file)

    with TestClient(create_app(settings)) as client:
        assert_problem(client.get("/v1/sessions"), 401)
        ok(send(client, "POST", "/v1/sessions", BODY, headers=bearer(key)), 201)


def test_the_insecure_opt_out_serves_without_keys_on_a_public_address(new_database: Callable[[], str]) -> None:
    settings = Settings(database_url=new_database(), host="0.0.0.0", insecure_no_auth=True)

    with TestClient(create_app(settings)) as client:
        ok(send(client, "POST", "/v1/sessions", BODY), 201)
