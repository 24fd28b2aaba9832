"""HTTP as RFC 9110 has it: Allow names every method of a path, HEAD and OPTIONS work on every path, a
conditional GET is answered 304, each representation has its own ETag and either works in If-Match, and
a content coding the server does not decode is 415.

What a path allows is taken from the OpenAPI document (the routes as declared), not from the code
under test; HEAD is compared with GET on the same path, answer for answer.
"""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import (
    JSON,
    SAFETENSORS,
    Created,
    assert_problem,
    checkpoint,
    create_session,
    ok,
    send,
    step,
)
from tests.tenancy import bearer, create_key

BODY = {"optimizer": "rmsprop", "params": {"w": [1.0, -2.0], "b": [0.5]}}
GRADS = {"w": [0.1, 0.2], "b": [-1.0]}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
VOLATILE = ("date", "x-request-id")
"""Headers that differ between any two answers."""


@pytest.fixture
def session(client: TestClient) -> Created:
    return create_session(client, BODY)


def declared_paths(client: TestClient, session_id: str) -> dict[str, set[str]]:
    """Every path of the OpenAPI document, with a real session id and problem slug, and its methods."""
    document = ok(client.get("/openapi.json"))
    values = {"session_id": session_id, "slug": "not-found", "step": "0"}
    return {
        re.sub(r"\{(\w+)\}", lambda match: values[match.group(1)], template): {method.upper() for method in operations}
        for template, operations in document["paths"].items()
    }


def allow(response: Any) -> set[str]:
    return {method.strip() for method in response.headers["allow"].split(",")}


def expected_allow(declared: set[str]) -> set[str]:
    return declared | ({"HEAD"} if "GET" in declared else set()) | {"OPTIONS"}


def test_a_405_lists_every_method_its_path_allows(client: TestClient, session: Created) -> None:
    refused_paths = 0
    for path, declared in declared_paths(client, session.id).items():
        for method in [*(set(METHODS) - declared), "PROPFIND"]:
            response = client.request(method, path)
            assert_problem(response, 405)
            assert allow(response) == expected_allow(declared), f"{method} {path}"
            refused_paths += 1
    assert refused_paths > 10


def test_options_answers_allow_on_every_path_without_a_body(client: TestClient, session: Created) -> None:
    for path, declared in declared_paths(client, session.id).items():
        response = client.options(path)
        assert response.status_code == 204, f"{path}: {response.text}"
        assert allow(response) == expected_allow(declared), path
        assert response.content == b""


def test_options_needs_no_key_and_tells_nothing_about_the_session_an_id_names(client: TestClient) -> None:
    database = client.app.state.service.settings.database_url  # type: ignore[attr-defined]
    owner = create_key(database, "team-a")
    created = ok(send(client, "POST", "/v1/sessions", BODY, headers=bearer(owner)), 201)

    answers = [
        client.options(f"/v1/sessions/{session_id}{tail}")
        for tail in ("", "/step", "/params", "/state_dict", "/checkpoint")
        for session_id in (created["id"], "NoSuchSession0")
    ]

    for theirs, missing in zip(answers[::2], answers[1::2], strict=True):
        assert theirs.status_code == missing.status_code == 204
        assert theirs.headers["allow"] == missing.headers["allow"]
        assert theirs.content == missing.content == b""
    assert_problem(client.get(f"/v1/sessions/{created['id']}"), 401)


def test_options_on_a_path_no_route_has_is_404(client: TestClient) -> None:
    assert_problem(client.options("/v2/nothing"), 404)


def _without(headers: Any, names: tuple[str, ...]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in names}


@pytest.mark.parametrize("accept", [JSON, SAFETENSORS])
def test_head_on_every_get_path_has_the_get_answer_s_status_and_headers_and_no_body(
    client: TestClient, session: Created, accept: str
) -> None:
    paths = [path for path, declared in declared_paths(client, session.id).items() if "GET" in declared]
    paths += ["/v1/sessions/NoSuchSession0/params", "/openapi.json"]
    for path in paths:
        got = client.get(path, headers={"Accept": accept})
        head = client.head(path, headers={"Accept": accept})
        assert head.status_code == got.status_code, path
        # The metrics count every request, this HEAD too: their length moves between the two.
        volatile = (*VOLATILE, "content-length") if path == "/metrics" else VOLATILE
        assert _without(head.headers, volatile) == _without(got.headers, volatile), path
        assert head.content == b""


def test_head_is_405_where_there_is_no_get(client: TestClient, session: Created) -> None:
    response = client.head(f"{session.url}/step")

    assert response.status_code == 405
    assert allow(response) == {"POST", "OPTIONS"}
    assert response.content == b""


# Conditional reads and ETags per representation.


@pytest.mark.parametrize("accept", [JSON, SAFETENSORS])
def test_a_get_whose_if_none_match_names_its_etag_is_304_with_the_etag_and_no_body(
    client: TestClient, session: Created, accept: str
) -> None:
    url = f"{session.url}/params"
    current = client.get(url, headers={"Accept": accept})
    etag = current.headers["etag"]

    for condition in [etag, f"W/{etag}", f'"other", {etag}', "*"]:
        response = client.get(url, headers={"Accept": accept, "If-None-Match": condition})
        assert response.status_code == 304, condition
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert response.headers["vary"] == "Accept"
        assert "content-type" not in response.headers
    head = client.head(url, headers={"Accept": accept, "If-None-Match": etag})
    assert head.status_code == 304


def test_a_get_whose_if_none_match_names_an_older_version_gets_the_new_one(
    client: TestClient, session: Created
) -> None:
    url = f"{session.url}/params"
    before = client.get(url).headers["etag"]
    stepped = ok(step(client, session.id, GRADS))
    del stepped["metrics"]

    response = client.get(url, headers={"If-None-Match": before})

    assert ok(response) == stepped
    assert response.headers["etag"] != before


def test_json_and_safetensors_of_one_version_have_different_etags_and_vary_on_accept(
    client: TestClient, session: Created
) -> None:
    for path in ("/params", "/state_dict", "/checkpoint"):
        as_json = client.get(f"{session.url}{path}", headers={"Accept": JSON})
        as_safetensors = client.get(f"{session.url}{path}", headers={"Accept": SAFETENSORS})
        assert as_json.headers["etag"] != as_safetensors.headers["etag"], path
        assert as_json.headers["vary"] == as_safetensors.headers["vary"] == "Accept", path
        # The ETag of one representation does not make a cache keep the other.
        crossed = client.get(
            f"{session.url}{path}", headers={"Accept": SAFETENSORS, "If-None-Match": as_json.headers["etag"]}
        )
        assert crossed.status_code == 200
        assert crossed.content == as_safetensors.content


@pytest.mark.parametrize("seen_as", [JSON, SAFETENSORS])
def test_if_match_takes_the_etag_of_either_representation(client: TestClient, session: Created, seen_as: str) -> None:
    current = client.get(f"{session.url}/params", headers={"Accept": seen_as}).headers["etag"]

    applied = step(client, session.id, GRADS, **{"If-Match": current})

    assert ok(applied)["step"] == 1
    before = checkpoint(client, session.id)
    assert_problem(step(client, session.id, GRADS, **{"If-Match": current}), 412)
    assert checkpoint(client, session.id) == before


MALFORMED_WRITES = [
    pytest.param("POST", "/step", {"grads": {}}, id="step-without-grads"),
    pytest.param("PATCH", "", {"hyperparameters": {"lr": -1.0}}, id="patch-negative-lr"),
    pytest.param("PATCH", "", {"lr_scheduler": {"name": "StepLR", "step_size": 0}}, id="patch-bad-schedule"),
    pytest.param("PUT", "/state_dict", {"state": {}, "param_groups": []}, id="state-dict-without-groups"),
]


@pytest.mark.parametrize(("method", "path", "body"), MALFORMED_WRITES)
def test_a_malformed_write_is_422_even_with_a_stale_if_match(
    client: TestClient, session: Created, method: str, path: str, body: dict[str, Any]
) -> None:
    """The body is checked before the precondition: a request that could never succeed says why (RFC 9110
    leaves the order to the server; the OpenAPI document promises 422 for a body against its schema)."""
    ok(step(client, session.id, GRADS))
    before = checkpoint(client, session.id)

    answer = send(client, method, f"{session.url}{path}", body, headers={"If-Match": '"1"'})

    assert_problem(answer, 422)
    assert checkpoint(client, session.id) == before


def test_a_step_answered_in_safetensors_gives_an_etag_the_next_step_s_if_match_takes(
    client: TestClient, session: Created
) -> None:
    headers = {"Content-Type": JSON, "Accept": SAFETENSORS}
    first = client.post(f"{session.url}/step", content=json.dumps({"grads": GRADS}), headers=headers)
    assert first.status_code == 200, first.text

    second = client.post(
        f"{session.url}/step",
        content=json.dumps({"grads": GRADS}),
        headers={**headers, "If-Match": first.headers["etag"]},
    )

    assert second.status_code == 200, second.text
    assert second.headers["vary"] == "Accept"


# Content codings.


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, identity", "x-unknown"])
def test_a_body_with_a_content_coding_the_server_does_not_decode_is_415_naming_what_it_accepts(
    client: TestClient, session: Created, coding: str
) -> None:
    before = checkpoint(client, session.id)
    body = gzip.compress(json.dumps({"grads": GRADS}).encode())
    headers = {"Content-Type": JSON, "Content-Encoding": coding}

    stepped = client.post(f"{session.url}/step", content=body, headers=headers)
    created = client.post("/v1/sessions", content=gzip.compress(json.dumps(BODY).encode()), headers=headers)

    for response in (stepped, created):
        problem = assert_problem(response, 415)
        assert problem["type"] == "/problems/unsupported-content-encoding"
        assert response.headers["accept-encoding"] == "identity"
    assert checkpoint(client, session.id) == before
    assert [item["id"] for item in ok(client.get("/v1/sessions"))["items"]] == [session.id]


def test_a_body_whose_content_coding_is_identity_is_read(client: TestClient, session: Created) -> None:
    response = client.post(
        f"{session.url}/step",
        content=json.dumps({"grads": GRADS}),
        headers={"Content-Type": JSON, "Content-Encoding": "identity"},
    )

    assert ok(response)["step"] == 1
