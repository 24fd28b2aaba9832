"""A web page the user visits cannot drive their local server.

Such a page can send a "simple" cross-site request (a POST without Content-Type, or with text/plain or
a form's type) that no preflight asks about first, or resolve a name of its own to 127.0.0.1 (DNS
rebinding) and send anything. Bodies therefore need a Content-Type the endpoint reads, the Host header
must be one the server answers, and no CORS header opens the API to other origins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.hosts import allowed_hosts, host_allowed
from service.app import create_app
from service.config import Settings
from tests.api.conftest import (
    JSON,
    SAFETENSORS,
    ClientFactory,
    Created,
    assert_problem,
    checkpoint,
    create_session,
    ok,
)

BODY = {"optimizer": "rprop", "params": {"w": [1.0, 2.0]}}
GRADS = {"grads": {"w": [0.5, -0.5]}}
SIMPLE_TYPES = [None, "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded"]
"""What a cross-site request may send without a preflight (and a form's multipart, below)."""


@pytest.fixture
def session(client: TestClient) -> Created:
    return create_session(client, BODY)


def _session_ids(client: TestClient) -> list[str]:
    return [item["id"] for item in ok(client.get("/v1/sessions"))["items"]]


def _post(client: TestClient, url: str, body: Any, content_type: str | None) -> Any:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post(url, content=json.dumps(body).encode(), headers=headers)


@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
def test_a_body_without_a_content_type_or_with_a_simple_one_is_415_and_changes_nothing(
    client: TestClient, session: Created, content_type: str | None
) -> None:
    before = checkpoint(client, session.id)

    answers = [
        _post(client, "/v1/sessions", BODY, content_type),
        _post(client, f"{session.url}/step", GRADS, content_type),
        client.patch(
            session.url,
            content=b'{"hyperparameters": {"lr": 0.5}}',
            headers={} if content_type is None else {"Content-Type": content_type},
        ),
        client.put(
            f"{session.url}/state_dict",
            content=json.dumps(before["state_dict"]).encode(),
            headers={} if content_type is None else {"Content-Type": content_type},
        ),
    ]

    for response in answers:
        problem = assert_problem(response, 415)
        assert problem["type"] == "/problems/unsupported-media-type"
        if content_type is None:
            assert "Content-Type is required" in problem["detail"]
    assert checkpoint(client, session.id) == before
    assert _session_ids(client) == [session.id]


def test_a_form_post_is_415_and_changes_nothing(client: TestClient, session: Created) -> None:
    before = checkpoint(client, session.id)

    response = client.post(f"{session.url}/step", files={"grads": ("g.json", json.dumps(GRADS), JSON)})

    assert_problem(response, 415)
    assert checkpoint(client, session.id) == before


# The Host header.


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example", "testserver"]
)
def test_a_server_on_loopback_refuses_other_hosts_with_421_and_changes_nothing(
    client: TestClient, session: Created, host: str
) -> None:
    before = checkpoint(client, session.id)

    answers = [
        client.post("/v1/sessions", json=BODY, headers={"Host": host}),
        client.post(f"{session.url}/step", json=GRADS, headers={"Host": host}),
        client.get(f"{session.url}/params", headers={"Host": host}),
        client.delete(session.url, headers={"Host": host}),
    ]

    for response in answers:
        problem = assert_problem(response, 421)
        assert problem["type"] == "/problems/host-not-allowed"
        assert host in problem["detail"]
    assert checkpoint(client, session.id) == before
    assert _session_ids(client) == [session.id]


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "LOCALHOST:1", "localhost.", "127.0.0.1", "127.0.0.1:8000", "[::1]:8000"]
)
def test_a_server_on_loopback_answers_its_loopback_names_on_any_port(client: TestClient, host: str) -> None:
    assert ok(client.post("/v1/sessions", json=BODY, headers={"Host": host}), 201)


def test_health_probes_are_answered_whatever_the_host(client: TestClient) -> None:
    for path in ("/healthz", "/readyz"):
        assert client.get(path, headers={"Host": "10.1.2.3:8000"}).status_code == 200


def test_the_production_default_does_not_answer_the_test_client_s_own_host(new_database: Callable[[], str]) -> None:
    with TestClient(create_app(Settings(database_url=new_database())), raise_server_exceptions=False) as client:
        assert_problem(client.get("/v1/sessions"), 421)


def test_a_server_off_loopback_answers_any_host_by_default(new_database: Callable[[], str]) -> None:
    settings = Settings(database_url=new_database(), host="0.0.0.0", insecure_no_auth=True)

    with TestClient(create_app(settings)) as client:
        assert ok(client.post("/v1/sessions", json=BODY, headers={"Host": "api.example.com"}), 201)


def test_a_configured_allow_list_is_the_only_one(make_client: ClientFactory) -> None:
    client = make_client(allowed_hosts="api.example.com, *.corp.example")

    for host in ["api.example.com", "api.example.com:443", "ml.corp.example", "a.b.corp.example"]:
        assert ok(client.get("/v1/sessions", headers={"Host": host})) == {"items": [], "next_cursor": None}
    for host in ["localhost", "corp.example", "evilcorp.example", "example.com", "api.example.com.evil"]:
        assert_problem(client.get("/v1/sessions", headers={"Host": host}), 421)


def test_a_star_in_the_allow_list_answers_any_host(make_client: ClientFactory) -> None:
    client = make_client(allowed_hosts="*")

    assert ok(client.get("/v1/sessions", headers={"Host": "anything.example"}))


@pytest.mark.parametrize(
    ("setting", "bind", "host", "answered"),
    [
        (None, "127.0.0.1", "localhost:1", True),
        (None, "::1", "[::1]:8000", True),
        (None, "127.0.0.5", "127.0.0.5:8000", True),
        (None, "127.0.0.5", "127.0.0.6", False),
        (None, "localhost", "127.0.0.1", True),
        ("::1", "0.0.0.0", "[::1]:9", True),
        ("Example.COM.", "0.0.0.0", "example.com", True),
        (None, "127.0.0.1", "", False),
        (None, "127.0.0.1", None, False),
    ],
)
def test_host_names_are_compared_without_case_port_or_trailing_dot(
    setting: str | None, bind: str, host: str | None, answered: bool
) -> None:
    allowed = allowed_hosts(setting, bind_host=bind)

    assert allowed is not None
    assert host_allowed(host, allowed) is answered


# CORS: closed.


def test_no_answer_opens_the_api_to_another_origin(client: TestClient, session: Created) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = client.options(
        f"{session.url}/step",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    answers = [
        preflight,
        client.get(session.url, headers=origin),
        client.get(f"{session.url}/params", headers={**origin, "Accept": SAFETENSORS}),
        client.post(f"{session.url}/step", json=GRADS, headers=origin),
        client.get("/v1/sessions/NoSuchSession0", headers=origin),
    ]

    assert preflight.status_code == 204
    for response in answers:
        assert not any(name.startswith("access-control-") for name in response.headers), response.headers
