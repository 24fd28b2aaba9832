"""Problems name the request they answer, and their types lead to pages that explain them.

Every response carries ``X-Request-ID`` (the client's, when it is sane); every problem's ``instance``
is that id, and the service's log lines for the request carry it. Every ``type`` the service can emit
has a page at ``/problems/{slug}``: those of ``PROBLEM_TYPES``, those the code names (found in its
source), and those the tests see (``assert_problem`` checks each one).
"""

from __future__ import annotations

import ast
import logging
import re
from html import escape
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import errors
from service.api.request_ids import RequestIdFilter
from service.problem_types import PROBLEM_TYPES
from service.sessions.service import Sessions
from tests.api.conftest import JSON, assert_problem, create_session, ok, send
from tests.tenancy import bearer, create_key

SERVICE = Path(__file__).resolve().parents[2] / "service"
API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BODY = {"optimizer": "rprop", "params": {"w": [1.0, 2.0]}}
NEW_ID = re.compile(r"[0-9a-f]{32}")


def problems(client: TestClient, session_url: str) -> list[Any]:
    """Answers of each kind of refusal, from the routes, the router, the step's own route and the middleware."""
    step = f"{session_url}/step"
    return [
        client.get("/v1/sessions/NoSuchSession0"),
        client.get("/v2/nowhere"),
        client.put(session_url, content=b"{}", headers={"Content-Type": JSON}),
        client.get(f"{session_url}/params", headers={"Accept": "text/csv"}),
        client.post(step, content=b'{"grads": {}}', headers={"Content-Type": "text/plain"}),
        client.post(step, content=b"{not json", headers={"Content-Type": JSON}),
        client.post(step, content=b'{"grads": {"nope": [1.0]}}', headers={"Content-Type": JSON}),
        client.post(step, content=b'{"grads": {"w": [1.0, 1.0]}}', headers={"Content-Type": JSON, "If-Match": '"9"'}),
        client.get("/problems/no-such-type"),
        client.get("/v1/sessions", headers={"Host": "evil.example"}),
    ]


def test_every_problem_names_the_request_id_that_its_answer_carries(client: TestClient) -> None:
    session = create_session(client, BODY)
    answers = problems(client, session.url)

    instances = [assert_problem(response, response.status_code)["instance"] for response in answers]

    assert {response.status_code for response in answers} >= {400, 404, 405, 406, 412, 415, 421, 422}
    assert all(NEW_ID.fullmatch(instance) for instance in instances), instances
    assert len(set(instances)) == len(instances)


def test_the_refusals_before_the_routes_name_the_request_too(client: TestClient) -> None:
    database = client.app.state.service.settings.database_url  # type: ignore[attr-defined]
    create_key(database, "team-a")

    unauthenticated = client.get("/v1/sessions", headers={"X-Request-ID": "trace-401"})
    invalid_key = client.get("/v1/sessions", headers={**bearer("osk_nope"), "X-Request-ID": "trace-401b"})

    assert assert_problem(unauthenticated, 401)["instance"] == "trace-401"
    assert assert_problem(invalid_key, 401)["instance"] == "trace-401b"


def test_a_rate_limited_request_is_a_problem_that_names_its_request(make_client: Any) -> None:
    client = make_client(tenant_requests_per_second=0.001, tenant_burst=1)
    key = create_key(client.app.state.service.settings.database_url, "team-a")
    ok(client.get("/v1/tenant", headers=bearer(key)))

    limited = client.get("/v1/tenant", headers={**bearer(key), "X-Request-ID": "over-the-limit"})

    assert assert_problem(limited, 429)["instance"] == "over-the-limit"


@pytest.mark.parametrize("request_id", ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "trace:42/span@x", "a" * 128])
def test_a_sane_client_request_id_is_echoed_on_success_and_problem_alike(client: TestClient, request_id: str) -> None:
    headers = {"X-Request-ID": request_id}

    created = send(client, "POST", "/v1/sessions", BODY, headers=headers)
    missing = client.get("/v1/sessions/NoSuchSession0", headers=headers)

    assert created.status_code == 201
    assert created.headers["x-request-id"] == request_id
    assert assert_problem(missing, 404)["instance"] == request_id


@pytest.mark.parametrize(
    "request_id", ["", "a" * 129, "has space", 'quo"te', "per%cent", "hash#", "query?", "tab\tid", "<b>"]
)
def test_a_request_id_too_long_or_with_characters_a_uri_cannot_hold_is_replaced(
    client: TestClient, request_id: str
) -> None:
    response = client.get("/v1/sessions/NoSuchSession0", headers={"X-Request-ID": request_id})

    problem = assert_problem(response, 404)
    assert NEW_ID.fullmatch(problem["instance"]), problem


def test_every_answer_carries_a_request_id_successes_and_health_included(client: TestClient) -> None:
    session = create_session(client, BODY)
    answers = [
        client.get("/healthz"),
        client.get("/readyz"),
        client.get(session.url),
        client.options(session.url),
        client.head(f"{session.url}/params"),
        client.get("/problems/not-found"),
        client.delete(session.url),
    ]

    ids = [response.headers.get("x-request-id", "") for response in answers]
    assert all(NEW_ID.fullmatch(request_id) for request_id in ids), ids


# A bug: a 500 that names the request, and the log line that names it too.


def test_a_bug_is_a_500_problem_whose_request_id_is_in_its_log_line(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    session = create_session(client, BODY)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Sessions, "summary", broken)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.ERROR, logger="service"):
        response = client.get(session.url, headers={"X-Request-ID": "bug-report-7"})

    problem = assert_problem(response, 500)
    assert problem["instance"] == "bug-report-7"
    assert problem["type"] == "/problems/internal-error"
    assert "bug-report-7" in problem["detail"]
    logged = [record for record in caplog.records if record.exc_info is not None]
    assert [record.request_id for record in logged] == ["bug-report-7"]  # type: ignore[attr-defined]
    # The next request on the same client is served.
    assert client.get("/healthz").status_code == 200


def test_log_lines_outside_a_request_name_none() -> None:
    record = logging.LogRecord("service", logging.WARNING, __file__, 1, "idle", None, None)

    RequestIdFilter().filter(record)

    assert (record.request_id, record.request) == ("-", "")  # type: ignore[attr-defined]


# Problem types and their pages.


def test_every_problem_type_has_a_page_that_explains_it(client: TestClient) -> None:
    for slug, kind in PROBLEM_TYPES.items():
        response = client.get(f"/problems/{slug}")
        assert response.status_code == 200, slug
        assert response.headers["content-type"].startswith("text/html")
        assert f"<h1>{escape(kind.title)}</h1>" in response.text, slug
        assert f"HTTP status {kind.status}" in response.text


PROBLEM_WRITERS = ("closing_problem", "_refuse")
"""The server's functions that write a problem of the type their first argument names."""


def _name(function: ast.expr) -> str | None:
    return function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)


def _text(node: ast.expr) -> list[str]:
    return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


def _emitted_slugs() -> set[str]:
    """Every problem type the service's code names: the error classes and tables of ``service/errors.py``,
    and every ``slug="..."``, ``/problems/...`` and first argument of a ``PROBLEM_WRITERS`` call in its
    source."""
    slugs = set(errors.REFUSALS.values()) | set(errors.STORAGE_PROBLEMS.values()) | set(errors.HTTP_ERRORS.values())
    classes: list[type[errors.ProblemError]] = [errors.ProblemError]
    while classes:
        kind = classes.pop()
        slugs.add(kind.slug)
        classes.extend(kind.__subclasses__())
    for path in SERVICE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "slug":
                slugs.update(_text(node.value))
            elif isinstance(node, ast.Call) and _name(node.func) in PROBLEM_WRITERS:
                slugs.update(text for argument in node.args[:1] for text in _text(argument))
        slugs.update(re.findall(r"/problems/([a-z-]+)", path.read_text()))
    return slugs


def test_every_problem_type_the_code_names_has_a_page() -> None:
    emitted = _emitted_slugs()

    assert len(emitted) > 15
    assert emitted <= set(PROBLEM_TYPES), emitted - set(PROBLEM_TYPES)


def test_the_api_documentation_lists_every_problem_type() -> None:
    documented = set(re.findall(r"`/problems/([a-z-]+)`", API_DOC.read_text()))

    assert set(PROBLEM_TYPES) <= documented, set(PROBLEM_TYPES) - documented


def test_an_unknown_problem_type_is_a_404_problem(client: TestClient) -> None:
    assert_problem(client.get("/problems/no-such-type"), 404)
