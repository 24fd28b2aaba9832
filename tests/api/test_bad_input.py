"""Every bad input of the contract: the right 4xx as application/problem+json naming the field,
and the session exactly as it was. Never a 5xx.

Most cases are JSON bodies. The "twins" (bad arrays: shapes, unknown names, NaN/inf, bad
state_dicts) go through conftest.py's transport helpers, so they run over JSON and over
safetensors; test_binary.py has the bad inputs only safetensors has.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.api.conftest import (
    ClientFactory,
    Created,
    assert_problem,
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
    strict_json,
    to_json,
)
from tests.optimizers import OPTIMIZERS, example_hyperparameters

W = [[1.0, -2.0, 3.0], [0.5, 0.0, -0.25]]
PARAMS: dict[str, Any] = {"w": W, "b": [0.1, -0.2, 0.3], "s": 1.5}
GROUPS: list[dict[str, Any]] = [{"params": ["w"]}, {"params": ["b", "s"], "lr": 0.02}]
GRADS: dict[str, Any] = {"w": [[0.5, -1.0, 0.0], [1.0, 2.0, -3.0]], "b": [1.0, -1.0, 0.5], "s": -2.0}
RPROP: dict[str, Any] = {"optimizer": "rprop", "params": PARAMS, "param_groups": GROUPS}
RMSPROP: dict[str, Any] = {
    "optimizer": "rmsprop",
    "params": PARAMS,
    "param_groups": GROUPS,
    "hyperparameters": {"momentum": 0.9, "centered": True},
}
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Bad:
    """A request body that the contract rejects: sent as JSON (`body`) or as bytes (`raw`)."""

    body: Any = None
    raw: bytes | None = None
    status: int | tuple[int, ...] = 422
    loc: Loc | None = None
    message: str | None = None


def _bad(case_id: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Bad(*args, **kwargs), id=case_id)


def _send_bad(client: TestClient, method: str, url: str, bad: Bad) -> Any:
    if bad.raw is not None:
        return send(client, method, url, raw=bad.raw)
    return send(client, method, url, raw=json.dumps(bad.body).encode())


def _assert_rejected(response: Any, bad: Bad) -> None:
    statuses = bad.status if isinstance(bad.status, tuple) else (bad.status,)
    assert response.status_code in statuses, f"expected {statuses}, got {response.status_code}: {response.text[:2000]}"
    assert_problem(response, response.status_code, list(bad.loc) if bad.loc else None, bad.message)


def _session(client: TestClient, body: dict[str, Any]) -> Created:
    """A session with some state: created, then one step with every grad."""
    created = create_session(client, body)
    ok(step(client, created.id, GRADS))
    return created


@pytest.fixture
def rprop_session(module_client: TestClient) -> Created:
    return _session(module_client, RPROP)


@pytest.fixture
def rmsprop_session(module_client: TestClient) -> Created:
    return _session(module_client, RMSPROP)


# Bodies that are not JSON objects, or not JSON at all: 400 on every body endpoint.
MALFORMED = [
    _bad("truncated", raw=b'{"grads": {"s": 1.0}', status=400),
    _bad("empty", raw=b"", status=400),
    _bad("unquoted_key", raw=b"{grads: {}}", status=400),
    _bad("single_quotes", raw=b"{'grads': {}}", status=400),
    _bad("trailing_garbage", raw=b'{"grads": {"s": 1.0}} x', status=400),
    _bad("trailing_comma", raw=b'{"grads": {"s": 1.0},}', status=400),
    _bad("invalid_utf8", raw=b'{"grads": {"s\xff": 1.0}}', status=400),
    _bad("array", raw=b"[]", status=400),
    _bad("null", raw=b"null", status=400),
    _bad("number", raw=b"1", status=400),
    _bad("string", raw=b'"grads"', status=400),
    _bad("true", raw=b"true", status=400),
    _bad("list_of_object", raw=b'[{"grads": {"s": 1.0}}]', status=400),
]

# Non-finite numbers spelled as JSON has no way to: malformed JSON, 400.
NON_FINITE_TOKENS = ["NaN", "-NaN", "nan", "Infinity", "-Infinity", "inf", "-inf", "1e999", "-1e999", "1E400", "2e308"]

STEP_CASES = [
    *MALFORMED,
    *(
        _bad(f"token_{token}_in_array", raw=b'{"grads": {"b": [1.0, %s, 2.0]}}' % token.encode(), status=400)
        for token in NON_FINITE_TOKENS
    ),
    *(
        _bad(f"token_{token}_as_0d", raw=b'{"grads": {"s": %s}}' % token.encode(), status=400)
        for token in NON_FINITE_TOKENS
    ),
    *(
        _bad(f"string_{text}_in_array", {"grads": {"b": [1.0, text, 2.0]}}, loc=("body", "grads", "b"))
        for text in ["NaN", "nan", "Infinity", "-Infinity", "inf", "1.0", ""]
    ),
    _bad("string_NaN_as_0d", {"grads": {"s": "NaN"}}, loc=("body", "grads", "s")),
    _bad("string_1_as_0d", {"grads": {"s": "1"}}, loc=("body", "grads", "s")),
    _bad("overflows_float32", {"grads": {"b": [1.0, 1e300, 2.0]}}, loc=("body", "grads", "b")),
    _bad("overflows_float32_0d", {"grads": {"s": -1e39}}, loc=("body", "grads", "s")),
    _bad("int_beyond_float64", raw=b'{"grads": {"s": 1%s}}' % (b"0" * 400), status=(400, 422)),
    _bad("missing_grads", {}, loc=("body", "grads")),
    _bad("grads_list", {"grads": [1.0]}, loc=("body", "grads")),
    _bad("grads_string", {"grads": "w"}, loc=("body", "grads")),
    _bad("grads_null", {"grads": None}, loc=("body", "grads")),
    _bad("grads_number", {"grads": 1.0}, loc=("body", "grads")),
    _bad("empty_grads", {"grads": {}}, loc=("body", "grads")),
    _bad("unknown_top_level_field", {"grads": {"s": 1.0}, "lr": 0.1}, loc=("body", "lr")),
    _bad("unknown_param_name", {"grads": {"nope": 1.0}}, loc=("body", "grads", "nope")),
    _bad("unknown_param_name_next_to_a_good_one", {"grads": {"s": 1.0, "nope": 1.0}}, loc=("body", "grads", "nope")),
    _bad("wrong_shape", {"grads": {"w": [1.0, 2.0, 3.0]}}, loc=("body", "grads", "w")),
    _bad("transposed_shape", {"grads": {"w": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}}, loc=("body", "grads", "w")),
    _bad("wrong_shape_next_to_a_good_one", {"grads": {"s": 1.0, "b": [1.0, 2.0]}}, loc=("body", "grads", "b")),
    _bad("array_for_0d", {"grads": {"s": [1.0]}}, loc=("body", "grads", "s")),
    _bad("0d_for_array", {"grads": {"b": 1.0}}, loc=("body", "grads", "b")),
    _bad("empty_array", {"grads": {"b": []}}, loc=("body", "grads", "b")),
    _bad("empty_rows", {"grads": {"w": [[], []]}}, loc=("body", "grads", "w")),
    _bad("ragged", {"grads": {"w": [[1.0, 2.0, 3.0], [4.0, 5.0]]}}, loc=("body", "grads", "w")),
    _bad("ragged_depth", {"grads": {"w": [[1.0, 2.0, 3.0], [4.0, 5.0, [6.0]]]}}, loc=("body", "grads", "w")),
    _bad("row_is_a_number", {"grads": {"w": [[1.0, 2.0, 3.0], 4.0]}}, loc=("body", "grads", "w")),
    _bad("string_in_array", {"grads": {"b": [1.0, "x", 2.0]}}, loc=("body", "grads", "b")),
    _bad("bool_in_array", {"grads": {"b": [1.0, True, 2.0]}}, loc=("body", "grads", "b")),
    _bad("bools_only", {"grads": {"b": [True, False, True]}}, loc=("body", "grads", "b")),
    _bad("null_in_array", {"grads": {"b": [1.0, None, 2.0]}}, loc=("body", "grads", "b")),
    _bad("null_in_nested_array", {"grads": {"w": [[1.0, 2.0, 3.0], [4.0, None, 6.0]]}}, loc=("body", "grads", "w")),
    _bad("null_grad", {"grads": {"s": None}}, loc=("body", "grads", "s")),
    _bad("bool_grad", {"grads": {"s": True}}, loc=("body", "grads", "s")),
    _bad("object_grad", {"grads": {"b": {"0": 1.0}}}, loc=("body", "grads", "b")),
    _bad("object_in_array", {"grads": {"b": [1.0, {}, 2.0]}}, loc=("body", "grads", "b")),
]


@pytest.mark.parametrize("bad", STEP_CASES)
def test_a_bad_step_is_rejected_with_a_problem_naming_the_field_and_changes_nothing(
    module_client: TestClient, rprop_session: Created, bad: Bad
) -> None:
    before = checkpoint(module_client, rprop_session.id)
    etag = module_client.get(rprop_session.url).headers["etag"]

    response = _send_bad(module_client, "POST", f"{rprop_session.url}/step", bad)

    _assert_rejected(response, bad)
    assert checkpoint(module_client, rprop_session.id) == before
    assert module_client.get(rprop_session.url).headers["etag"] == etag


@pytest.mark.usefixtures("transport")
def test_step_with_an_unknown_param_name_is_rejected_and_changes_nothing(
    module_client: TestClient, rprop_session: Created
) -> None:
    before = checkpoint(module_client, rprop_session.id)

    response = step(module_client, rprop_session.id, {"w": GRADS["w"], "nope": [1.0]})

    assert_problem(response, 422, ["body", "grads", "nope"])
    assert same(checkpoint(module_client, rprop_session.id), before)


# Twins: bad arrays that both transports carry (nested lists in JSON, tensors in safetensors:
# float64 for lists, an array's own dtype otherwise), sent by the transport helpers.


@dataclass(frozen=True)
class BadArrays:
    """Grads, a state_dict or a create body with a bad array in it, and the loc that names it."""

    value: Any
    loc: Loc


def _twin(case_id: str, value: Any, *loc: str | int) -> Any:
    return pytest.param(BadArrays(value, loc), id=case_id)


STEP_TWINS = [
    _twin("wrong_shape", {"w": [1.0, 2.0, 3.0]}, "body", "grads", "w"),
    _twin("transposed_shape", {"w": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}, "body", "grads", "w"),
    _twin("wrong_shape_next_to_a_good_one", {"s": 1.0, "b": [1.0, 2.0]}, "body", "grads", "b"),
    _twin("array_for_0d", {"s": [1.0]}, "body", "grads", "s"),
    _twin("0d_for_array", {"b": 1.0}, "body", "grads", "b"),
    _twin("empty_array", {"b": np.zeros(0)}, "body", "grads", "b"),
    _twin("empty_rows", {"w": np.zeros((2, 0))}, "body", "grads", "w"),
    _twin("unknown_param_name", {"nope": 1.0}, "body", "grads", "nope"),
    _twin("unknown_param_name_next_to_a_good_one", {"s": 1.0, "nope": 1.0}, "body", "grads", "nope"),
    _twin("empty_grads", {}, "body", "grads"),
    _twin("overflows_float32", {"b": [1.0, 1e300, 2.0]}, "body", "grads", "b"),
    _twin("overflows_float32_0d", {"s": -1e39}, "body", "grads", "s"),
]


@pytest.mark.usefixtures("transport")
@pytest.mark.parametrize("bad", STEP_TWINS)
def test_bad_grads_are_rejected_in_either_transport_naming_the_field_and_change_nothing(
    module_client: TestClient, rprop_session: Created, bad: BadArrays
) -> None:
    before = checkpoint(module_client, rprop_session.id)
    etag = module_client.get(rprop_session.url).headers["etag"]

    response = step(module_client, rprop_session.id, bad.value)

    assert_problem(response, 422, list(bad.loc))
    assert same(checkpoint(module_client, rprop_session.id), before)
    assert module_client.get(rprop_session.url).headers["etag"] == etag


def _non_finite_cases(
    case_id: str, make: Callable[[np.ndarray], Any], loc: Loc, shape: tuple[int, ...] = (3,), where: int = 1
) -> list[Any]:
    """One case per non-finite value and tensor dtype: `make` of a finite array with it at `where`."""
    cases = []
    for dtype in ("float32", "float64"):
        for value in (np.nan, np.inf, -np.inf):
            array = np.ones(shape, dtype)
            array.reshape(-1)[where if array.ndim else 0] = value
            cases.append(pytest.param(BadArrays(make(array), loc), id=f"{case_id}_{value}_{dtype}"))
    return cases


NON_FINITE_GRADS = [
    *_non_finite_cases("in_array", lambda array: {"b": array}, ("body", "grads", "b")),
    *_non_finite_cases("as_0d", lambda array: {"s": array}, ("body", "grads", "s"), shape=()),
    *_non_finite_cases("next_to_a_good_one", lambda array: {"w": np.ones((2, 3)), "b": array}, ("body", "grads", "b")),
]


# JSON cannot spell NaN or infinity (its twins are the token_* cases above: malformed JSON, 400).
@pytest.mark.parametrize("transport", ["binary"], indirect=True)
@pytest.mark.parametrize("bad", NON_FINITE_GRADS)
def test_a_non_finite_grad_is_rejected_naming_the_field_and_changes_nothing(
    module_client: TestClient, rprop_session: Created, transport: str, bad: BadArrays
) -> None:
    before = checkpoint(module_client, rprop_session.id)

    response = step(module_client, rprop_session.id, bad.value)

    assert_problem(response, 422, list(bad.loc))
    assert same(checkpoint(module_client, rprop_session.id), before)


VALID_CREATE = {"optimizer": "rprop", "params": {"w": W, "s": 1.5}}


def _create(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(VALID_CREATE), **changes}


def _without(key: str) -> dict[str, Any]:
    body = copy.deepcopy(VALID_CREATE)
    del body[key]
    return body


def _rmsprop(**hyperparameters: Any) -> dict[str, Any]:
    return _create(optimizer="rmsprop", hyperparameters=hyperparameters)


def _raw_create(fragment: str) -> bytes:
    """A create body whose `s` param is spelled `fragment` (which JSON may not allow)."""
    return b'{"optimizer": "rprop", "params": {"w": [[1.0]], "s": %s}}' % fragment.encode()


CREATE_CASES = [
    *MALFORMED,
    *(_bad(f"token_{token}_in_params", raw=_raw_create(token), status=400) for token in NON_FINITE_TOKENS),
    *(
        _bad(
            f"token_{token}_as_lr",
            raw=b'{"optimizer": "rprop", "params": {"s": 1.0}, "hyperparameters": {"lr": %s}}' % token.encode(),
            status=400,
        )
        for token in ["NaN", "Infinity", "1e999"]
    ),
    _bad("missing_optimizer", _without("optimizer"), loc=("body", "optimizer")),
    _bad("missing_params", _without("params"), loc=("body", "params")),
    _bad("unknown_optimizer", _create(optimizer="adadelta"), loc=("body", "optimizer")),
    _bad("optimizer_not_a_string", _create(optimizer=3), loc=("body", "optimizer")),
    _bad("optimizer_null", _create(optimizer=None), loc=("body", "optimizer")),
    _bad("unknown_top_level_field", _create(bogus=1), loc=("body", "bogus")),
    _bad("params_list", _create(params=[W]), loc=("body", "params")),
    _bad("params_string", _create(params="w"), loc=("body", "params")),
    _bad("params_empty", _create(params={}), loc=("body", "params")),
    _bad("param_name_empty", _create(params={"": [1.0]}), loc=("body", "params")),
    _bad("param_string", _create(params={"w": "1.0"}), loc=("body", "params", "w")),
    _bad("param_string_NaN", _create(params={"w": "NaN"}), loc=("body", "params", "w")),
    _bad("param_string_Infinity_in_array", _create(params={"w": [1.0, "Infinity"]}), loc=("body", "params", "w")),
    _bad("param_string_in_array", _create(params={"w": [1.0, "2"]}), loc=("body", "params", "w")),
    _bad("param_bool_in_array", _create(params={"w": [1.0, False]}), loc=("body", "params", "w")),
    _bad("param_null_in_array", _create(params={"w": [1.0, None]}), loc=("body", "params", "w")),
    _bad("param_null", _create(params={"w": None}), loc=("body", "params", "w")),
    _bad("param_bool", _create(params={"w": True}), loc=("body", "params", "w")),
    _bad("param_object", _create(params={"w": {"a": 1.0}}), loc=("body", "params", "w")),
    _bad("param_ragged", _create(params={"w": [[1.0, 2.0], [3.0]]}), loc=("body", "params", "w")),
    _bad("param_ragged_depth", _create(params={"w": [[1.0, 2.0], [3.0, [4.0]]]}), loc=("body", "params", "w")),
    _bad("param_overflows_float32", _create(params={"w": [1.0, 1e39]}), loc=("body", "params", "w")),
    _bad("dtype_float16", _create(dtype="float16"), loc=("body", "dtype")),
    _bad("dtype_int32", _create(dtype="int32"), loc=("body", "dtype")),
    _bad("dtype_number", _create(dtype=32), loc=("body", "dtype")),
    _bad("dtype_null", _create(dtype=None), loc=("body", "dtype")),
    _bad("step_string", _create(step="1"), loc=("body", "step")),
    _bad("step_fraction", _create(step=1.5), loc=("body", "step")),
    _bad("step_bool", _create(step=True), loc=("body", "step")),
    _bad("step_null", _create(step=None), loc=("body", "step")),
    _bad("hyperparameters_string", _create(hyperparameters="lr=1"), loc=("body", "hyperparameters")),
    _bad("hyperparameters_list", _create(hyperparameters=[0.1]), loc=("body", "hyperparameters")),
    _bad(
        "unknown_hyperparameter",
        _create(hyperparameters={"lr": 0.1, "bogus": 1}),
        loc=("body", "hyperparameters", "bogus"),
    ),
    _bad(
        "rmsprop_hyperparameter_for_rprop",
        _create(hyperparameters={"alpha": 0.9}),
        loc=("body", "hyperparameters", "alpha"),
    ),
    _bad("rprop_hyperparameter_for_rmsprop", _rmsprop(etas=[0.5, 1.2]), loc=("body", "hyperparameters", "etas")),
    _bad(
        "negative_lr",
        _create(hyperparameters={"lr": -1}),
        loc=("body", "hyperparameters", "lr"),
        message="Invalid learning rate: -1",
    ),
    _bad(
        "negative_lr_rmsprop",
        _rmsprop(lr=-0.5),
        loc=("body", "hyperparameters", "lr"),
        message="Invalid learning rate: -0.5",
    ),
    _bad("lr_string", _create(hyperparameters={"lr": "0.1"}), loc=("body", "hyperparameters", "lr")),
    _bad("lr_string_NaN", _create(hyperparameters={"lr": "NaN"}), loc=("body", "hyperparameters", "lr")),
    _bad("lr_bool", _create(hyperparameters={"lr": True}), loc=("body", "hyperparameters", "lr")),
    _bad("lr_null", _create(hyperparameters={"lr": None}), loc=("body", "hyperparameters", "lr")),
    _bad("lr_list", _create(hyperparameters={"lr": [0.1]}), loc=("body", "hyperparameters", "lr")),
    _bad(
        "etas_out_of_order",
        _create(hyperparameters={"etas": [1.5, 1.2]}),
        loc=("body", "hyperparameters", "etas"),
        message="Invalid eta values",
    ),
    _bad("etas_too_short", _create(hyperparameters={"etas": [0.5]}), loc=("body", "hyperparameters", "etas")),
    _bad("etas_too_long", _create(hyperparameters={"etas": [0.5, 1.2, 2.0]}), loc=("body", "hyperparameters", "etas")),
    _bad("etas_string", _create(hyperparameters={"etas": "0.5,1.2"}), loc=("body", "hyperparameters", "etas")),
    _bad("etas_strings", _create(hyperparameters={"etas": ["0.5", "1.2"]}), loc=("body", "hyperparameters", "etas")),
    _bad(
        "step_sizes_out_of_order",
        _create(hyperparameters={"step_sizes": [50, 1e-6]}),
        loc=("body", "hyperparameters", "step_sizes"),
        message="Invalid step sizes",
    ),
    _bad(
        "step_sizes_negative",
        _create(hyperparameters={"step_sizes": [-1, 1]}),
        loc=("body", "hyperparameters", "step_sizes"),
    ),
    _bad("maximize_string", _create(hyperparameters={"maximize": "true"}), loc=("body", "hyperparameters", "maximize")),
    _bad("maximize_int", _create(hyperparameters={"maximize": 1}), loc=("body", "hyperparameters", "maximize")),
    _bad("maximize_null", _create(hyperparameters={"maximize": None}), loc=("body", "hyperparameters", "maximize")),
    _bad("negative_eps", _rmsprop(eps=-1.0), loc=("body", "hyperparameters", "eps"), message="Invalid epsilon value"),
    _bad(
        "negative_momentum",
        _rmsprop(momentum=-1.0),
        loc=("body", "hyperparameters", "momentum"),
        message="Invalid momentum value",
    ),
    _bad(
        "negative_weight_decay",
        _rmsprop(weight_decay=-1.0),
        loc=("body", "hyperparameters", "weight_decay"),
        message="Invalid weight_decay value",
    ),
    _bad(
        "negative_alpha", _rmsprop(alpha=-1.0), loc=("body", "hyperparameters", "alpha"), message="Invalid alpha value"
    ),
    _bad("centered_string", _rmsprop(centered="yes"), loc=("body", "hyperparameters", "centered")),
    _bad("param_groups_string", _create(param_groups="w"), loc=("body", "param_groups")),
    _bad("param_groups_empty", _create(param_groups=[]), loc=("body", "param_groups")),
    _bad("param_groups_miss_a_param", _create(param_groups=[{"params": ["w"]}]), loc=("body", "param_groups")),
    _bad(
        "param_groups_repeat_a_param_across_groups",
        _create(param_groups=[{"params": ["w", "s"]}, {"params": ["s"]}]),
        loc=("body", "param_groups"),
    ),
    _bad(
        "param_groups_repeat_a_param_in_a_group",
        _create(param_groups=[{"params": ["w", "s", "w"]}]),
        loc=("body", "param_groups"),
    ),
    _bad(
        "param_groups_name_unknown_param",
        _create(param_groups=[{"params": ["w", "s", "nope"]}]),
        loc=("body", "param_groups"),
    ),
    _bad(
        "param_group_without_params",
        _create(param_groups=[{"params": ["w", "s"]}, {"lr": 0.1}]),
        loc=("body", "param_groups", 1),
    ),
    _bad(
        "param_group_params_string",
        _create(param_groups=[{"params": "w"}, {"params": ["s"]}]),
        loc=("body", "param_groups", 0),
    ),
    _bad("param_group_params_numbers", _create(param_groups=[{"params": [0, 1]}]), loc=("body", "param_groups", 0)),
    _bad("param_group_not_an_object", _create(param_groups=[["w", "s"]]), loc=("body", "param_groups", 0)),
    _bad(
        "param_group_negative_lr",
        _create(param_groups=[{"params": ["w"], "lr": -1}, {"params": ["s"]}]),
        loc=("body", "param_groups", 0, "lr"),
        message="Invalid learning rate: -1",
    ),
    _bad(
        "param_group_bad_etas",
        _create(param_groups=[{"params": ["w"]}, {"params": ["s"], "etas": [0.5, 0.9]}]),
        loc=("body", "param_groups", 1, "etas"),
        message="Invalid eta values",
    ),
    _bad(
        "param_group_unknown_key",
        _create(param_groups=[{"params": ["w", "s"], "bogus": 1}]),
        loc=("body", "param_groups", 0, "bogus"),
    ),
    _bad("state_dict_string", _create(state_dict="{}"), loc=("body", "state_dict")),
    _bad("state_dict_without_groups", _create(state_dict={"state": {}}), loc=("body", "state_dict")),
    _bad(
        "state_dict_wrong_group_count",
        _create(state_dict={"state": {}, "param_groups": []}),
        loc=("body", "state_dict", "param_groups"),
    ),
]


@pytest.mark.parametrize("bad", CREATE_CASES)
def test_a_bad_create_is_rejected_with_a_problem_naming_the_field_and_creates_nothing(
    module_client: TestClient, bad: Bad
) -> None:
    count = session_count(module_client)

    response = _send_bad(module_client, "POST", "/v1/sessions", bad)

    _assert_rejected(response, bad)
    assert session_count(module_client) == count


def _rprop_state_dict() -> dict[str, Any]:
    """The state_dict of RPROP after one step of GRADS (its shape is all that matters here)."""
    state = {
        str(index): {"step": 1.0, "prev": value, "step_size": value}
        for index, value in enumerate([GRADS["w"], GRADS["b"], GRADS["s"]])
    }
    groups = [
        {"lr": 0.01, "etas": [0.5, 1.2], "step_sizes": [1e-06, 50.0], "foreach": None, "maximize": False,
         "differentiable": False, "capturable": False, "params": [0], "param_names": ["w"]},
        {"lr": 0.02, "etas": [0.5, 1.2], "step_sizes": [1e-06, 50.0], "foreach": None, "maximize": False,
         "differentiable": False, "capturable": False, "params": [1, 2], "param_names": ["b", "s"]},
    ]  # fmt: skip
    return {"state": state, "param_groups": groups}


def test_the_valid_state_dict_the_bad_ones_are_made_from_is_accepted(module_client: TestClient) -> None:
    created = create_session(module_client, RPROP)

    ok(send(module_client, "PUT", f"{created.url}/state_dict", _rprop_state_dict()))

    assert ok(module_client.get(f"{created.url}/state_dict"))["state"]["2"]["prev"] == GRADS["s"]


def _create_with_state_dict_at_0_prev(value: Any) -> dict[str, Any]:
    state_dict = _rprop_state_dict()
    state_dict["state"]["0"]["prev"] = value
    return {**RPROP, "state_dict": state_dict}


CREATE_CASES_WITH_STATE_DICT = [
    _bad("state_dict_wrong_shape", _create_with_state_dict_at_0_prev([1.0, 2.0]),
         loc=("body", "state_dict", "state", "0", "prev")),
    _bad("state_dict_string_NaN", _create_with_state_dict_at_0_prev([["NaN"] * 3] * 2),
         loc=("body", "state_dict", "state", "0", "prev")),
]  # fmt: skip


@pytest.mark.parametrize("bad", CREATE_CASES_WITH_STATE_DICT)
def test_a_create_with_a_bad_state_dict_is_rejected_and_creates_nothing(module_client: TestClient, bad: Bad) -> None:
    count = session_count(module_client)

    response = _send_bad(module_client, "POST", "/v1/sessions", bad)

    _assert_rejected(response, bad)
    assert session_count(module_client) == count


CREATE_TWINS = [
    _twin("params_empty", _create(params={}), "body", "params"),
    _twin("param_overflows_float32", _create(params={"w": [1.0, 1e39], "s": 1.5}), "body", "params", "w"),
    _twin("state_dict_wrong_shape", _create_with_state_dict_at_0_prev([1.0, 2.0]),
          "body", "state_dict", "state", "0", "prev"),
    _twin("state_dict_transposed", _create_with_state_dict_at_0_prev(np.zeros((3, 2))),
          "body", "state_dict", "state", "0", "prev"),
]  # fmt: skip


@pytest.mark.usefixtures("transport")
@pytest.mark.parametrize("bad", CREATE_TWINS)
def test_a_create_with_bad_arrays_is_rejected_in_either_transport_and_creates_nothing(
    module_client: TestClient, bad: BadArrays
) -> None:
    count = session_count(module_client)

    response = post_session(module_client, bad.value)

    assert_problem(response, 422, list(bad.loc))
    assert session_count(module_client) == count


NON_FINITE_CREATES = [
    *_non_finite_cases("param", lambda array: _create(params={"w": array, "s": 1.5}), ("body", "params", "w")),
    *_non_finite_cases(
        "state_dict", _create_with_state_dict_at_0_prev, ("body", "state_dict", "state", "0", "prev"), (2, 3), 4
    ),
]


@pytest.mark.parametrize("transport", ["binary"], indirect=True)
@pytest.mark.parametrize("bad", NON_FINITE_CREATES)
def test_a_create_with_non_finite_arrays_is_rejected_and_creates_nothing(
    module_client: TestClient, transport: str, bad: BadArrays
) -> None:
    count = session_count(module_client)

    response = post_session(module_client, bad.value)

    assert_problem(response, 422, list(bad.loc))
    assert session_count(module_client) == count


def _mutated(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """The valid state_dict, changed in place by `change` (whose result is ignored)."""
    state_dict = _rprop_state_dict()
    change(state_dict)
    return state_dict


def _nan_token_in_prev(token: str) -> bytes:
    state_dict = _rprop_state_dict()
    state_dict["state"]["1"]["prev"] = [1.0, "@TOKEN@", 2.0]
    return json.dumps(state_dict).replace('"@TOKEN@"', token).encode()


def _drop(mapping: dict[str, Any], key: str) -> None:
    del mapping[key]


STATE_DICT_CASES = [
    *MALFORMED,
    *(_bad(f"token_{token}_in_state", raw=_nan_token_in_prev(token), status=400)
      for token in ["NaN", "Infinity", "1e999"]),
    _bad("missing_state", _mutated(lambda sd: _drop(sd, "state")), loc=("body", "state")),
    _bad("missing_param_groups", _mutated(lambda sd: _drop(sd, "param_groups")), loc=("body", "param_groups")),
    _bad("unknown_top_level_key", _mutated(lambda sd: sd.update(bogus={})), loc=("body", "bogus")),
    _bad("state_not_an_object", _mutated(lambda sd: sd.update(state=[])), loc=("body", "state")),
    _bad("param_groups_not_a_list", _mutated(lambda sd: sd.update(param_groups={})), loc=("body", "param_groups")),
    _bad("wrong_shape", _mutated(lambda sd: sd["state"]["0"].update(prev=[1.0, 2.0, 3.0])),
         loc=("body", "state", "0", "prev")),
    _bad("wrong_shape_0d", _mutated(lambda sd: sd["state"]["2"].update(step_size=[1.0])),
         loc=("body", "state", "2", "step_size")),
    _bad("ragged", _mutated(lambda sd: sd["state"]["0"].update(prev=[[1.0, 2.0, 3.0], [1.0]])),
         loc=("body", "state", "0", "prev")),
    _bad("string_NaN", _mutated(lambda sd: sd["state"]["1"].update(prev=[1.0, "NaN", 2.0])),
         loc=("body", "state", "1", "prev")),
    _bad("null_in_array", _mutated(lambda sd: sd["state"]["1"].update(prev=[1.0, None, 2.0])),
         loc=("body", "state", "1", "prev")),
    _bad("bool_in_array", _mutated(lambda sd: sd["state"]["1"].update(step_size=[1.0, True, 2.0])),
         loc=("body", "state", "1", "step_size")),
    _bad("unknown_state_key", _mutated(lambda sd: sd["state"]["0"].update(bogus=W)), loc=("body", "state", "0")),
    _bad("missing_state_key", _mutated(lambda sd: _drop(sd["state"]["0"], "step_size")), loc=("body", "state", "0")),
    _bad("missing_step", _mutated(lambda sd: _drop(sd["state"]["0"], "step")), loc=("body", "state", "0")),
    _bad("step_string", _mutated(lambda sd: sd["state"]["0"].update(step="1")), loc=("body", "state", "0", "step")),
    _bad("step_negative", _mutated(lambda sd: sd["state"]["0"].update(step=-1.0)),
         loc=("body", "state", "0", "step")),
    _bad("step_fraction", _mutated(lambda sd: sd["state"]["0"].update(step=1.5)), loc=("body", "state", "0", "step")),
    _bad("unknown_param_index", _mutated(lambda sd: sd["state"].update({"3": sd["state"]["2"]})),
         loc=("body", "state")),
    _bad("state_key_not_an_index", _mutated(lambda sd: sd["state"].update({"w": sd["state"]["0"]})),
         loc=("body", "state")),
    _bad("wrong_group_count", _mutated(lambda sd: sd["param_groups"].pop()), loc=("body", "param_groups")),
    _bad("wrong_group_size", _mutated(lambda sd: sd["param_groups"][0].update(params=[0, 1])),
         loc=("body", "param_groups", 0)),
    _bad("group_params_strings", _mutated(lambda sd: sd["param_groups"][0].update(params=["0"])),
         loc=("body", "param_groups", 0)),
    _bad("group_missing_lr", _mutated(lambda sd: _drop(sd["param_groups"][0], "lr")),
         loc=("body", "param_groups", 0)),
    _bad("group_unknown_key", _mutated(lambda sd: sd["param_groups"][1].update(alpha=0.9)),
         loc=("body", "param_groups", 1)),
    _bad("group_negative_lr", _mutated(lambda sd: sd["param_groups"][0].update(lr=-1.0)),
         loc=("body", "param_groups", 0, "lr"), message="Invalid learning rate"),
    _bad("group_bad_etas", _mutated(lambda sd: sd["param_groups"][1].update(etas=[2.0, 1.2])),
         loc=("body", "param_groups", 1, "etas")),
    _bad("group_wrong_param_names", _mutated(lambda sd: sd["param_groups"][1].update(param_names=["s", "b"])),
         loc=("body", "param_groups", 1)),
    _bad("group_not_an_object", _mutated(lambda sd: sd["param_groups"].__setitem__(0, "w")),
         loc=("body", "param_groups", 0)),
]  # fmt: skip


@pytest.mark.parametrize("bad", STATE_DICT_CASES)
def test_a_bad_state_dict_is_rejected_with_a_problem_naming_the_field_and_changes_nothing(
    module_client: TestClient, rprop_session: Created, bad: Bad
) -> None:
    before = checkpoint(module_client, rprop_session.id)

    response = _send_bad(module_client, "PUT", f"{rprop_session.url}/state_dict", bad)

    _assert_rejected(response, bad)
    assert checkpoint(module_client, rprop_session.id) == before


STATE_DICT_TWINS = [
    _twin("wrong_shape", _mutated(lambda sd: sd["state"]["0"].update(prev=[1.0, 2.0, 3.0])),
          "body", "state", "0", "prev"),
    _twin("transposed_shape", _mutated(lambda sd: sd["state"]["0"].update(step_size=np.ones((3, 2)))),
          "body", "state", "0", "step_size"),
    _twin("wrong_shape_0d", _mutated(lambda sd: sd["state"]["2"].update(step_size=[1.0])),
          "body", "state", "2", "step_size"),
    _twin("array_for_0d_next_to_good_ones", _mutated(lambda sd: sd["state"]["2"].update(prev=np.ones((1, 1)))),
          "body", "state", "2", "prev"),
    _twin("unknown_state_key", _mutated(lambda sd: sd["state"]["0"].update(bogus=W)), "body", "state", "0"),
    _twin("missing_state_key", _mutated(lambda sd: _drop(sd["state"]["0"], "step_size")), "body", "state", "0"),
    _twin("missing_step", _mutated(lambda sd: _drop(sd["state"]["0"], "step")), "body", "state", "0"),
    _twin("step_negative", _mutated(lambda sd: sd["state"]["0"].update(step=-1.0)), "body", "state", "0", "step"),
    _twin("unknown_param_index", _mutated(lambda sd: sd["state"].update({"3": sd["state"]["2"]})),
          "body", "state"),
    _twin("state_key_not_an_index", _mutated(lambda sd: sd["state"].update({"w": sd["state"]["0"]})),
          "body", "state"),
    _twin("missing_state", _mutated(lambda sd: _drop(sd, "state")), "body", "state"),
    _twin("missing_param_groups", _mutated(lambda sd: _drop(sd, "param_groups")), "body", "param_groups"),
    _twin("unknown_top_level_key", _mutated(lambda sd: sd.update(bogus={})), "body", "bogus"),
    _twin("wrong_group_count", _mutated(lambda sd: sd["param_groups"].pop()), "body", "param_groups"),
    _twin("wrong_group_size", _mutated(lambda sd: sd["param_groups"][0].update(params=[0, 1])),
          "body", "param_groups", 0),
]  # fmt: skip


@pytest.mark.usefixtures("transport")
@pytest.mark.parametrize("bad", STATE_DICT_TWINS)
def test_a_bad_state_dict_is_rejected_in_either_transport_naming_the_field_and_changes_nothing(
    module_client: TestClient, rprop_session: Created, bad: BadArrays
) -> None:
    before = checkpoint(module_client, rprop_session.id)

    response = put_state_dict(module_client, rprop_session.id, bad.value)

    assert_problem(response, 422, list(bad.loc))
    assert same(checkpoint(module_client, rprop_session.id), before)


NON_FINITE_STATE_DICTS = [
    *_non_finite_cases("prev", lambda array: _mutated(lambda sd: sd["state"]["1"].update(prev=array)),
                       ("body", "state", "1", "prev")),
    *_non_finite_cases("step_size", lambda array: _mutated(lambda sd: sd["state"]["0"].update(step_size=array)),
                       ("body", "state", "0", "step_size"), (2, 3), 5),
]  # fmt: skip


@pytest.mark.parametrize("transport", ["binary"], indirect=True)
@pytest.mark.parametrize("bad", NON_FINITE_STATE_DICTS)
def test_a_state_dict_with_non_finite_arrays_is_rejected_and_changes_nothing(
    module_client: TestClient, rprop_session: Created, transport: str, bad: BadArrays
) -> None:
    before = checkpoint(module_client, rprop_session.id)

    response = put_state_dict(module_client, rprop_session.id, bad.value)

    assert_problem(response, 422, list(bad.loc))
    assert same(checkpoint(module_client, rprop_session.id), before)


@pytest.mark.usefixtures("transport")
def test_a_rmsprop_state_dict_missing_the_momentum_buffer_its_groups_need_is_rejected_and_changes_nothing(
    module_client: TestClient, rmsprop_session: Created
) -> None:
    state_dict = ok(get_state_dict(module_client, rmsprop_session.id))
    del state_dict["state"]["1"]["momentum_buffer"]
    before = checkpoint(module_client, rmsprop_session.id)

    response = put_state_dict(module_client, rmsprop_session.id, state_dict)

    assert_problem(response, 422, ["body", "state", "1"])
    assert same(checkpoint(module_client, rmsprop_session.id), before)


PATCH_CASES = [
    *MALFORMED,
    *(_bad(f"token_{token}_as_lr", raw=b'{"hyperparameters": {"lr": %s}}' % token.encode(), status=400)
      for token in ["NaN", "-Infinity", "1e999"]),
    _bad("neither_field", {}),
    _bad("both_fields", {"hyperparameters": {"lr": 0.1}, "param_groups": [{}, {}]}),
    _bad("unknown_field", {"hyperparameters": {"lr": 0.1}, "bogus": 1}, loc=("body", "bogus")),
    _bad("params_are_not_patchable", {"params": PARAMS}, loc=("body", "params")),
    _bad("optimizer_is_not_patchable", {"optimizer": "rmsprop"}, loc=("body", "optimizer")),
    _bad("hyperparameters_string", {"hyperparameters": "lr"}, loc=("body", "hyperparameters")),
    # null may be read as "not given" (then neither field is given): 422 either way.
    _bad("hyperparameters_null", {"hyperparameters": None}),
    _bad("negative_lr", {"hyperparameters": {"lr": -1}}, loc=("body", "hyperparameters", "lr"),
         message="Invalid learning rate: -1"),
    _bad("lr_string", {"hyperparameters": {"lr": "fast"}}, loc=("body", "hyperparameters", "lr")),
    _bad("lr_string_NaN", {"hyperparameters": {"lr": "NaN"}}, loc=("body", "hyperparameters", "lr")),
    _bad("lr_string_Infinity", {"hyperparameters": {"lr": "Infinity"}}, loc=("body", "hyperparameters", "lr")),
    _bad("lr_null", {"hyperparameters": {"lr": None}}, loc=("body", "hyperparameters", "lr")),
    _bad("lr_bool", {"hyperparameters": {"lr": False}}, loc=("body", "hyperparameters", "lr")),
    _bad("etas_out_of_order", {"hyperparameters": {"etas": [2.0, 1.2]}}, loc=("body", "hyperparameters", "etas"),
         message="Invalid eta values"),
    _bad("step_sizes_out_of_order", {"hyperparameters": {"step_sizes": [1.0, 0.5]}},
         loc=("body", "hyperparameters", "step_sizes"), message="Invalid step sizes"),
    _bad("maximize_string", {"hyperparameters": {"maximize": "yes"}}, loc=("body", "hyperparameters", "maximize")),
    _bad("unknown_hyperparameter", {"hyperparameters": {"bogus": 1}}, loc=("body", "hyperparameters", "bogus")),
    _bad("other_optimizers_hyperparameter", {"hyperparameters": {"momentum": 0.9}},
         loc=("body", "hyperparameters", "momentum")),
    _bad("params_in_hyperparameters", {"hyperparameters": {"params": ["w"]}}, loc=("body", "hyperparameters")),
    _bad("param_groups_string", {"param_groups": "x"}, loc=("body", "param_groups")),
    _bad("too_few_groups", {"param_groups": [{"lr": 0.1}]}, loc=("body", "param_groups")),
    _bad("too_many_groups", {"param_groups": [{}, {}, {}]}, loc=("body", "param_groups")),
    _bad("group_not_an_object", {"param_groups": [{}, "x"]}, loc=("body", "param_groups", 1)),
    _bad("group_negative_lr", {"param_groups": [{"lr": -1}, {}]}, loc=("body", "param_groups", 0, "lr"),
         message="Invalid learning rate: -1"),
    _bad("group_bad_step_sizes", {"param_groups": [{}, {"step_sizes": [-1.0, 1.0]}]},
         loc=("body", "param_groups", 1, "step_sizes")),
    _bad("group_unknown_key", {"param_groups": [{}, {"bogus": 1}]}, loc=("body", "param_groups", 1, "bogus")),
    _bad("group_params_changed", {"param_groups": [{"params": ["b"]}, {}]}, loc=("body", "param_groups", 0, "params")),
    _bad("group_params_reordered", {"param_groups": [{}, {"params": ["s", "b"]}]},
         loc=("body", "param_groups", 1, "params")),
    _bad("group_params_string", {"param_groups": [{"params": "w"}, {}]}, loc=("body", "param_groups", 0, "params")),
]  # fmt: skip


@pytest.mark.parametrize("bad", PATCH_CASES)
def test_a_bad_patch_is_rejected_with_a_problem_naming_the_field_and_changes_nothing(
    module_client: TestClient, rprop_session: Created, bad: Bad
) -> None:
    before = checkpoint(module_client, rprop_session.id)
    etag = module_client.get(rprop_session.url).headers["etag"]

    response = _send_bad(module_client, "PATCH", rprop_session.url, bad)

    _assert_rejected(response, bad)
    assert checkpoint(module_client, rprop_session.id) == before
    assert module_client.get(rprop_session.url).headers["etag"] == etag


RMSPROP_PATCH_CASES = [
    _bad("negative_alpha", {"hyperparameters": {"alpha": -0.5}}, loc=("body", "hyperparameters", "alpha"),
         message="Invalid alpha value"),
    _bad("negative_eps", {"hyperparameters": {"eps": -1e-8}}, loc=("body", "hyperparameters", "eps"),
         message="Invalid epsilon value"),
    _bad("negative_momentum", {"param_groups": [{}, {"momentum": -0.1}]},
         loc=("body", "param_groups", 1, "momentum"), message="Invalid momentum value"),
    _bad("negative_weight_decay", {"hyperparameters": {"weight_decay": -1}},
         loc=("body", "hyperparameters", "weight_decay"), message="Invalid weight_decay value"),
    _bad("centered_number", {"hyperparameters": {"centered": 1}}, loc=("body", "hyperparameters", "centered")),
    _bad("rprops_etas", {"hyperparameters": {"etas": [0.5, 1.2]}}, loc=("body", "hyperparameters", "etas")),
]  # fmt: skip


@pytest.mark.parametrize("bad", RMSPROP_PATCH_CASES)
def test_a_bad_rmsprop_patch_is_rejected_with_a_problem_naming_the_field_and_changes_nothing(
    module_client: TestClient, rmsprop_session: Created, bad: Bad
) -> None:
    before = checkpoint(module_client, rmsprop_session.id)

    response = _send_bad(module_client, "PATCH", rmsprop_session.url, bad)

    _assert_rejected(response, bad)
    assert checkpoint(module_client, rmsprop_session.id) == before


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1.5", ""])
def test_a_list_limit_outside_1_to_1000_is_422_naming_limit(module_client: TestClient, limit: str) -> None:
    response = module_client.get("/v1/sessions", params={"limit": limit})

    problem = assert_problem(response, 422)
    assert any("limit" in error["loc"] for error in problem.get("errors", [])), response.text


def test_a_garbage_list_cursor_is_a_client_error(module_client: TestClient) -> None:
    response = module_client.get("/v1/sessions", params={"cursor": "definitely not a cursor \u00e9"})

    assert response.status_code in (400, 422), response.text
    assert_problem(response, response.status_code)


UNKNOWN_IDS = [
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "x",
    "0",
    "-1",
    "00000000-0000-0000-0000-000000000000",
    "%20",
    "%00",
    "..",
    "'; DROP TABLE sessions; --",
    "é",
    "a" * 2000,
]
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("PATCH", "", {"hyperparameters": {"lr": 0.1}}),
    ("DELETE", "", None),
    ("POST", "/step", {"grads": {"s": 1.0}}),
    ("GET", "/params", None),
    ("GET", "/state_dict", None),
    ("PUT", "/state_dict", _rprop_state_dict()),
    ("GET", "/checkpoint", None),
]


@pytest.mark.parametrize(("method", "suffix", "body"), ENDPOINTS, ids=[f"{m} {s or '/'}" for m, s, _ in ENDPOINTS])
def test_every_endpoint_answers_404_for_an_unknown_or_malformed_session_id(
    module_client: TestClient, method: str, suffix: str, body: Any
) -> None:
    for session_id in UNKNOWN_IDS:
        response = send(module_client, method, f"/v1/sessions/{session_id}{suffix}", body)
        assert_problem(response, 404)


BODY_ENDPOINTS = ["POST /v1/sessions", "PATCH {}", "POST {}/step", "PUT {}/state_dict"]


def _valid_body(endpoint: str) -> Any:
    return {
        "POST /v1/sessions": RPROP,
        "PATCH {}": {"hyperparameters": {"lr": 0.1}},
        "POST {}/step": {"grads": GRADS},
        "PUT {}/state_dict": _rprop_state_dict(),
    }[endpoint]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
     "application/jsonx", "text/json"],
)  # fmt: skip
@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
def test_a_body_that_is_not_declared_application_json_is_415_and_changes_nothing(
    module_client: TestClient, rprop_session: Created, endpoint: str, content_type: str
) -> None:
    method, url = endpoint.split(" ")
    before = checkpoint(module_client, rprop_session.id)
    count = session_count(module_client)

    response = send(
        module_client, method, url.format(rprop_session.url), _valid_body(endpoint),
        headers={"Content-Type": content_type},
    )  # fmt: skip

    assert_problem(response, 415)
    assert checkpoint(module_client, rprop_session.id) == before
    assert session_count(module_client) == count


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
def test_application_json_with_a_charset_is_application_json(
    module_client: TestClient, rprop_session: Created, endpoint: str
) -> None:
    method, url = endpoint.split(" ")

    response = send(
        module_client, method, url.format(rprop_session.url), _valid_body(endpoint),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )  # fmt: skip

    assert response.status_code < 300, response.text


MAX_BODY_BYTES = 1000


@pytest.fixture
def small_client(make_client: ClientFactory) -> TestClient:
    return make_client(max_body_bytes=MAX_BODY_BYTES)


def _padded(body: Any, size: int) -> bytes:
    """`body` as JSON padded with insignificant whitespace to exactly `size` bytes."""
    text = json.dumps(body).encode()
    assert len(text) < size
    return text[:-1] + b" " * (size - len(text)) + text[-1:]


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
def test_a_body_over_max_body_bytes_is_413_and_changes_nothing(small_client: TestClient, endpoint: str) -> None:
    session = _session(small_client, RPROP)
    method, url = endpoint.split(" ")
    before = checkpoint(small_client, session.id)

    response = send(
        small_client, method, url.format(session.url), raw=_padded(_valid_body(endpoint), MAX_BODY_BYTES + 1)
    )

    assert_problem(response, 413)
    assert checkpoint(small_client, session.id) == before
    assert session_count(small_client) == 1


def test_a_body_of_exactly_max_body_bytes_is_accepted(small_client: TestClient) -> None:
    session = _session(small_client, RPROP)

    response = send(small_client, "POST", f"{session.url}/step", raw=_padded({"grads": GRADS}, MAX_BODY_BYTES))

    assert ok(response)["step"] == 2


def test_a_streamed_body_without_content_length_over_max_body_bytes_is_413_and_changes_nothing(
    small_client: TestClient,
) -> None:
    session = _session(small_client, RPROP)
    before = checkpoint(small_client, session.id)
    payload = _padded({"grads": GRADS}, 4 * MAX_BODY_BYTES)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 256):
            yield payload[start : start + 256]

    response = small_client.post(f"{session.url}/step", content=chunks(), headers={"Content-Type": "application/json"})

    assert "content-length" not in {key.lower() for key in response.request.headers}
    assert_problem(response, 413)
    assert checkpoint(small_client, session.id) == before


def _assert_finite_numbers(value: Any, where: str) -> None:
    """Every array in `value` (a params or state dict) is made of finite numbers: no null, no NaN."""
    for name, item in value.items():
        if isinstance(item, dict):
            _assert_finite_numbers(item, f"{where}[{name!r}]")
        else:
            array = np.asarray(item, dtype=object).ravel()
            assert all(isinstance(x, int | float) and not isinstance(x, bool) for x in array), f"{where}[{name!r}]"
            assert np.isfinite(np.asarray(item, dtype=np.float64)).all(), f"{where}[{name!r}]: {item}"


@pytest.mark.parametrize(
    ("dtype", "hyperparameters", "grads"),
    [
        # square_avg = (1 - alpha) * grad**2 overflows; the params themselves stay finite.
        ("float64", {}, [1e200, -1e300]),
        ("float32", {}, [1e20, -3e38]),
        # lr * grad / (sqrt(square_avg) + eps) overflows the params.
        ("float32", {"lr": 1e300}, [1.0, 1.0]),
        ("float64", {"lr": 1e308}, [1.0, 1.0]),
        # torch accepts any alpha >= 0; with alpha > 1, square_avg = (1 - alpha) * grad**2 < 0 and its sqrt is NaN.
        ("float64", {"alpha": 2.0}, [1.0, -1.0]),
    ],
    ids=["square_avg_float64", "square_avg_float32", "params_float32", "params_float64", "alpha_above_1"],
)
def test_a_step_whose_result_overflows_is_rejected_or_leaves_only_finite_numbers(
    client: TestClient, dtype: str, hyperparameters: dict[str, Any], grads: list[float]
) -> None:
    body = {"optimizer": "rmsprop", "params": {"x": [1.0, 2.0]}, "dtype": dtype, "hyperparameters": hyperparameters}
    created = create_session(client, body)
    before = checkpoint(client, created.id)

    response = step(client, created.id, {"x": grads})

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_problem(response, response.status_code)
        assert checkpoint(client, created.id) == before
    else:
        _assert_finite_numbers(ok(response)["params"], "step response params")
    for suffix in ["", "/params", "/state_dict"]:
        ok(client.get(f"{created.url}{suffix}"))
    snapshot = checkpoint(client, created.id)
    _assert_finite_numbers(snapshot["params"], "checkpoint params")
    _assert_finite_numbers(snapshot["state_dict"]["state"], "checkpoint state")
    # The checkpoint is a valid create body, as the contract promises.
    create_session(client, snapshot)


# Fuzzing: random JSON where the contract expects a step, a create or a patch body.

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-5, 5)


def _nested(shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
    if not shape:
        return numbers
    return st.lists(_nested(shape[1:]), min_size=shape[0], max_size=shape[0])


array_like = _nested((2, 3)) | _nested((3,)) | _nested(()) | _nested((2,)) | st.lists(numbers | json_values, max_size=3)
names = st.sampled_from(["w", "b", "s", "x", ""])
step_bodies = json_values | st.fixed_dictionaries({"grads": st.dictionaries(names, array_like | json_values)})
hyperparameter_names = st.sampled_from(
    ["lr", "etas", "step_sizes", "maximize", "foreach", "differentiable", "capturable", "alpha", "eps",
     "weight_decay", "momentum", "centered", "params", "bogus"]
)  # fmt: skip
hyperparameter_values = (
    st.floats(min_value=-2, max_value=1e300) | st.lists(st.floats(min_value=-1, max_value=60), max_size=3) | json_values
)
hyperparameters = st.dictionaries(hyperparameter_names, hyperparameter_values, max_size=4)
patch_bodies = (
    json_values
    | st.fixed_dictionaries({"hyperparameters": hyperparameters})
    | st.fixed_dictionaries({"param_groups": st.lists(hyperparameters | json_values, max_size=3)})
)
create_bodies = json_values | st.fixed_dictionaries(
    {"optimizer": st.sampled_from([*OPTIMIZERS, "not-an-optimizer"]), "params": st.dictionaries(names, array_like)},
    optional={
        "hyperparameters": hyperparameters,
        "dtype": st.sampled_from(["float32", "float64", "float16"]) | json_values,
        "step": st.integers(-3, 10**20) | json_values,
        "param_groups": st.lists(
            st.fixed_dictionaries({"params": st.lists(names, max_size=3)}, optional={"lr": hyperparameter_values}),
            max_size=3,
        ),
    },
)


def _assert_client_error_or_success(response: Any) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:2000]}"
    if response.status_code >= 400:
        assert_problem(response, response.status_code)
    elif response.status_code != 204:
        strict_json(response.content)


def _body_of(optimizer: str) -> dict[str, Any]:
    """A session body of ``optimizer``, with hyperparameters torch ran (its golden fixtures)."""
    return {
        "optimizer": optimizer,
        "params": PARAMS,
        "param_groups": GROUPS,
        "hyperparameters": to_json(example_hyperparameters(optimizer)),
    }


@pytest.fixture(scope="module")
def fuzzed_session(module_client: TestClient) -> Created:
    return _session(module_client, RPROP)


@settings(max_examples=100)
@given(body=step_bodies, optimizer=st.sampled_from(OPTIMIZERS))
def test_random_step_bodies_never_cause_a_5xx_and_rejections_change_nothing(
    module_client: TestClient, body: Any, optimizer: str
) -> None:
    session = _session(module_client, _body_of(optimizer))
    before = checkpoint(module_client, session.id)

    response = send(module_client, "POST", f"{session.url}/step", raw=json.dumps(body).encode())

    _assert_client_error_or_success(response)
    after = checkpoint(module_client, session.id)
    if response.status_code >= 400:
        assert after == before
    else:
        _assert_finite_numbers(after["params"], "params")
        _assert_finite_numbers(after["state_dict"]["state"], "state")


@settings(max_examples=80)
@given(body=patch_bodies, optimizer=st.sampled_from(OPTIMIZERS))
def test_random_patch_bodies_never_cause_a_5xx_and_rejections_change_nothing(
    module_client: TestClient, body: Any, optimizer: str
) -> None:
    session = _session(module_client, _body_of(optimizer))
    before = checkpoint(module_client, session.id)

    response = send(module_client, "PATCH", session.url, raw=json.dumps(body).encode())

    _assert_client_error_or_success(response)
    if response.status_code >= 400:
        assert checkpoint(module_client, session.id) == before
    # Whatever was accepted must leave a session that can still step and be read.
    _assert_client_error_or_success(step(module_client, session.id, {"s": 0.5}))
    after = checkpoint(module_client, session.id)
    _assert_finite_numbers(after["params"], "params")
    _assert_finite_numbers(after["state_dict"]["state"], "state")


@settings(max_examples=100)
@given(body=create_bodies)
def test_random_create_bodies_never_cause_a_5xx(module_client: TestClient, body: Any) -> None:
    response = send(module_client, "POST", "/v1/sessions", raw=json.dumps(body).encode())

    _assert_client_error_or_success(response)
    if response.status_code == 201:
        session_id = strict_json(response.content)["id"]
        checkpoint(module_client, session_id)
        ok(module_client.delete(f"/v1/sessions/{session_id}"), 204)


@settings(max_examples=50)
@given(raw=st.binary(max_size=64))
def test_random_bytes_never_cause_a_5xx(module_client: TestClient, fuzzed_session: Created, raw: bytes) -> None:
    session = fuzzed_session
    before = checkpoint(module_client, session.id)

    for method, url in [("POST", f"{session.url}/step"), ("PATCH", session.url), ("POST", "/v1/sessions")]:
        _assert_client_error_or_success(send(module_client, method, url, raw=raw))

    assert checkpoint(module_client, session.id) == before


def test_a_bad_input_after_good_steps_leaves_later_steps_matching_the_unrejected_history(client: TestClient) -> None:
    good = create_session(client, RPROP)
    disturbed = create_session(client, RPROP)
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads = {"w": rng.normal(size=(2, 3)).tolist(), "s": float(rng.normal())}
        ok(step(client, good.id, grads))
        ok(step(client, disturbed.id, grads))
        assert_problem(step(client, disturbed.id, {**grads, "b": [1.0, "x", 2.0]}), 422)
        assert_problem(send(client, "PATCH", disturbed.url, {"hyperparameters": {"lr": -1}}), 422)

    assert ok(client.get(f"{disturbed.url}/params")) == ok(client.get(f"{good.url}/params"))
    assert ok(client.get(f"{disturbed.url}/state_dict")) == ok(client.get(f"{good.url}/state_dict"))
