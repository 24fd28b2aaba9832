"""POST /step is served by a plain Starlette route placed first (``service.api.sessions.STEP_ROUTE``),
and answers exactly as FastAPI's route does: the same statuses, bodies and headers, errors included."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.api.sessions import STEP_ROUTE, step_session
from service.app import create_app
from service.config import Settings
from service.sessions.service import Sessions
from tests.api.conftest import (
    LOCAL_URL,
    SAFETENSORS,
    assert_problem,
    assert_same_param_bits,
    core_optimizer,
    ok,
    send,
    to_json,
)

BODY = {"optimizer": "rmsprop", "params": {"w": [[1.0, -2.0], [0.5, 4.0]], "b": [0.25, -0.75]}}
GRADS = {"w": [[0.1, -0.2], [0.3, 0.0]], "b": [1.0, -1.0]}
MAX_BODY_BYTES = 1000


def _client(database: Path, *, first: bool = True, declared: bool = True, root_path: str = "") -> TestClient:
    """A service whose step is served by the Starlette route placed first (``first``), FastAPI's route
    (``declared``), or both, as the app builds it."""
    app = create_app(Settings(database_url=f"sqlite:///{database}", max_body_bytes=MAX_BODY_BYTES))
    app.router.routes = [
        route
        for route in app.router.routes
        if (first or route is not STEP_ROUTE)
        and (declared or not (isinstance(route, APIRoute) and route.endpoint is step_session))
    ]
    # One request id for every request, so that the twins' answers compare byte for byte.
    return TestClient(
        app, raise_server_exceptions=False, root_path=root_path, base_url=LOCAL_URL, headers={"X-Request-ID": "twin"}
    )


@pytest.fixture(params=["", "/api"], ids=["at the root", "under a root path"])
def root_path(request: pytest.FixtureRequest) -> str:
    """Where the service is mounted: at the root, or under a root path (as behind a proxy that keeps it)."""
    mounted: str = request.param
    return mounted


@pytest.fixture
def twins(tmp_path: Path, root_path: str) -> Iterator[tuple[TestClient, TestClient]]:
    """The same service twice, as built (the Starlette route first) and with the step left to FastAPI's route."""
    with (
        _client(tmp_path / "first.sqlite3", root_path=root_path) as first,
        _client(tmp_path / "routed.sqlite3", first=False, root_path=root_path) as routed,
    ):
        yield first, routed


def _answer(response: Any, session_id: str) -> tuple[int, dict[str, str], bytes]:
    """What a client sees, with the session's id (which differs between the twins) blanked out."""
    headers = {name: value for name, value in response.headers.items() if name not in ("date", "server")}
    return response.status_code, headers, response.content.replace(session_id.encode(), b"<id>")


def _requests(session_id: str, root_path: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx request arguments): steps good and bad, and paths that are not the step's."""
    step = f"{root_path}/v1/sessions/{session_id}/step"
    json = {"Content-Type": "application/json"}
    grads = to_json(GRADS)
    return [
        ("POST", step, {"json": {"grads": grads}}),
        ("POST", step, {"json": {"grads": grads}, "headers": {"Accept": SAFETENSORS}}),
        ("POST", step, {"json": {"grads": grads}, "headers": {"Idempotency-Key": "k1"}}),
        ("POST", step, {"json": {"grads": grads}, "headers": {"Idempotency-Key": "k1"}}),
        ("POST", step, {"json": {"grads": {"b": [0.0, 0.0]}}, "headers": {"Idempotency-Key": "k1"}}),
        ("POST", step, {"json": {"grads": grads}, "headers": {"Idempotency-Key": "k" * 256}}),
        ("POST", step, {"json": {"grads": grads}, "headers": {"If-Match": '"1"'}}),
        ("POST", step, {"json": {"grads": {"w": [1.0, 2.0]}}}),
        ("POST", step, {"json": {"grads": {"nope": [1.0]}}}),
        ("POST", step, {"json": {"grads": {}}}),
        ("POST", step, {"content": b'{"grads": {"b": [NaN, 1.0]}}', "headers": json}),
        ("POST", step, {"content": b"{not json", "headers": json}),
        ("POST", step, {"content": b"[" + b"1.0," * MAX_BODY_BYTES + b"1.0]", "headers": json}),
        ("POST", step, {"content": b"grads", "headers": {"Content-Type": "text/plain"}}),
        ("POST", step, {"json": {"grads": grads}, "headers": {"Accept": "text/csv"}}),
        ("POST", step, {"content": b"\x00" * 16, "headers": {"Content-Type": SAFETENSORS}}),
        ("POST", f"{root_path}/v1/sessions/no-such-session/step", {"json": {"grads": grads}}),
        ("POST", f"{root_path}/v1/sessions/not%20an%20id/step", {"json": {"grads": grads}}),
        ("POST", f"{step}/", {"json": {"grads": grads}}),
        ("POST", f"{root_path}/v1/sessions/{session_id}/x/step", {"json": {"grads": grads}}),
        ("POST", f"{root_path}x/v1/sessions/{session_id}/step", {"json": {"grads": grads}}),
        ("GET", step, {}),
        ("PUT", step, {"json": {"grads": grads}}),
        ("GET", f"{root_path}/v1/sessions/{session_id}/params", {}),
    ]


def test_every_step_request_is_answered_as_the_route_answers_it(
    twins: tuple[TestClient, TestClient], root_path: str
) -> None:
    sessions = [ok(send(client, "POST", f"{root_path}/v1/sessions", BODY), 201)["id"] for client in twins]
    answers = [
        [
            _answer(client.request(method, path, **arguments), session_id)
            for method, path, arguments in _requests(session_id, root_path)
        ]
        for client, session_id in zip(twins, sessions, strict=True)
    ]
    requests = _requests("<id>", root_path)
    for (method, path, arguments), first, routed in zip(requests, answers[0], answers[1], strict=True):
        assert first == routed, f"{method} {path} {str(arguments)[:200]}"
    statuses = [status for status, _, _ in answers[0]]
    # The table covers what it means to: successes, replays, and each kind of refusal.
    assert {200, 400, 404, 405, 406, 412, 413, 415, 422} <= set(statuses), statuses


def test_a_failure_the_handlers_do_not_know_is_a_500_problem_either_way(
    twins: tuple[TestClient, TestClient], root_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = [ok(send(client, "POST", f"{root_path}/v1/sessions", BODY), 201)["id"] for client in twins]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Sessions, "step", broken)
    problems = []
    for client, session_id in zip(twins, sessions, strict=True):
        url = f"{root_path}/v1/sessions/{session_id}/step"
        problem = assert_problem(send(client, "POST", url, {"grads": GRADS}), 500)
        problems.append(re.sub(r"request id \w+", "request id <id>", problem["detail"]))
    assert problems[0] == problems[1], problems


def test_the_step_is_served_by_the_route_placed_first(tmp_path: Path) -> None:
    with _client(tmp_path / "db.sqlite3", declared=False) as client:
        session_id = ok(send(client, "POST", "/v1/sessions", BODY), 201)["id"]
        stepped = ok(send(client, "POST", f"/v1/sessions/{session_id}/step", {"grads": GRADS}))
    expected = core_optimizer(BODY)
    expected.step({name: np.asarray(value, dtype=np.float32) for name, value in GRADS.items()})
    assert stepped["step"] == 1
    assert_same_param_bits(stepped["params"], expected.params, "float32")
