"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): creations are exactly-once too, a duplicate
of a request still in flight is 409, and an empty key is 400. Runs on SQLite and on PostgreSQL."""

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import ClientFactory, assert_problem, ok, send
from tests.held_from_outside import held_from_outside

BODY = {"optimizer": "rmsprop", "params": {"w": [1.0, -2.0, 3.0]}, "hyperparameters": {"lr": 0.1}}
GRADS = {"grads": {"w": [1.0, 1.0, 1.0]}}
IN_FLIGHT_SECONDS = 0.5
"""How long the first request is given to take its key and start waiting for the lock the test holds."""


def _database(client: TestClient) -> str:
    return str(client.app.state.service.settings.database_url)  # type: ignore[attr-defined]


def _in_a_thread(request: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(request()))
    thread.start()
    return thread, answers


@pytest.fixture
def patient_client(make_client: ClientFactory) -> TestClient:
    return make_client(lock_timeout_seconds=30.0, write_timeout_seconds=30.0)


def test_a_duplicate_step_while_the_first_is_in_flight_is_409_and_a_retry_after_gets_the_first_answer(
    patient_client: TestClient,
) -> None:
    client = patient_client
    created = ok(send(client, "POST", "/v1/sessions", BODY), 201)
    url, key = f"/v1/sessions/{created['id']}/step", {"Idempotency-Key": "step-1"}

    with held_from_outside(_database(client), session_id=created["id"]):
        first, answers = _in_a_thread(lambda: send(client, "POST", url, GRADS, headers=key))
        time.sleep(IN_FLIGHT_SECONDS)
        duplicate = send(client, "POST", url, GRADS, headers=key)
    first.join(30)

    problem = assert_problem(duplicate, 409)
    assert problem["type"].endswith("idempotency-key-in-flight")
    assert int(duplicate.headers["retry-after"]) >= 1
    applied = ok(answers[0])
    assert applied["step"] == 1
    assert ok(send(client, "POST", url, GRADS, headers=key)) == applied
    assert ok(client.get(f"/v1/sessions/{created['id']}"))["step"] == 1


def test_a_duplicate_creation_while_the_first_is_in_flight_is_409_and_one_session_is_made(
    patient_client: TestClient,
) -> None:
    client = patient_client
    key = {"Idempotency-Key": "create-1"}

    with held_from_outside(_database(client), session_id=None):
        first, answers = _in_a_thread(lambda: send(client, "POST", "/v1/sessions", BODY, headers=key))
        time.sleep(IN_FLIGHT_SECONDS)
        duplicate = send(client, "POST", "/v1/sessions", BODY, headers=key)
    first.join(30)

    assert_problem(duplicate, 409)
    made = ok(answers[0], 201)
    assert ok(send(client, "POST", "/v1/sessions", BODY, headers=key), 201) == made
    assert [item["id"] for item in ok(client.get("/v1/sessions"))["items"]] == [made["id"]]


def test_a_retried_creation_answers_the_session_the_first_made_and_makes_no_other(client: TestClient) -> None:
    key = {"Idempotency-Key": "create-once"}

    first = send(client, "POST", "/v1/sessions", BODY, headers=key)
    retry = send(client, "POST", "/v1/sessions", BODY, headers=key)

    assert ok(retry, 201) == ok(first, 201)
    assert retry.headers["location"] == first.headers["location"]
    assert len(ok(client.get("/v1/sessions"))["items"]) == 1


def test_a_creation_key_reused_with_another_body_is_422_and_makes_nothing(client: TestClient) -> None:
    key = {"Idempotency-Key": "create-once"}
    ok(send(client, "POST", "/v1/sessions", BODY, headers=key), 201)

    reused = send(client, "POST", "/v1/sessions", {**BODY, "hyperparameters": {"lr": 0.2}}, headers=key)

    assert_problem(reused, 422)
    assert len(ok(client.get("/v1/sessions"))["items"]) == 1


@pytest.mark.parametrize("since", ["stepped", "deleted"])
def test_a_creation_retried_after_its_session_changed_is_409_naming_the_session(client: TestClient, since: str) -> None:
    key = {"Idempotency-Key": "create-once"}
    made = ok(send(client, "POST", "/v1/sessions", BODY, headers=key), 201)
    if since == "stepped":
        ok(send(client, "POST", f"/v1/sessions/{made['id']}/step", GRADS))
    else:
        ok(client.delete(f"/v1/sessions/{made['id']}"), 204)

    retry = send(client, "POST", "/v1/sessions", BODY, headers=key)

    problem = assert_problem(retry, 409)
    assert made["id"] in problem["detail"]
    assert len(ok(client.get("/v1/sessions"))["items"]) == (1 if since == "stepped" else 0)


@pytest.mark.parametrize("path", ["/v1/sessions", "/v1/sessions/{id}/step"])
def test_an_empty_idempotency_key_is_400_and_changes_nothing(client: TestClient, path: str) -> None:
    created = ok(send(client, "POST", "/v1/sessions", BODY), 201)

    refused = send(client, "POST", path.format(id=created["id"]), GRADS if "step" in path else BODY, headers={
        "Idempotency-Key": ""
    })  # fmt: skip

    assert_problem(refused, 400, ["header", "idempotency-key"])
    assert [item["step"] for item in ok(client.get("/v1/sessions"))["items"]] == [0]
