"""How bodies are read: JSON has a lower limit than safetensors (its decoding takes several times its
size), a refusal is a 413 problem that says what to send instead and changes nothing, and a body read
in many chunks, with or without a declared length, is the body sent whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import (
    SAFETENSORS,
    ClientFactory,
    assert_problem,
    checkpoint,
    create_safetensors,
    create_session,
    ok,
    step_safetensors,
)

MAX_JSON_BODY_BYTES = 2000
MAX_BODY_BYTES = 20_000
SIZE = 400
"""Params whose JSON step is over the JSON limit, and whose safetensors step is under the other."""


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client(max_body_bytes=MAX_BODY_BYTES, max_json_body_bytes=MAX_JSON_BODY_BYTES)


def _grads(seed: int) -> dict[str, Any]:
    return {"w": np.random.default_rng(seed).standard_normal(SIZE).astype(np.float32)}


def _json(grads: dict[str, Any]) -> bytes:
    return json.dumps({"grads": {name: value.tolist() for name, value in grads.items()}}).encode()


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_json_body_over_the_json_limit_is_413_pointing_to_safetensors_and_the_same_grads_in_safetensors_step(
    client: TestClient,
) -> None:
    created = client.post(
        "/v1/sessions",
        content=create_safetensors({"optimizer": "rprop", "params": {"w": np.zeros(SIZE, np.float32)}}),
        headers={"Content-Type": SAFETENSORS},
    )
    session_id = ok(created, 201)["id"]
    session = f"/v1/sessions/{session_id}"
    before = checkpoint(client, session_id)
    as_json, as_binary = _json(_grads(1)), step_safetensors(_grads(1))
    assert len(as_json) > MAX_JSON_BODY_BYTES
    assert len(as_binary) <= MAX_BODY_BYTES

    refused = client.post(f"{session}/step", content=as_json, headers={"Content-Type": "application/json"})
    streamed = client.post(
        f"{session}/step", content=_chunks(as_json, 256), headers={"Content-Type": "application/json"}
    )
    unchanged = checkpoint(client, session_id)
    stepped = client.post(f"{session}/step", content=as_binary, headers={"Content-Type": SAFETENSORS})

    for response in (refused, streamed):
        problem = assert_problem(response, 413)
        assert "safetensors" in problem["detail"]
    assert "content-length" not in {key.lower() for key in streamed.request.headers}
    assert unchanged == before
    assert ok(stepped)["step"] == 1


@pytest.mark.parametrize("declared", [True, False], ids=["content_length", "chunked"])
@pytest.mark.parametrize("media_type", ["application/json", SAFETENSORS])
def test_a_body_that_arrives_in_many_chunks_is_the_body_sent_whole(
    make_client: ClientFactory, declared: bool, media_type: str
) -> None:
    client = make_client()
    grads = {"w": np.random.default_rng(2).standard_normal(5000).astype(np.float32)}
    whole = _json(grads) if media_type == "application/json" else step_safetensors(grads)
    sessions = [
        create_session(client, {"optimizer": "rprop", "params": {"w": np.zeros(5000, np.float32)}}) for _ in "ab"
    ]
    headers = {"Content-Type": media_type, **({"Content-Length": str(len(whole))} if declared else {})}

    in_one = client.post(f"{sessions[0].url}/step", content=whole, headers={"Content-Type": media_type})
    in_many = client.post(f"{sessions[1].url}/step", content=_chunks(whole, 1000), headers=headers)

    assert ("content-length" in in_many.request.headers) is declared
    assert ok(in_many) == ok(in_one)


@pytest.mark.parametrize("declared", [10, 100_000], ids=["declared_shorter", "declared_longer"])
def test_a_body_whose_content_length_is_not_its_length_is_400_and_changes_nothing(
    make_client: ClientFactory, declared: int
) -> None:
    client = make_client()
    session = create_session(client, {"optimizer": "rprop", "params": {"w": np.zeros(SIZE, np.float32)}})
    before = checkpoint(client, session.id)
    body = step_safetensors(_grads(3))

    response = client.post(
        f"{session.url}/step",
        content=_chunks(body, 1000),
        headers={"Content-Type": SAFETENSORS, "Content-Length": str(declared)},
    )

    assert_problem(response, 400, message="Content-Length")
    assert checkpoint(client, session.id) == before
