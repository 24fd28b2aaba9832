"""Helpers for the tests of aggregating sessions (docs/api.md, "Data-parallel training"), in-process."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy
from fastapi.testclient import TestClient

from tests.api.conftest import JSON, SAFETENSORS, ok, send, strict_json

ROUND_WAIT_SECONDS = 0.3
"""The server's OPTIM_ROUND_WAIT_SECONDS in these tests: how long a contribution to an open round is held before 202."""
PARAMS: dict[str, Any] = {"w": [[1.0, -2.0, 3.0], [0.5, 0.0, -0.25]], "b": [0.1, -0.2, 0.3]}
GRADS: dict[str, Any] = {"w": [[0.5, -1.0, 0.25], [1.0, 2.0, -3.0]], "b": [1.0, -1.0, 0.5]}
SYNC: dict[str, Any] = {"mode": "sync", "workers": 2}
ASYNC: dict[str, Any] = {"mode": "async", "max_staleness": 1}


def create_body(aggregation: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"optimizer": "rmsprop", "params": PARAMS, **extra}
    if aggregation is not None:
        body["aggregation"] = dict(aggregation)
    return body


def create(client: TestClient, aggregation: Mapping[str, Any] | None, **extra: Any) -> str:
    created = ok(send(client, "POST", "/v1/sessions", create_body(aggregation, **extra)), 201)
    session_id: str = created["id"]
    return session_id


def contribute_json(client: TestClient, session_id: str, fields: Mapping[str, Any], **headers: str) -> Any:
    """A contribution as JSON: the grads, and ``fields`` (worker, based_on_step, weight, ...) as given."""
    body = {"grads": GRADS, **fields}
    return client.post(
        f"/v1/sessions/{session_id}/step",
        content=json.dumps(body).encode(),
        headers={"Content-Type": JSON, **headers},
    )


def contribute_safetensors(client: TestClient, session_id: str, metadata: Mapping[str, str], **headers: str) -> Any:
    """A contribution as safetensors: the grads as float32 tensors, ``metadata`` as given (strings)."""
    tensors = {name: np.asarray(value, dtype=np.float32) for name, value in GRADS.items()}
    body = safetensors.numpy.save(tensors, metadata=dict(metadata) or None)
    return client.post(
        f"/v1/sessions/{session_id}/step", content=body, headers={"Content-Type": SAFETENSORS, **headers}
    )


def summary(client: TestClient, session_id: str) -> dict[str, Any]:
    document: dict[str, Any] = ok(client.get(f"/v1/sessions/{session_id}"))
    return document


def params(client: TestClient, session_id: str) -> dict[str, Any]:
    document: dict[str, Any] = ok(client.get(f"/v1/sessions/{session_id}/params"))
    return document


def round_state(client: TestClient, session_id: str, round_number: int) -> Any:
    return client.get(f"/v1/sessions/{session_id}/rounds/{round_number}")


def open_round(client: TestClient, session_id: str, round_number: int) -> dict[str, Any]:
    """The 202 of a round still open: its body, after checking its Location."""
    response = round_state(client, session_id, round_number)
    assert response.status_code == 202, f"{response.status_code} {response.text}"
    assert response.headers["location"] == f"/v1/sessions/{session_id}/rounds/{round_number}"
    document: dict[str, Any] = strict_json(response.content)
    return document


def assert_names_field(response: Any, status: int, *fields: str) -> dict[str, Any]:
    """A problem+json of ``status`` that names one of ``fields``: in an error's loc, or in its message."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:2000]}"
    assert response.headers["content-type"].split(";")[0] == "application/problem+json", response.headers
    problem: dict[str, Any] = strict_json(response.content)
    errors = problem.get("errors") or []
    named = [
        error
        for error in errors
        if any(field in error.get("loc", []) or field in str(error.get("msg", "")) for field in fields)
    ]
    assert named, f"no error names {' or '.join(fields)}: {response.text}"
    return problem
