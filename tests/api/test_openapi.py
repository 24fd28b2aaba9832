"""The OpenAPI document at /openapi.json tells clients what each operation reads and answers.

The table below is what each route can answer, worked out from the code that answers (the
authentication middleware, the body reader, the sessions, storage), not from the document; each test
holds the served document to it.
"""

import re
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import ok, send

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
SAFETENSORS = "application/vnd.safetensors"

GUARDED = frozenset({401, 429, 503})
"""The authentication middleware: no valid key, over the key's rate limit, storage not answering its look-up."""
ANY = frozenset({421, 500})
"""A Host the server does not answer, or a bug, on any route."""
ONE_SESSION = frozenset({404, 406})
"""A route about one session: no such session; Accept names nothing it answers in."""
ITS_ARRAYS = frozenset({403})
"""A route reading or changing a session's arrays: an admin key on another tenant's session."""
A_BODY = frozenset({400, 413, 415, 422})
"""A route reading a body: malformed, too large, of another media type, a field wrong."""
A_CHANGE = frozenset({403, 412, 507})
"""A route changing a session: a quota, If-Match, a full disk."""
AN_IDEMPOTENCY_KEY = frozenset({400, 409})
"""A route taking Idempotency-Key: an empty one; one still in flight, or whose answer is gone."""


@dataclass(frozen=True)
class Operation:
    success: int
    problems: frozenset[int]
    headers: frozenset[str] = frozenset()
    """Headers every success carries."""
    body: str | None = None
    """The request body's schema."""
    binary_body: bool = False
    binary_answer: bool = False
    accepted: bool = False
    """Also answers 202 Accepted, with a Location to poll (a synchronous round still open)."""


OPERATIONS = {
    ("post", "/v1/sessions"): Operation(
        201,
        GUARDED | ANY | A_BODY | A_CHANGE - {412} | AN_IDEMPOTENCY_KEY | {406},
        frozenset({"Location", "ETag"}),
        "CreateSessionRequest",
        binary_body=True,
        binary_answer=True,
    ),
    ("get", "/v1/sessions"): Operation(200, GUARDED | ANY | {406, 422}),
    ("get", "/v1/sessions/{session_id}"): Operation(200, GUARDED | ANY | ONE_SESSION, frozenset({"ETag"})),
    ("patch", "/v1/sessions/{session_id}"): Operation(
        200, GUARDED | ANY | ONE_SESSION | ITS_ARRAYS | A_BODY | A_CHANGE, frozenset({"ETag"}), "PatchSessionRequest"
    ),
    ("delete", "/v1/sessions/{session_id}"): Operation(204, GUARDED | ANY | ONE_SESSION - {406} | A_CHANGE),
    ("post", "/v1/sessions/{session_id}/step"): Operation(
        200,
        GUARDED | ANY | ONE_SESSION | A_BODY | A_CHANGE | AN_IDEMPOTENCY_KEY,
        frozenset({"ETag"}),
        "StepRequest",
        binary_body=True,
        binary_answer=True,
        accepted=True,
    ),
    ("get", "/v1/sessions/{session_id}/params"): Operation(
        200, GUARDED | ANY | ONE_SESSION | ITS_ARRAYS, frozenset({"ETag"}), binary_answer=True
    ),
    ("get", "/v1/sessions/{session_id}/state_dict"): Operation(
        200, GUARDED | ANY | ONE_SESSION | ITS_ARRAYS, frozenset({"ETag"}), binary_answer=True
    ),
    ("put", "/v1/sessions/{session_id}/state_dict"): Operation(
        200,
        GUARDED | ANY | ONE_SESSION | A_BODY | A_CHANGE,
        frozenset({"ETag"}),
        "StateDictRequest",
        binary_body=True,
    ),
    ("get", "/v1/sessions/{session_id}/checkpoint"): Operation(
        200, GUARDED | ANY | ONE_SESSION | ITS_ARRAYS, frozenset({"ETag"}), binary_answer=True
    ),
    ("get", "/v1/sessions/{session_id}/metrics"): Operation(200, GUARDED | ANY | ONE_SESSION | {422}),
    ("get", "/v1/sessions/{session_id}/rounds/{step}"): Operation(
        200,
        GUARDED | ANY | ONE_SESSION | ITS_ARRAYS | {409, 422},
        frozenset({"ETag"}),
        binary_answer=True,
        accepted=True,
    ),
    ("get", "/v1/tenant"): Operation(200, GUARDED | ANY),
    ("get", "/healthz"): Operation(200, ANY),
    ("get", "/readyz"): Operation(200, ANY | {503}),
    ("get", "/problems/{slug}"): Operation(200, ANY | {404}),
    ("get", "/metrics"): Operation(200, GUARDED | ANY | {403}),
}
NEEDS_A_KEY = ("/v1/", "/metrics")
"""Paths whose operations the authentication middleware admits first."""
ALWAYS_WITH = {401: {"WWW-Authenticate"}, 429: {"Retry-After", "RateLimit-Policy", "RateLimit"}, 507: {"Retry-After"}}
"""Headers that always come with a problem status."""


@pytest.fixture(scope="module")
def document(module_client: TestClient) -> dict[str, Any]:
    served: dict[str, Any] = ok(module_client.get("/openapi.json"))
    return served


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = document["components"][kind][name]
    return node


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = document["paths"][path][method]
    return operation


def _headers(document: dict[str, Any], answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: _resolve(document, header) for name, header in answer.get("headers", {}).items()}


def test_the_table_names_every_documented_operation(document: dict[str, Any]) -> None:
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), list(OPERATIONS), ids=lambda item: str(item))
def test_each_operation_documents_every_status_it_can_answer_and_no_other(
    document: dict[str, Any], method: str, path: str
) -> None:
    expected = OPERATIONS[method, path]
    responses = _operation(document, method, path)["responses"]
    accepted = {202} if expected.accepted else set()
    assert {int(status) for status in responses} == {expected.success} | expected.problems | accepted


@pytest.mark.parametrize(("method", "path"), list(OPERATIONS), ids=lambda item: str(item))
def test_each_problem_is_documented_as_problem_json_with_its_headers(
    document: dict[str, Any], method: str, path: str
) -> None:
    responses = _operation(document, method, path)["responses"]
    for status in OPERATIONS[method, path].problems:
        answer = responses[str(status)]
        assert set(answer["content"]) == {PROBLEM_JSON}, (status, answer)
        assert answer["content"][PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
        headers = _headers(document, answer)
        for name in ALWAYS_WITH.get(status, ()):
            assert headers[name].get("required") is True, (status, name, headers)


@pytest.mark.parametrize(("method", "path"), list(OPERATIONS), ids=lambda item: str(item))
def test_each_success_documents_its_headers_and_media_types(document: dict[str, Any], method: str, path: str) -> None:
    expected = OPERATIONS[method, path]
    answer = _operation(document, method, path)["responses"][str(expected.success)]
    headers = _headers(document, answer)
    for name in expected.headers:
        assert headers[name].get("required") is True, (name, headers)
        assert _resolve(document, headers[name])["schema"]["type"] == "string"
    content = answer.get("content", {})
    assert (SAFETENSORS in content) == expected.binary_answer, content
    if expected.binary_answer:
        binary = content[SAFETENSORS]["schema"]
        assert binary["$ref"] == content[JSON]["schema"]["$ref"], "a binary answer is the same document"
        assert "docs/binary.md" in binary["description"]


@pytest.mark.parametrize(("method", "path"), list(OPERATIONS), ids=lambda item: str(item))
def test_every_answer_may_carry_a_request_id_and_keyed_answers_the_rate_limit(
    document: dict[str, Any], method: str, path: str
) -> None:
    for status, answer in _operation(document, method, path)["responses"].items():
        headers = _headers(document, answer)
        assert "X-Request-ID" in headers, (status, headers)
        if path.startswith(NEEDS_A_KEY):
            assert {"RateLimit-Policy", "RateLimit"} <= set(headers), (status, headers)


def test_every_v1_operation_and_the_metrics_need_a_bearer_key_and_the_health_checks_none(
    document: dict[str, Any],
) -> None:
    schemes = document["components"]["securitySchemes"]
    (name,) = schemes
    assert schemes[name]["type"] == "http"
    assert schemes[name]["scheme"] == "bearer"
    for method, path in OPERATIONS:
        security = _operation(document, method, path)["security"]
        assert security == ([{name: []}] if path.startswith(NEEDS_A_KEY) else []), (method, path)


def test_problems_are_rfc_9457_with_this_apis_extension_members(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["properties"])
    assert {"errors", "quota", "limit", "usage", "requested"} <= set(problem["properties"])
    assert problem["additionalProperties"] is True, "RFC 9457: clients ignore extension members they do not know"


@pytest.mark.parametrize(("method", "path"), list(OPERATIONS), ids=lambda item: str(item))
def test_each_body_is_documented_in_json_and_where_read_in_safetensors(
    document: dict[str, Any], method: str, path: str
) -> None:
    expected = OPERATIONS[method, path]
    body = _operation(document, method, path).get("requestBody")
    if expected.body is None or body is None:
        assert body is None
        assert expected.body is None
        return
    content = body["content"]
    assert content[JSON]["schema"] == {"$ref": f"#/components/schemas/{expected.body}"}
    assert (SAFETENSORS in content) == expected.binary_body
    if expected.binary_body:
        assert content[SAFETENSORS]["schema"]["$ref"] == f"#/components/schemas/{expected.body}"
        assert "docs/binary.md" in content[SAFETENSORS]["schema"]["description"]


def test_the_documented_examples_create_a_session_step_it_and_change_it(client: TestClient) -> None:
    document = ok(client.get("/openapi.json"))

    def example(method: str, path: str) -> Any:
        return _operation(document, method, path)["requestBody"]["content"][JSON]["example"]

    created = ok(send(client, "POST", "/v1/sessions", example("post", "/v1/sessions")), 201)
    url = f"/v1/sessions/{created['id']}"
    stepped = ok(send(client, "POST", f"{url}/step", example("post", "/v1/sessions/{session_id}/step")))
    assert stepped["step"] == 1
    ok(send(client, "PATCH", url, example("patch", "/v1/sessions/{session_id}")))


@pytest.mark.parametrize(
    "name",
    ["w", "layer.0/weight", "température", "w\u200b", "a" * 256, "", "a" * 257, "a\nb", "w\n", "\x00", "x\x7f", "\x85"],
)
def test_a_param_name_is_accepted_exactly_when_it_matches_the_documented_pattern(
    module_client: TestClient, document: dict[str, Any], name: str
) -> None:
    pattern = document["components"]["schemas"]["ParamName"]["pattern"]
    # A JSON Schema pattern is ECMA-262's: its ^ and $ are the ends of the string (Python's $ also
    # matches before a final newline).
    matches = re.fullmatch(pattern.removeprefix("^").removesuffix("$"), name) is not None
    response = send(module_client, "POST", "/v1/sessions", {"optimizer": "rprop", "params": {name: [1.0]}})
    assert (response.status_code == 201) == matches, response.text


def test_an_integer_may_be_written_as_a_whole_float_as_json_schema_counts_it(module_client: TestClient) -> None:
    body = {"optimizer": "rprop", "params": {"w": [1.0, 2.0], "b": 0.5}, "step": 3.0}
    created = ok(send(module_client, "POST", "/v1/sessions", body), 201)
    assert created["step"] == 3
    url = f"/v1/sessions/{created['id']}"
    state_dict = ok(module_client.get(f"{url}/state_dict"))
    state_dict["param_groups"][0]["params"] = [float(index) for index in state_dict["param_groups"][0]["params"]]
    ok(send(module_client, "PUT", f"{url}/state_dict", state_dict))
    assert ok(module_client.get(f"{url}/state_dict"))["param_groups"][0]["params"] == [0, 1]
