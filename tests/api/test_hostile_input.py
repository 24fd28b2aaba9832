"""Hostile input: values nested deep enough to exhaust a recursive walk, param_names that are not
a list of names, state keys too long for Python's int(), and step counters past what can be counted
exactly. Each is a 4xx problem naming the field that changes nothing, and each limit's edge is
accepted and keeps working.

Bodies here are built as text or tensors by hand: the values are deeper than the test helpers'
own recursive walks should be asked to go.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from service.wire.json_arrays import MAX_STEP
from service.wire.nesting import MAX_ARRAY_DIMENSIONS, MAX_DEPTH
from tests.api.conftest import (
    SAFETENSORS,
    Created,
    assert_problem,
    binary,
    checkpoint,
    create_session,
    get_state_dict,
    ok,
    post_session,
    put_state_dict,
    same,
    send,
    session_count,
    step,
)

RPROP: dict[str, Any] = {"optimizer": "rprop", "params": {"w": [1.0, -2.0], "s": 0.5}}
GRADS: dict[str, Any] = {"w": [0.5, -1.0], "s": 2.0}
DEEP = 1000
"""Deeper than a recursive walk (from 331 levels) or repr (from about 1000) survives, within orjson's 1024."""


def _deep(depth: int, leaf: str = "1.0") -> str:
    return "[" * depth + leaf + "]" * depth


def _with(template: str, value: str) -> bytes:
    """``template`` with ``value`` in place of its ``@``, as a body."""
    return template.replace("@", value).encode()


def _session(client: TestClient) -> Created:
    created = create_session(client, RPROP)
    ok(step(client, created.id, GRADS))
    return created


def _state_dict(client: TestClient, session: Created) -> dict[str, Any]:
    """The session's state_dict as JSON values (one step in: state for both params)."""
    state_dict: dict[str, Any] = json.loads(client.get(f"{session.url}/state_dict").content)
    return state_dict


def _session_and_state_dict(client: TestClient) -> tuple[Created, dict[str, Any]]:
    session = _session(client)
    return session, _state_dict(client, session)


def _binary(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}
    return safetensors.numpy.save(arrays, metadata=metadata or None)


def _state_dict_binary(state_dict: dict[str, Any], *, groups: str | None = None, steps: str | None = None) -> bytes:
    """A PUT /state_dict body: the state's arrays as tensors, its steps and the groups as metadata text."""
    tensors = {
        f"state/{index}/{key}": value
        for index, entry in state_dict["state"].items()
        for key, value in entry.items()
        if key != "step"
    }
    state_steps = {index: {"step": entry["step"]} for index, entry in state_dict["state"].items()}
    return _binary(
        tensors,
        {"state": steps or json.dumps(state_steps), "param_groups": groups or json.dumps(state_dict["param_groups"])},
    )


def _refused_on_put_and_on_restore(
    client: TestClient, session: Created, state_dict: dict[str, Any], loc: list[Any], message: str | None = None
) -> tuple[Any, Any]:
    """PUT ``state_dict`` into ``session``, and create a session from it as from a checkpoint: both are
    422 naming ``loc`` (in the state_dict), and neither changes anything. The two responses."""
    before = checkpoint(client, session.id)
    count = session_count(client)

    put = put_state_dict(client, session.id, state_dict)
    restore = post_session(client, {**RPROP, "state_dict": state_dict, "step": 1})

    assert_problem(put, 422, ["body", *loc], message)
    assert_problem(restore, 422, ["body", "state_dict", *loc], message)
    assert same(checkpoint(client, session.id), before)
    assert session_count(client) == count
    return put, restore


def _send(client: TestClient, method: str, url: str, body: bytes, *, binary_body: bool = False) -> Any:
    content_type = SAFETENSORS if binary_body else "application/json"
    return client.request(method, url, content=body, headers={"Content-Type": content_type})


# 1. Deep nesting: arrays of more than MAX_ARRAY_DIMENSIONS, other values deeper than MAX_DEPTH.

CREATE = '{"optimizer": "rprop", "params": {"w": [1.0]}, @}'
DEEP_CREATES = [
    pytest.param(_with('{"optimizer": "rprop", "params": {"w": @}}', _deep(DEEP)), False,
                 ["body", "params", "w"], id="json_params"),
    pytest.param(_with('{"optimizer": "rprop", "params": {"w": @}}', _deep(MAX_ARRAY_DIMENSIONS + 1)), False,
                 ["body", "params", "w"], id="json_params_one_dimension_too_many"),
    pytest.param(_with(CREATE, f'"hyperparameters": {{"lr": {_deep(DEEP)}}}'), False,
                 ["body", "hyperparameters", "lr"], id="json_hyperparameter"),
    pytest.param(_with(CREATE, f'"param_groups": [{{"params": ["w"], "lr": {_deep(DEEP)}}}]'), False,
                 ["body", "param_groups", 0, "lr"], id="json_param_group"),
    pytest.param(_with(CREATE, f'"state_dict": {{"state": {{"0": {{"step": {_deep(DEEP)}}}}}, "param_groups": []}}'),
                 False, ["body", "state_dict", "state", "0", "step"], id="json_state_step"),
    pytest.param(_binary({"params/w": [1.0]}, {"optimizer": '"rprop"', "hyperparameters": f'{{"lr": {_deep(DEEP)}}}'}),
                 True, ["body", "hyperparameters", "lr"], id="binary_metadata"),
    pytest.param(_binary({"params/w": np.ones((1,) * (MAX_ARRAY_DIMENSIONS + 1))}, {"optimizer": '"rprop"'}), True,
                 ["body", "params", "w"], id="binary_tensor_of_one_dimension_too_many"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "binary_body", "loc"), DEEP_CREATES)
def test_a_create_nested_past_the_limits_is_422_naming_the_field_and_creates_nothing(
    module_client: TestClient, body: bytes, binary_body: bool, loc: list[Any]
) -> None:
    count = session_count(module_client)

    response = _send(module_client, "POST", "/v1/sessions", body, binary_body=binary_body)

    assert_problem(response, 422, loc)
    assert session_count(module_client) == count


def _deep_session_requests(state_dict: dict[str, Any]) -> list[tuple[str, str, bytes, bool, list[Any]]]:
    """(method, path under the session, body, binary, the loc it must name)."""
    groups = json.dumps(state_dict["param_groups"])
    deep_names = groups.replace('"param_names": ["w", "s"]', f'"param_names": {_deep(DEEP, chr(34) + "w" + chr(34))}')
    json_state_dict = json.dumps(state_dict)
    return [
        ("POST", "/step", _with('{"grads": {"w": @}}', _deep(DEEP)), False, ["body", "grads", "w"]),
        ("POST", "/step", _binary({"w": [1.0, 1.0]}, {"note": _deep(DEEP)}), True, ["body", "note"]),
        ("POST", "/step", _binary({"w": np.ones((1,) * 40)}, {}), True, ["body", "grads", "w"]),
        ("PUT", "/state_dict", json_state_dict.replace('"step": 1.0', f'"step": {_deep(DEEP)}', 1).encode(), False,
         ["body", "state", "0", "step"]),
        ("PUT", "/state_dict", json_state_dict.replace(groups, deep_names).encode(), False,
         ["body", "param_groups", 0, "param_names"]),
        ("PUT", "/state_dict", _state_dict_binary(state_dict, groups=deep_names), True,
         ["body", "param_groups", 0, "param_names"]),
        ("PATCH", "", _with('{"hyperparameters": {"lr": @}}', _deep(MAX_DEPTH)), False,
         ["body", "hyperparameters", "lr"]),
    ]  # fmt: skip


def test_steps_state_dicts_and_patches_nested_past_the_limits_are_422_naming_the_field_and_change_nothing(
    module_client: TestClient,
) -> None:
    session = _session(module_client)
    before = checkpoint(module_client, session.id)

    for method, path, body, binary_body, loc in _deep_session_requests(_state_dict(module_client, session)):
        response = _send(module_client, method, f"{session.url}{path}", body, binary_body=binary_body)

        assert_problem(response, 422, loc)
        assert checkpoint(module_client, session.id) == before, (method, path, loc)


@pytest.mark.usefixtures("transport")
def test_an_array_of_as_many_dimensions_as_the_limit_is_accepted_and_steps(module_client: TestClient) -> None:
    shape = (1,) * (MAX_ARRAY_DIMENSIONS - 1) + (2,)
    created = create_session(module_client, {"optimizer": "rprop", "params": {"w": np.zeros(shape, np.float32)}})

    answer = ok(step(module_client, created.id, {"w": np.ones(shape, np.float32)}))

    assert np.asarray(answer["params"]["w"]).shape == shape


# 2. param_names: a list of the group's names (strings), as torch writes it.

BAD_PARAM_NAMES = [
    pytest.param(1, id="number"),
    pytest.param(None, id="null"),
    pytest.param("ws", id="string"),
    pytest.param({"0": "w"}, id="object"),
    pytest.param(["w", 1], id="list_holding_a_number"),
    pytest.param([["w"], ["s"]], id="list_of_lists"),
]


@pytest.mark.usefixtures("transport")
@pytest.mark.parametrize("param_names", BAD_PARAM_NAMES)
def test_param_names_that_are_not_a_list_of_strings_are_422_naming_them_on_put_and_on_restore_and_change_nothing(
    module_client: TestClient, param_names: Any
) -> None:
    session, state_dict = _session_and_state_dict(module_client)
    state_dict["param_groups"][0]["param_names"] = param_names

    _refused_on_put_and_on_restore(
        module_client, session, state_dict, ["param_groups", 0, "param_names"], "must be a list"
    )


# 3. State keys and If-Match versions of more digits than any index or version has.

LONG_KEY = "0" * 5000


@pytest.mark.usefixtures("transport")
def test_a_state_key_of_thousands_of_digits_is_422_naming_it_cut_short_on_put_and_on_restore_and_changes_nothing(
    module_client: TestClient,
) -> None:
    session, state_dict = _session_and_state_dict(module_client)
    state_dict["state"] = {LONG_KEY: state_dict["state"]["0"], "1": state_dict["state"]["1"]}

    responses = _refused_on_put_and_on_restore(module_client, session, state_dict, ["state"], "has 5000 digits")

    for response in responses:
        assert LONG_KEY not in response.text
        assert response.json()["errors"][0]["loc"][-1] == LONG_KEY[:40] + "…"


def test_an_if_match_of_thousands_of_digits_names_no_version_and_changes_nothing(module_client: TestClient) -> None:
    session = _session(module_client)
    before = checkpoint(module_client, session.id)

    response = send(
        module_client, "PATCH", session.url, {"hyperparameters": {"lr": 0.5}}, headers={"If-Match": f'"{"1" * 5000}"'}
    )

    assert_problem(response, 412)
    assert checkpoint(module_client, session.id) == before


# 4. Step counters: whole numbers from 0 to MAX_STEP (2**53 - 1), which then go on counting.

BAD_STEPS = [
    pytest.param(2**63, id="2**63"),
    pytest.param(2**63 - 1, id="2**63-1"),
    pytest.param(MAX_STEP + 1, id="2**53"),
    pytest.param(-1, id="negative"),
    pytest.param(1.5, id="fraction"),
    pytest.param("1", id="string"),
]
"""(1.0 is a whole number, which JSON Schema counts as an integer: test_openapi.py has it accepted.)"""


@pytest.mark.parametrize("bad", BAD_STEPS)
def test_a_create_whose_step_is_not_a_whole_number_up_to_2_53_minus_1_is_422_and_creates_nothing(
    module_client: TestClient, bad: Any
) -> None:
    count = session_count(module_client)

    response = send(module_client, "POST", "/v1/sessions", {**RPROP, "step": bad})

    assert_problem(response, 422, ["body", "step"])
    assert session_count(module_client) == count


BAD_STATE_STEPS = [
    pytest.param(float(MAX_STEP + 1), id="2**53"),
    pytest.param(2.0**63, id="2**63"),
    pytest.param(1e300, id="1e300"),
    pytest.param(-1.0, id="negative"),
]


@pytest.mark.usefixtures("transport")
@pytest.mark.parametrize("bad", BAD_STATE_STEPS)
def test_a_state_step_past_2_53_minus_1_is_422_naming_it_on_put_and_on_restore_and_changes_nothing(
    module_client: TestClient, bad: float
) -> None:
    session, state_dict = _session_and_state_dict(module_client)
    state_dict["state"]["1"]["step"] = bad

    _refused_on_put_and_on_restore(module_client, session, state_dict, ["state", "1", "step"])


@pytest.mark.usefixtures("transport")
def test_counters_started_at_2_53_minus_1_go_on_counting_and_the_session_keeps_working(
    module_client: TestClient,
) -> None:
    _, state_dict = _session_and_state_dict(module_client)
    for entry in state_dict["state"].values():
        entry["step"] = float(MAX_STEP)
    restored = create_session(module_client, {**RPROP, "state_dict": state_dict, "step": MAX_STEP})

    answers = [ok(step(module_client, restored.id, GRADS)) for _ in range(3)]

    assert [answer["step"] for answer in answers] == [MAX_STEP + 1, MAX_STEP + 2, MAX_STEP + 3]
    after = ok(get_state_dict(module_client, restored.id))
    # A state_dict's step is a float, as torch's is: past 2**53 it counts as float64 can.
    for entry in after["state"].values():
        assert isinstance(entry["step"], float)
        assert MAX_STEP + 1 <= entry["step"] <= MAX_STEP + 3
    assert checkpoint(module_client, restored.id)["step"] == MAX_STEP + 3
    if not binary():
        ok(send(module_client, "PATCH", restored.url, {"hyperparameters": {"lr": 0.5}}))
        ok(step(module_client, restored.id, GRADS))
