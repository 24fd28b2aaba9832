"""What only the safetensors transport has (docs/binary.md): bad files, tensor dtypes, content
negotiation (Accept → 406, Content-Type → 415), JSON and binary mixed in one exchange, and the
binary checkpoint posted back unchanged.

The contract tests that both transports share run over both in test_step.py, test_state_dict.py,
test_parity.py and test_bad_input.py (conftest.py's `transport`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save

from tests.api.conftest import (
    JSON,
    SAFETENSORS,
    Created,
    assert_problem,
    assert_same_param_bits,
    checkpoint,
    core_optimizer,
    create_safetensors,
    create_session,
    document_from_safetensors,
    held,
    media_type,
    ok,
    read_safetensors,
    response_document,
    same,
    send,
    session_count,
    state_dict_safetensors,
    step,
    step_safetensors,
    strict_json,
    to_json,
)

SHAPES: dict[str, tuple[int, ...]] = {"w": (2, 3), "b": (3,), "s": ()}
DTYPES = ["float32", "float64"]
PARAM_GROUPS: list[dict[str, Any]] = [{"params": ["w"]}, {"params": ["b", "s"], "lr": 0.02}]
BINARY_BODY = {"Content-Type": SAFETENSORS}
BINARY = {**BINARY_BODY, "Accept": SAFETENSORS}


def _body(optimizer: str, dtype: str = "float32", seed: int = 0, **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    params = {name: rng.normal(size=shape).astype(dtype) for name, shape in SHAPES.items()}
    return {"optimizer": optimizer, "params": params, "dtype": dtype, "param_groups": PARAM_GROUPS, **extra}


def _grads(rng: np.random.Generator, names: str, dtype: str) -> dict[str, np.ndarray]:
    grads = {}
    for name in names:
        grad = rng.normal(size=SHAPES[name]).astype(dtype)
        grads[name] = np.where(rng.random(SHAPES[name]) < 0.2, np.zeros_like(grad), grad)
    return grads


GRADS = _grads(np.random.default_rng(100), "wbs", "float32")


@pytest.fixture
def session(module_client: TestClient) -> Created:
    """An RMSprop session (momentum, centered: every kind of state) after one step."""
    created = create_session(module_client, _body("rmsprop", hyperparameters={"momentum": 0.9, "centered": True}))
    ok(step(module_client, created.id, GRADS))
    return created


def _valid_state_dict(client: TestClient, session: Created) -> dict[str, Any]:
    state_dict: dict[str, Any] = ok(client.get(f"{session.url}/state_dict"))
    return state_dict


# The binary body endpoints: (method, url), and a valid safetensors body for each.
BODY_ENDPOINTS = ["POST /v1/sessions", "POST {}/step", "PUT {}/state_dict"]


def _valid_binary(client: TestClient, session: Created, endpoint: str) -> bytes:
    if endpoint == "POST /v1/sessions":
        return create_safetensors(_body("rprop"))
    if endpoint == "POST {}/step":
        return step_safetensors(GRADS)
    return state_dict_safetensors(_valid_state_dict(client, session))


def _request(client: TestClient, session: Created, endpoint: str, content: bytes, **headers: str) -> Any:
    method, url = endpoint.split(" ")
    return client.request(method, url.format(session.url), content=content, headers=headers)


def _assert_unchanged(client: TestClient, session: Created, before: dict[str, Any], count: int) -> None:
    """The session as it was (read over JSON, which every other test trusts) and no new session."""
    assert checkpoint(client, session.id) == before
    assert session_count(client) == count


def _header(header: Any) -> bytes:
    """A safetensors file's first 8 + n bytes: the header's length and the header."""
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text


def test_the_valid_binary_bodies_the_bad_ones_are_made_from_are_accepted(
    module_client: TestClient, session: Created
) -> None:
    for endpoint in BODY_ENDPOINTS:
        response = _request(
            module_client, session, endpoint, _valid_binary(module_client, session, endpoint), **BINARY_BODY
        )
        assert response.status_code < 300, f"{endpoint}: {response.status_code} {response.text}"


# Files that are not safetensors files: 400 on every body endpoint, whatever the endpoint's body.
MALFORMED: list[Any] = [
    pytest.param(lambda valid: b"", id="empty"),
    pytest.param(lambda valid: b"\x10\x00\x00", id="shorter_than_the_header_length"),
    pytest.param(lambda valid: valid[:8], id="header_length_only"),
    pytest.param(lambda valid: valid[:20], id="truncated_in_the_header"),
    pytest.param(lambda valid: valid[:-4], id="truncated_in_the_data"),
    pytest.param(lambda valid: (10**6).to_bytes(8, "little") + valid[8:], id="header_length_past_the_end"),
    pytest.param(lambda valid: (2**63).to_bytes(8, "little") + valid[8:], id="header_length_huge"),
    pytest.param(lambda valid: (0).to_bytes(8, "little"), id="empty_header"),
    pytest.param(lambda valid: _header({}).replace(b"{}", b"{x"), id="header_not_json"),
    pytest.param(lambda valid: _header([]), id="header_a_list"),
    pytest.param(lambda valid: _header({"w": "F32"}), id="tensor_entry_not_an_object"),
    pytest.param(
        lambda valid: _header({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}) + bytes(20),
        id="offsets_not_matching_the_shape",
    ),
    pytest.param(
        lambda valid: _header({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}) + bytes(16),
        id="offsets_past_the_end",
    ),
    pytest.param(
        lambda valid: _header({"w": {"dtype": "X32", "shape": [2, 3], "data_offsets": [0, 24]}}) + bytes(24),
        id="unknown_dtype_name",
    ),
    pytest.param(
        lambda valid: (
            _header({"__metadata__": {"step": 3}, "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}})
            + bytes(4)
        ),
        id="metadata_value_not_a_string",
    ),
    pytest.param(lambda valid: b'{"grads": {"s": 1.0}}', id="a_json_body"),
    pytest.param(lambda valid: bytes(range(256)) * 4, id="garbage"),
]


@pytest.mark.parametrize("make", MALFORMED)
@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
def test_a_malformed_or_truncated_safetensors_body_is_400_and_changes_nothing(
    module_client: TestClient, session: Created, endpoint: str, make: Callable[[bytes], bytes]
) -> None:
    content = make(_valid_binary(module_client, session, endpoint))
    before, count = checkpoint(module_client, session.id), session_count(module_client)

    response = _request(module_client, session, endpoint, content, **BINARY_BODY)

    assert_problem(response, 400)
    _assert_unchanged(module_client, session, before, count)


BAD_DTYPES = ["int32", "int64", "bool", "float16", "uint8", "int8"]


def _bad_tensor(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def _bad_dtype_body(client: TestClient, session: Created, endpoint: str, dtype: str) -> tuple[bytes, list[Any]]:
    """A valid binary body of `endpoint` with one tensor of `dtype`, and the loc naming it."""
    if endpoint == "POST /v1/sessions":
        body = _body("rprop")
        tensors = {f"params/{name}": value for name, value in body.pop("params").items()}
        tensors["params/w"] = _bad_tensor(dtype, SHAPES["w"])
        fields = {key: json.dumps(to_json(value)) for key, value in body.items()}
        return save(tensors, metadata=fields), ["body", "params", "w"]
    if endpoint == "POST {}/step":
        return save({**GRADS, "b": _bad_tensor(dtype, SHAPES["b"])}), ["body", "grads", "b"]
    state_dict = _valid_state_dict(client, session)
    tensors = {
        f"state/{index}/{key}": np.asarray(value, np.float32)
        for index, entry in state_dict["state"].items()
        for key, value in entry.items()
        if key != "step"
    }
    tensors["state/0/momentum_buffer"] = _bad_tensor(dtype, SHAPES["w"])
    state = {index: {"step": entry["step"]} for index, entry in state_dict["state"].items()}
    fields = {"param_groups": json.dumps(state_dict["param_groups"]), "state": json.dumps(state)}
    return save(tensors, metadata=fields), ["body", "state", "0", "momentum_buffer"]


@pytest.mark.parametrize("dtype", BAD_DTYPES)
@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
def test_a_tensor_that_is_not_float32_or_float64_is_422_naming_it_and_changes_nothing(
    module_client: TestClient, session: Created, endpoint: str, dtype: str
) -> None:
    content, loc = _bad_dtype_body(module_client, session, endpoint, dtype)
    before, count = checkpoint(module_client, session.id), session_count(module_client)

    response = _request(module_client, session, endpoint, content, **BINARY_BODY)

    assert_problem(response, 422, loc, dtype)
    _assert_unchanged(module_client, session, before, count)


# Tensor dtypes safetensors has and numpy has not: no less a client's error than int32 is.
@pytest.mark.parametrize(("code", "itemsize"), [("BF16", 2), ("F8_E4M3", 1), ("F8_E5M2", 1)])
def test_a_tensor_of_a_dtype_numpy_lacks_is_422_naming_it_and_changes_nothing(
    module_client: TestClient, session: Created, code: str, itemsize: int
) -> None:
    content = _header({"b": {"dtype": code, "shape": [3], "data_offsets": [0, 3 * itemsize]}}) + bytes(3 * itemsize)
    before = checkpoint(module_client, session.id)

    response = module_client.post(f"{session.url}/step", content=content, headers=BINARY_BODY)

    assert_problem(response, 422, ["body", "grads", "b"])
    assert checkpoint(module_client, session.id) == before


NOT_ACCEPTABLE = [
    "text/html",
    "application/xml",
    "image/*",
    "application/json;q=0, application/vnd.safetensors;q=0",
    "",
]
# The endpoints that answer with arrays, in JSON or safetensors: (method, url, body kind, body format).
ARRAY_ENDPOINTS = [
    pytest.param(method, url, kind, content_type, id=f"{method} {url} {content_type or ''}".strip())
    for method, url, kind in [
        ("POST", "/v1/sessions", "create"),
        ("POST", "{}/step", "step"),
        ("GET", "{}/params", None),
        ("GET", "{}/state_dict", None),
        ("GET", "{}/checkpoint", None),
    ]
    for content_type in ([JSON, SAFETENSORS] if kind else [None])
]


@pytest.mark.parametrize("accept", NOT_ACCEPTABLE)
@pytest.mark.parametrize(("method", "url", "kind", "content_type"), ARRAY_ENDPOINTS)
def test_an_accept_naming_nothing_an_array_endpoint_speaks_is_406_and_changes_nothing(
    module_client: TestClient,
    session: Created,
    method: str,
    url: str,
    kind: str | None,
    content_type: str | None,
    accept: str,
) -> None:
    bodies: dict[str, tuple[Any, Callable[[Any], bytes]]] = {
        "create": (_body("rprop"), create_safetensors),
        "step": ({"grads": GRADS}, lambda document: step_safetensors(document["grads"])),
    }
    headers = {"Accept": accept}
    content = None
    if kind is not None and content_type is not None:
        document, encode = bodies[kind]
        content = encode(document) if content_type == SAFETENSORS else json.dumps(to_json(document)).encode()
        headers["Content-Type"] = content_type
    before, count = checkpoint(module_client, session.id), session_count(module_client)

    response = module_client.request(method, url.format(session.url), content=content, headers=headers)

    assert_problem(response, 406)
    _assert_unchanged(module_client, session, before, count)


@pytest.mark.parametrize("accept", [SAFETENSORS, "text/html", ""])
def test_an_accept_naming_nothing_a_json_only_endpoint_speaks_is_406_and_changes_nothing(
    module_client: TestClient, session: Created, accept: str
) -> None:
    state_dict = _valid_state_dict(module_client, session)
    before, count = checkpoint(module_client, session.id), session_count(module_client)
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/v1/sessions", None),
        ("GET", session.url, None),
        ("PATCH", session.url, {"hyperparameters": {"lr": 0.5}}),
        ("PUT", f"{session.url}/state_dict", state_dict),
    ]

    for method, url, body in requests:
        response = send(module_client, method, url, body, headers={"Accept": accept})
        assert_problem(response, 406)

    _assert_unchanged(module_client, session, before, count)


UNREAD_CONTENT_TYPES = ["application/octet-stream", "application/safetensors", "application/x-safetensors"]


@pytest.mark.parametrize("content_type", UNREAD_CONTENT_TYPES)
@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
def test_a_safetensors_body_under_a_content_type_the_endpoint_does_not_read_is_415_and_changes_nothing(
    module_client: TestClient, session: Created, endpoint: str, content_type: str
) -> None:
    content = _valid_binary(module_client, session, endpoint)
    before, count = checkpoint(module_client, session.id), session_count(module_client)

    response = _request(module_client, session, endpoint, content, **{"Content-Type": content_type})

    assert_problem(response, 415)
    _assert_unchanged(module_client, session, before, count)


@pytest.mark.parametrize(
    "content",
    [
        save({}, metadata={"hyperparameters": '{"lr": 0.5}'}),
        b'{"hyperparameters": {"lr": 0.5}}',
    ],
    ids=["safetensors_body", "json_body"],
)
def test_patch_declared_safetensors_is_415_and_changes_nothing(
    module_client: TestClient, session: Created, content: bytes
) -> None:
    before, count = checkpoint(module_client, session.id), session_count(module_client)

    response = module_client.patch(session.url, content=content, headers=BINARY_BODY)

    assert_problem(response, 415)
    _assert_unchanged(module_client, session, before, count)


# JSON and safetensors mixed: the format of the request and the format of the answer are independent.


def _json_arrays(response: Any) -> dict[str, Any]:
    assert media_type(response) == JSON, response.headers
    document: dict[str, Any] = strict_json(response.content)
    return document


def _binary_arrays(response: Any) -> dict[str, Any]:
    assert media_type(response) == SAFETENSORS, response.headers
    return response_document(response)


@pytest.mark.parametrize("dtype", DTYPES)
def test_json_and_binary_requests_and_answers_mixed_give_the_same_params(module_client: TestClient, dtype: str) -> None:
    body = _body("rmsprop", dtype, hyperparameters={"momentum": 0.5})
    core = core_optimizer(body)
    json_body = json.dumps(to_json(body)).encode()
    # Four sessions alike, created in all four combinations of request and answer format.
    created = [
        _json_arrays(module_client.post("/v1/sessions", content=json_body, headers={"Content-Type": JSON})),
        _binary_arrays(
            module_client.post("/v1/sessions", content=json_body, headers={"Content-Type": JSON, "Accept": SAFETENSORS})
        ),
        _json_arrays(module_client.post("/v1/sessions", content=create_safetensors(body), headers=BINARY_BODY)),
        _binary_arrays(module_client.post("/v1/sessions", content=create_safetensors(body), headers=BINARY)),
    ]
    for answer in created:
        assert_same_param_bits(answer["params"], core.params, dtype)
    ids = [answer["id"] for answer in created]
    rng = np.random.default_rng(1)

    for n, names in enumerate(["wbs", "w", "bs"], start=1):
        grads = _grads(rng, names, dtype)
        core.step(grads)
        json_grads, binary_grads = json.dumps(to_json({"grads": grads})).encode(), step_safetensors(grads)
        answers = [
            _json_arrays(module_client.post(f"/v1/sessions/{ids[0]}/step", content=json_grads,
                                            headers={"Content-Type": JSON})),
            _binary_arrays(module_client.post(f"/v1/sessions/{ids[1]}/step", content=json_grads,
                                              headers={"Content-Type": JSON, "Accept": SAFETENSORS})),
            _json_arrays(module_client.post(f"/v1/sessions/{ids[2]}/step", content=binary_grads, headers=BINARY_BODY)),
            _binary_arrays(module_client.post(f"/v1/sessions/{ids[3]}/step", content=binary_grads, headers=BINARY)),
        ]  # fmt: skip
        for answer in answers:
            assert answer["step"] == n
            assert_same_param_bits(answer["params"], core.params, dtype)

    for session_id in ids:
        url = f"/v1/sessions/{session_id}/params"
        assert_same_param_bits(_json_arrays(module_client.get(url))["params"], core.params, dtype)
        binary_params = _binary_arrays(module_client.get(url, headers={"Accept": SAFETENSORS}))
        assert binary_params["step"] == 3
        assert_same_param_bits(binary_params["params"], core.params, dtype)
    json_checkpoints = [_json_arrays(module_client.get(f"/v1/sessions/{i}/checkpoint")) for i in ids]
    assert all(snapshot == json_checkpoints[0] for snapshot in json_checkpoints)


@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        ("application/json;q=0.5, application/vnd.safetensors", SAFETENSORS),
        ("application/vnd.safetensors;q=0.1, application/json", JSON),
        ("application/vnd.safetensors, */*;q=0.1", SAFETENSORS),
        ("text/html, application/vnd.safetensors;q=0.2", SAFETENSORS),
        ("*/*", JSON),
        ("application/json", JSON),
    ],
)
def test_accept_q_values_choose_the_answer_format(
    module_client: TestClient, session: Created, accept: str, answer: str
) -> None:
    expected = ok(module_client.get(f"{session.url}/params"))

    response = module_client.get(f"{session.url}/params", headers={"Accept": accept})

    assert response.status_code == 200, response.text
    assert media_type(response) == answer
    document = response_document(response) if answer == SAFETENSORS else strict_json(response.content)
    assert document["step"] == expected["step"]
    expected_params = {name: np.asarray(value, np.float32) for name, value in expected["params"].items()}
    assert_same_param_bits(document["params"], expected_params, "float32")


def test_an_idempotency_key_replayed_with_the_same_grads_in_the_other_format_is_a_different_body(
    module_client: TestClient, session: Created
) -> None:
    url = f"{session.url}/step"
    headers = {"Idempotency-Key": "format"}
    ok(module_client.post(url, content=step_safetensors(GRADS), headers={**BINARY, **headers}))
    before = checkpoint(module_client, session.id)

    json_grads = json.dumps(to_json({"grads": GRADS})).encode()
    response = module_client.post(url, content=json_grads, headers={"Content-Type": JSON, **headers})

    assert_problem(response, 422)
    assert checkpoint(module_client, session.id) == before
    replay = module_client.post(url, content=step_safetensors(GRADS), headers={**BINARY, **headers})
    assert ok(replay)["step"] == 2
    assert checkpoint(module_client, session.id) == before


def test_float32_grads_are_cast_to_a_float64_session_like_the_core(module_client: TestClient) -> None:
    body = _body("rprop", "float64")
    core = core_optimizer(body)
    created = create_session(module_client, body)
    grads = _grads(np.random.default_rng(2), "wbs", "float32")
    core.step({name: value.astype(np.float64) for name, value in grads.items()})

    response = module_client.post(f"{created.url}/step", content=step_safetensors(grads), headers=BINARY)

    assert_same_param_bits(ok(response)["params"], core.params, "float64")


def test_a_binary_create_without_param_groups_orders_the_params_as_the_file_lists_them(
    module_client: TestClient,
) -> None:
    """docs/binary.md: "Without param_groups, a binary create orders the params as the file lists
    them" (in JSON, the body's order): the order is the params' state_dict indices."""
    params = {name: np.full(2, index, np.float32) for index, name in enumerate(["w", "b", "s", "a", "z", "m"])}
    content = save({f"params/{name}": value for name, value in params.items()}, metadata={"optimizer": '"rprop"'})
    file_order = [name.removeprefix("params/") for name in read_safetensors(content)[0]]

    for _ in range(3):
        created = ok(module_client.post("/v1/sessions", content=content, headers=BINARY_BODY), 201)
        assert created["param_groups"][0]["params"] == file_order
        state_dict = ok(module_client.get(f"/v1/sessions/{created['id']}/state_dict"))
        assert state_dict["param_groups"][0]["param_names"] == file_order


# The binary checkpoint: GET it as safetensors, POST the file back unchanged.

CHECKPOINT_CONFIGS: dict[str, dict[str, Any]] = {
    "rprop": {"hyperparameters": {"lr": 0.03, "etas": [0.4, 1.3]}},
    "rmsprop_momentum_centered": {"hyperparameters": {"momentum": 0.9, "centered": True, "lr": 0.02}},
}


@pytest.mark.parametrize("transport", ["binary"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CHECKPOINT_CONFIGS)
def test_a_binary_checkpoint_posted_back_unchanged_continues_bit_for_bit_step_counter_included(
    module_client: TestClient, transport: str, config: str, dtype: str
) -> None:
    body = _body(config.split("_")[0], dtype, step=5, **CHECKPOINT_CONFIGS[config])
    original = create_session(module_client, body)
    rng = np.random.default_rng(3)
    for names in ["w", "wbs", "bs"]:
        ok(step(module_client, original.id, _grads(rng, names, dtype)))
    ok(send(module_client, "PATCH", original.url, {"hyperparameters": {"lr": 0.07}}))
    ok(step(module_client, original.id, _grads(rng, "s", dtype)))
    response = module_client.get(f"{original.url}/checkpoint", headers={"Accept": SAFETENSORS})
    assert response.status_code == 200, response.text
    assert media_type(response) == SAFETENSORS
    snapshot = document_from_safetensors(response.content)
    assert snapshot["step"] == 9
    for name, value in snapshot["params"].items():
        held(value, dtype)  # tensors of the session's dtype
        assert name in SHAPES

    posted = module_client.post("/v1/sessions", content=response.content, headers=BINARY_BODY)

    copy_ = ok(posted, 201)
    assert copy_["id"] != original.id
    assert copy_["step"] == 9
    summary = ok(module_client.get(original.url))
    for key in ("optimizer", "dtype", "step", "param_groups", "shapes"):
        assert copy_[key] == summary[key], key
    assert same(checkpoint(module_client, copy_["id"]), checkpoint(module_client, original.id))
    for names in ["s", "wbs", "w", "wb"]:
        grads = _grads(rng, names, dtype)
        from_original = ok(step(module_client, original.id, grads))
        from_copy = ok(step(module_client, copy_["id"], grads))
        assert from_copy["step"] == from_original["step"]
        assert_same_param_bits(from_copy["params"], from_original["params"], dtype)
    assert from_copy["step"] == 13
    assert same(checkpoint(module_client, copy_["id"]), checkpoint(module_client, original.id))
