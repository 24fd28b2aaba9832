"""Validation rules of optim_core's Rprop and RMSprop (see the core API brief).

Every rejection must raise an OptimCoreError (a ValueError) whose message names the
offending field or param, and a rejected call on an existing optimizer must change
nothing: params (bitwise and dtype), the whole state_dict and param_groups.
"""

import array
import copy
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from optim_core import ALGORITHMS, OptimCoreError
from optim_core import Optimizer as CoreOptimizer
from tests.optimizers import OPTIMIZERS, example_hyperparameters

Optimizer = CoreOptimizer[Any, Any]
Array = npt.NDArray[Any]
Grads = dict[str, Any]
StateDict = dict[str, Any]

NAN = math.nan
INF = math.inf
KINDS = OPTIMIZERS

# Distinctive names, so that "the message names the param" cannot match by accident.
MATRIX = "weight_matrix"  # (3, 2) float32, group 0, index 0
VECTOR = "bias_vector"  # (2,) float64, group 0, index 1
SCALAR = "scalar_gain"  # 0-d float64, group 1, index 2
SINGLE = "single_elem"  # (1,) float32, group 1, index 3
FROZEN = "frozen_param"  # (2,) float64, group 1, index 4: never gets a grad, so no state
TRAINED = (MATRIX, VECTOR, SCALAR, SINGLE)
INDEX = {MATRIX: "0", VECTOR: "1", SCALAR: "2", SINGLE: "3"}

ARRAY_STATE_KEYS = {kind: ALGORITHMS[kind].state_arrays for kind in KINDS}
GROUP_KEYS = {kind: tuple(ALGORITHMS[kind].defaults) for kind in KINDS}
# A key that is a hyperparameter of another optimizer, hence unknown to this one.
FOREIGN_GROUP_KEY = {
    kind: next(
        (key for other in KINDS for key in ALGORITHMS[other].defaults if key not in ALGORITHMS[kind].defaults),
        "not_a_hyperparameter",
    )
    for kind in KINDS
}
# Hyperparameters torch ran, so that as many state keys as the optimizer has exist.
TRAINING_HYPERPARAMETERS: dict[str, dict[str, Any]] = {kind: example_hyperparameters(kind) for kind in KINDS}

# (key, invalid value, torch-style message) per optimizer.
INVALID_HYPERPARAMETERS: dict[str, list[tuple[str, Any, str]]] = {
    "rprop": [
        ("lr", -1.0, "Invalid learning rate: -1.0"),
        ("lr", NAN, "Invalid learning rate: nan"),
        ("lr", INF, "Invalid learning rate: inf"),
        ("lr", -INF, "Invalid learning rate: -inf"),
        ("etas", (1.5, 1.2), "Invalid eta values: 1.5, 1.2"),
        ("etas", (0.0, 1.2), "Invalid eta values: 0.0, 1.2"),
        ("etas", (0.5, 1.0), "Invalid eta values: 0.5, 1.0"),
        ("etas", (NAN, 1.2), "Invalid eta values: nan, 1.2"),
        ("etas", (0.5, NAN), "Invalid eta values: 0.5, nan"),
        ("etas", (0.5, INF), "Invalid eta values: 0.5, inf"),
        ("step_sizes", (50.0, 1e-06), "Invalid step sizes: 50.0, 1e-06"),
        ("step_sizes", (-1.0, 50.0), "Invalid step sizes: -1.0, 50.0"),
        ("step_sizes", (NAN, 50.0), "Invalid step sizes: nan, 50.0"),
        ("step_sizes", (1e-06, NAN), "Invalid step sizes: 1e-06, nan"),
        ("step_sizes", (1e-06, INF), "Invalid step sizes: 1e-06, inf"),
    ],
    "rmsprop": [
        ("lr", -1.0, "Invalid learning rate: -1.0"),
        ("lr", NAN, "Invalid learning rate: nan"),
        ("lr", INF, "Invalid learning rate: inf"),
        ("lr", -INF, "Invalid learning rate: -inf"),
        ("eps", -1.0, "Invalid epsilon value: -1.0"),
        ("eps", NAN, "Invalid epsilon value: nan"),
        ("eps", INF, "Invalid epsilon value: inf"),
        ("momentum", -1.0, "Invalid momentum value: -1.0"),
        ("momentum", NAN, "Invalid momentum value: nan"),
        ("momentum", INF, "Invalid momentum value: inf"),
        ("weight_decay", -1.0, "Invalid weight_decay value: -1.0"),
        ("weight_decay", NAN, "Invalid weight_decay value: nan"),
        ("weight_decay", INF, "Invalid weight_decay value: inf"),
        ("alpha", -1.0, "Invalid alpha value: -1.0"),
        ("alpha", NAN, "Invalid alpha value: nan"),
        ("alpha", INF, "Invalid alpha value: inf"),
    ],
    "sgd": [
        ("lr", -1.0, "Invalid learning rate: -1.0"),
        ("lr", NAN, "Invalid learning rate: nan"),
        ("momentum", -0.5, "Invalid momentum value: -0.5"),
        ("momentum", INF, "Invalid momentum value: inf"),
        ("weight_decay", -1.0, "Invalid weight_decay value: -1.0"),
        ("dampening", NAN, "Invalid dampening value: nan"),
        ("dampening", -INF, "Invalid dampening value: -inf"),
        # With the default momentum, 0.
        ("nesterov", True, "Nesterov momentum requires a momentum and zero dampening"),
    ],
    "adam": [
        ("lr", -1.0, "Invalid learning rate: -1.0"),
        ("lr", INF, "Invalid learning rate: inf"),
        ("eps", -1.0, "Invalid epsilon value: -1.0"),
        ("betas", (1.0, 0.999), "Invalid beta parameter at index 0: 1.0"),
        ("betas", (-0.1, 0.999), "Invalid beta parameter at index 0: -0.1"),
        ("betas", (0.9, 1.0), "Invalid beta parameter at index 1: 1.0"),
        ("betas", (0.9, NAN), "Invalid beta parameters: 0.9, nan"),
        ("betas", (0.9,), "betas must be a pair of numbers"),
        ("weight_decay", -1.0, "Invalid weight_decay value: -1.0"),
        ("weight_decay", NAN, "Invalid weight_decay value: nan"),
    ],
    "adamw": [
        ("lr", -1.0, "Invalid learning rate: -1.0"),
        ("betas", (0.9, 1.5), "Invalid beta parameter at index 1: 1.5"),
        ("weight_decay", -0.01, "Invalid weight_decay value: -0.01"),
        ("decoupled_weight_decay", False, "decoupled_weight_decay must be true"),
    ],
    "adagrad": [
        ("lr", -1.0, "Invalid learning rate: -1.0"),
        ("lr_decay", -1.0, "Invalid lr_decay value: -1.0"),
        ("lr_decay", NAN, "Invalid lr_decay value: nan"),
        ("eps", -1.0, "Invalid epsilon value: -1.0"),
        ("weight_decay", INF, "Invalid weight_decay value: inf"),
        ("initial_accumulator_value", -1.0, "Invalid initial_accumulator_value value: -1.0"),
    ],
}
INVALID_HYPERPARAMETER_CASES = [
    pytest.param(kind, key, value, message, id=f"{kind}-{message}")
    for kind in KINDS
    for key, value, message in INVALID_HYPERPARAMETERS.get(kind, [])
]
BOUNDARY_HYPERPARAMETERS: dict[str, list[dict[str, Any]]] = {
    "rprop": [
        {"lr": 0.0},
        {"etas": (1e-12, 1.0 + 1e-12)},
        {"step_sizes": (0.0, 0.0)},
        {"step_sizes": (1.0, 1.0)},
    ],
    "rmsprop": [
        {"lr": 0.0},
        {"eps": 0.0},
        {"momentum": 0.0},
        {"weight_decay": 0.0},
        {"alpha": 0.0},
    ],
    "sgd": [
        {"lr": 0.0},
        {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.9, "dampening": -1.0},
        {"fused": True},
    ],
    "adam": [
        {"betas": (0.0, 0.0)},
        {"betas": (0, 0.5)},
        {"eps": 0.0, "amsgrad": True},
        {"decoupled_weight_decay": True, "weight_decay": 1.0},
    ],
    "adamw": [{"weight_decay": 0.0}, {"betas": (0.5, 0.5)}],
    "adagrad": [{"lr_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10}],
}
NON_FLOAT_DTYPES = [np.int64, np.int32, np.uint8, np.bool_, np.float16, np.complex64, np.complex128]


def _make(kind: str, params: Any, **hyperparameters: Any) -> Optimizer:
    return CoreOptimizer(ALGORITHMS[kind], params, hyperparameters)


def _initial_params() -> dict[str, Array]:
    rng = np.random.default_rng(1234)
    return {
        MATRIX: rng.standard_normal((3, 2)).astype(np.float32),
        VECTOR: rng.standard_normal(2),
        SCALAR: np.array(0.5),
        SINGLE: np.array([-0.25], np.float32),
        FROZEN: np.array([1.0, -1.0]),
    }


def _grouped(params: dict[str, Array]) -> list[dict[str, Any]]:
    return [
        {"params": {MATRIX: params[MATRIX], VECTOR: params[VECTOR]}, "lr": 0.05},
        {"params": {name: params[name] for name in (SCALAR, SINGLE, FROZEN)}},
    ]


def _grads(opt: Optimizer, seed: int) -> Grads:
    """Valid grads (param dtype) for every param except FROZEN."""
    rng = np.random.default_rng(seed)
    return {
        name: np.asarray(rng.standard_normal(opt.params[name].shape)).astype(opt.params[name].dtype) for name in TRAINED
    }


def _trained(kind: str) -> Optimizer:
    """Two groups, five params, three steps taken: every state key of the optimizer exists."""
    opt = _make(kind, _grouped(_initial_params()), **TRAINING_HYPERPARAMETERS[kind])
    for seed in range(3):
        opt.step(_grads(opt, seed))
    return opt


def _json_state_dict(opt: Optimizer) -> StateDict:
    """A plain, independent copy of the state_dict (also checks it is JSON-serialisable)."""
    result: StateDict = json.loads(json.dumps(opt.state_dict()))
    return result


@dataclass(frozen=True)
class Snapshot:
    params: dict[str, Array]
    state_dict: StateDict
    param_groups: list[dict[str, Any]]


def _snapshot(opt: Optimizer) -> Snapshot:
    return Snapshot(
        params={name: value.copy() for name, value in opt.params.items()},
        state_dict=copy.deepcopy(opt.state_dict()),
        param_groups=copy.deepcopy(opt.param_groups),
    )


def _assert_unchanged(opt: Optimizer, before: Snapshot) -> None:
    params = opt.params
    assert list(params) == list(before.params)
    for name, old in before.params.items():
        assert params[name].dtype == old.dtype, name
        assert params[name].shape == old.shape, name
        assert params[name].tobytes() == old.tobytes(), name
    # repr comparison: exact for floats, type-strict, and NaN compares equal to itself.
    assert repr(opt.state_dict()) == repr(before.state_dict)
    assert repr(opt.param_groups) == repr(before.param_groups)


def _assert_rejected(call: Callable[[], object], match: str) -> None:
    with pytest.raises(OptimCoreError, match=match) as excinfo:
        call()
    assert isinstance(excinfo.value, ValueError)


def _any_of(*words: str) -> str:
    return "|".join(re.escape(word) for word in words)


def _assert_same_trajectory(opt: Optimizer, twin: Optimizer) -> None:
    """A further valid step takes opt and twin to bitwise identical params and state."""
    grads = _grads(opt, seed=99)
    opt.step(grads)
    twin.step(grads)
    for name, value in twin.params.items():
        assert opt.params[name].dtype == value.dtype, name
        assert opt.params[name].tobytes() == value.tobytes(), name
    assert _json_state_dict(opt) == _json_state_dict(twin)


def test_optim_core_error_is_a_value_error() -> None:
    assert issubclass(OptimCoreError, ValueError)


# --- constructor -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "key", "value", "message"), INVALID_HYPERPARAMETER_CASES)
def test_constructor_with_invalid_hyperparameter_is_rejected_with_torch_message(
    kind: str, key: str, value: Any, message: str
) -> None:
    _assert_rejected(lambda: _make(kind, _initial_params(), **{key: value}), re.escape(message))


def _construct_or_error(kind: str, groups: list[dict[str, Any]]) -> Optimizer | OptimCoreError:
    try:
        return _make(kind, groups)
    except OptimCoreError as error:
        return error


@pytest.mark.parametrize(("kind", "key", "value", "message"), INVALID_HYPERPARAMETER_CASES)
def test_invalid_hyperparameter_in_a_constructor_group_is_rejected_before_any_update(
    kind: str, key: str, value: Any, message: str
) -> None:
    groups = _grouped(_initial_params())
    groups[1][key] = value
    built = _construct_or_error(kind, groups)
    if isinstance(built, OptimCoreError):  # rejected up front, like the defaults
        assert isinstance(built, ValueError)
        assert re.search(re.escape(message), str(built))
        return
    opt = built
    before = _snapshot(opt)
    _assert_rejected(lambda: opt.step(_grads(opt, seed=0)), re.escape(message))
    _assert_unchanged(opt, before)


@pytest.mark.parametrize(
    ("kind", "hyperparameters"),
    [(kind, hyper) for kind in KINDS for hyper in BOUNDARY_HYPERPARAMETERS.get(kind, [])],
)
def test_constructor_accepts_boundary_hyperparameters(kind: str, hyperparameters: dict[str, Any]) -> None:
    opt = _make(kind, _initial_params(), **hyperparameters)
    opt.step(_grads(opt, seed=0))
    assert all(np.isfinite(value).all() for value in opt.params.values())


@pytest.mark.parametrize("kind", [kind for kind in KINDS if "fused" in ALGORITHMS[kind].defaults])
@pytest.mark.parametrize(
    ("other", "message"),
    [("differentiable", "`fused` does not support `differentiable`"), ("foreach", "cannot be `True` together")],
)
def test_fused_with_differentiable_or_foreach_is_rejected_as_torch_rejects_it(
    kind: str, other: str, message: str
) -> None:
    _assert_rejected(lambda: _make(kind, _initial_params(), fused=True, **{other: True}), re.escape(message))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("empty", [{}, []], ids=["empty-dict", "empty-group-list"])
def test_constructor_with_empty_parameter_list_is_rejected(kind: str, empty: Any) -> None:
    _assert_rejected(lambda: _make(kind, empty), re.escape("optimizer got an empty parameter list"))


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_with_param_in_two_groups_is_rejected_naming_it(kind: str) -> None:
    groups = [
        {"params": {"shared_param": np.zeros(2, np.float32), "first_only": np.zeros(3, np.float32)}},
        {"params": {"shared_param": np.ones(2, np.float32)}, "lr": 0.1},
    ]
    _assert_rejected(lambda: _make(kind, groups), re.escape("shared_param"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", NON_FLOAT_DTYPES, ids=lambda dtype: np.dtype(dtype).name)
@pytest.mark.parametrize("grouped", [False, True], ids=["flat", "grouped"])
def test_constructor_with_non_float_param_is_rejected_naming_it(kind: str, dtype: Any, grouped: bool) -> None:
    good = np.zeros(2, np.float32)
    bad = np.ones(2, dtype)
    params: Any = (
        [{"params": {"good_param": good}}, {"params": {"bad_param": bad}}]
        if grouped
        else {"good_param": good, "bad_param": bad}
    )
    _assert_rejected(lambda: _make(kind, params), re.escape("bad_param"))


@pytest.mark.parametrize(
    ("kind", "key"),
    [(kind, key) for kind in KINDS for key in ("bogus_hparam", FOREIGN_GROUP_KEY[kind])],
)
def test_constructor_with_unknown_group_key_is_rejected_naming_it(kind: str, key: str) -> None:
    groups = _grouped(_initial_params())
    groups[1][key] = 0.5
    _assert_rejected(lambda: _make(kind, groups), re.escape(key))


# --- step ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_step_with_unknown_param_name_is_rejected_and_changes_nothing(kind: str) -> None:
    opt = _trained(kind)
    before = _snapshot(opt)
    grads = _grads(opt, seed=7) | {"ghost_param": np.zeros(2)}
    _assert_rejected(lambda: opt.step(grads), re.escape("ghost_param"))
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("name", "bad_grad"),
    [
        pytest.param(MATRIX, np.zeros((2, 3), np.float32), id="transposed"),
        pytest.param(MATRIX, np.zeros(6, np.float32), id="flattened"),
        pytest.param(MATRIX, np.zeros(2, np.float32), id="broadcastable-row"),
        pytest.param(MATRIX, np.zeros((1, 3, 2), np.float32), id="extra-leading-axis"),
        pytest.param(VECTOR, np.zeros(1), id="broadcastable-one-element"),
        pytest.param(VECTOR, np.zeros(()), id="broadcastable-0-d"),
        pytest.param(SCALAR, np.zeros(1), id="1-element-for-0-d-param"),
        pytest.param(SCALAR, np.zeros((1, 1)), id="1x1-for-0-d-param"),
        pytest.param(SINGLE, np.zeros((), np.float32), id="0-d-for-1-element-param"),
        pytest.param(SINGLE, np.zeros(0, np.float32), id="empty-for-1-element-param"),
    ],
)
def test_step_with_wrong_grad_shape_is_rejected_and_changes_nothing(kind: str, name: str, bad_grad: Array) -> None:
    opt = _trained(kind)
    before = _snapshot(opt)
    grads = _grads(opt, seed=7) | {name: bad_grad}
    _assert_rejected(lambda: opt.step(grads), re.escape(name))
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_value", [NAN, INF, -INF], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("name", [MATRIX, SCALAR])
def test_step_with_non_finite_grad_is_rejected_and_changes_nothing(kind: str, bad_value: float, name: str) -> None:
    opt = _trained(kind)
    before = _snapshot(opt)
    grads = _grads(opt, seed=7)
    bad_grad = grads[name].copy()
    bad_grad.flat[-1] = bad_value
    grads[name] = bad_grad
    _assert_rejected(lambda: opt.step(grads), re.escape(name))
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("kind", KINDS)
def test_step_with_empty_grads_is_rejected_and_changes_nothing(kind: str) -> None:
    opt = _trained(kind)
    before = _snapshot(opt)
    _assert_rejected(lambda: opt.step({}), r"(?i)grad")
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "dtype",
    [np.int64, np.int32, np.uint8, np.bool_, np.complex64, np.complex128, np.object_],
    ids=lambda dtype: np.dtype(dtype).name,
)
def test_step_with_non_float_grad_is_rejected_and_changes_nothing(kind: str, dtype: Any) -> None:
    opt = _trained(kind)
    before = _snapshot(opt)
    grads = _grads(opt, seed=7) | {VECTOR: np.ones(2, dtype)}
    _assert_rejected(lambda: opt.step(grads), re.escape(VECTOR))
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_first", [True, False], ids=["bad-first", "bad-last"])
def test_step_with_bad_grad_among_good_ones_applies_none_of_them(kind: str, bad_first: bool) -> None:
    opt = _trained(kind)
    twin = _trained(kind)
    before = _snapshot(opt)
    good = {name: grad for name, grad in _grads(opt, seed=7).items() if name != VECTOR}
    bad = {VECTOR: np.array([0.5, NAN])}
    grads = bad | good if bad_first else good | bad
    _assert_rejected(lambda: opt.step(grads), re.escape(VECTOR))
    _assert_unchanged(opt, before)
    _assert_same_trajectory(opt, twin)


@pytest.mark.parametrize(("kind", "key", "value", "message"), INVALID_HYPERPARAMETER_CASES)
@pytest.mark.parametrize("group", [0, 1])
def test_invalid_hyperparameter_set_through_param_groups_is_rejected_by_next_step_and_changes_nothing(
    kind: str, key: str, value: Any, message: str, group: int
) -> None:
    opt = _trained(kind)
    twin = _trained(kind)
    before = _snapshot(opt)  # taken while valid: state_dict() may itself refuse an invalid group
    valid_value = opt.param_groups[group][key]
    opt.param_groups[group][key] = value
    _assert_rejected(lambda: opt.step(_grads(opt, seed=7)), re.escape(message))
    assert repr(opt.param_groups[group][key]) == repr(value)  # the edit is kept, not silently undone
    opt.param_groups[group][key] = valid_value
    _assert_unchanged(opt, before)
    _assert_same_trajectory(opt, twin)


def _as_float16(grads: Grads) -> Grads:
    return {name: grad.astype(np.float16) for name, grad in grads.items()}


def _swap_float_width(grads: Grads) -> Grads:
    swapped = {np.dtype(np.float32): np.float64, np.dtype(np.float64): np.float32}
    return {name: grad.astype(swapped[grad.dtype]) for name, grad in grads.items()}


def _as_python_values(grads: Grads) -> Grads:
    """Nested lists of python floats, and a bare python float for the 0-d param."""
    return {name: grad.tolist() for name, grad in grads.items()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "convert",
    [_as_float16, _swap_float_width, _as_python_values],
    ids=["float16", "float32-float64-swapped", "python-lists-and-floats"],
)
def test_grads_of_another_float_dtype_are_cast_to_the_param_dtype(kind: str, convert: Callable[[Grads], Grads]) -> None:
    opt = _trained(kind)
    twin = _trained(kind)
    converted = convert(_grads(opt, seed=7))
    opt.step(converted)
    twin.step({name: np.asarray(grad).astype(twin.params[name].dtype) for name, grad in converted.items()})
    for name, value in twin.params.items():
        assert opt.params[name].dtype == _initial_params()[name].dtype, name
        assert opt.params[name].tobytes() == value.tobytes(), name
    assert _json_state_dict(opt) == _json_state_dict(twin)


# --- load_state_dict -------------------------------------------------------------------


def _assert_load_rejected(opt: Optimizer, state_dict: StateDict, match: str) -> None:
    before = _snapshot(opt)
    _assert_rejected(lambda: opt.load_state_dict(state_dict), match)
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change", ["drop-last-group", "duplicate-last-group"])
def test_load_state_dict_with_wrong_group_count_is_rejected_and_changes_nothing(kind: str, change: str) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    groups = state_dict["param_groups"]
    if change == "drop-last-group":
        groups.pop()
    else:
        groups.append(copy.deepcopy(groups[-1]))
    _assert_load_rejected(opt, state_dict, r"(?i)group")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change", ["drop-param", "extra-param"])
def test_load_state_dict_with_wrong_group_size_is_rejected_and_changes_nothing(kind: str, change: str) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    group = state_dict["param_groups"][0]
    if change == "drop-param":
        group["params"].pop()
        group["param_names"].pop()
    else:
        group["params"].append(5)
        group["param_names"].append("extra_param")
    _assert_load_rejected(opt, state_dict, r"(?i)group")


def _transposed(value: Any) -> Any:
    return np.array(value).T.tolist()


def _wrapped(value: Any) -> Any:
    return [value]


def _unwrapped(value: Any) -> Any:
    return value[0]


def _ragged(value: Any) -> Any:
    return [value[0], value[1][:1], value[2]]


@pytest.mark.parametrize(
    ("kind", "key"),
    [(kind, key) for kind in KINDS for key in ARRAY_STATE_KEYS[kind]],
)
@pytest.mark.parametrize(
    ("name", "reshape"),
    [
        pytest.param(MATRIX, _transposed, id="transposed"),
        pytest.param(MATRIX, _ragged, id="ragged"),
        pytest.param(SCALAR, _wrapped, id="1-element-for-0-d"),
        pytest.param(SINGLE, _unwrapped, id="bare-float-for-1-element"),
    ],
)
def test_load_state_dict_with_wrong_state_array_shape_is_rejected_and_changes_nothing(
    kind: str, key: str, name: str, reshape: Callable[[Any], Any]
) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    entry = state_dict["state"][INDEX[name]]
    entry[key] = reshape(entry[key])
    _assert_load_rejected(opt, state_dict, _any_of(key, name))


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_with_unknown_state_key_is_rejected_and_changes_nothing(kind: str) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    state_dict["state"]["1"]["bogus_buffer"] = [0.0, 0.0]
    _assert_load_rejected(opt, state_dict, re.escape("bogus_buffer"))


def _required_state_keys(kind: str) -> list[str]:
    """The keys a state entry of a param trained with ``TRAINING_HYPERPARAMETERS`` must have (SGD's entry has
    no step, and may lack its buffer as torch's may: the next step starts it from the gradient)."""
    spec = ALGORITHMS[kind]
    hyperparams = spec.parse({**spec.defaults, **TRAINING_HYPERPARAMETERS[kind]})
    return [*(("step",) if spec.step_in_state else ()), *sorted(spec.required_state_arrays(hyperparams))]


@pytest.mark.parametrize(
    ("kind", "key"),
    [(kind, key) for kind in KINDS for key in _required_state_keys(kind)],
)
def test_load_state_dict_with_missing_state_key_is_rejected_and_changes_nothing(kind: str, key: str) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    del state_dict["state"]["1"][key]
    _assert_load_rejected(opt, state_dict, re.escape(key))


@pytest.mark.parametrize(
    ("kind", "key"),
    [(kind, key) for kind in KINDS for key in ("bogus_hparam", FOREIGN_GROUP_KEY[kind])],
)
def test_load_state_dict_with_unknown_group_key_is_rejected_and_changes_nothing(kind: str, key: str) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    state_dict["param_groups"][1][key] = 0.5
    _assert_load_rejected(opt, state_dict, re.escape(key))


@pytest.mark.parametrize(
    ("kind", "key"),
    [(kind, key) for kind in KINDS for key in (*GROUP_KEYS[kind], "params")],
)
def test_load_state_dict_with_missing_group_key_is_rejected_and_changes_nothing(kind: str, key: str) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    del state_dict["param_groups"][0][key]
    _assert_load_rejected(opt, state_dict, re.escape(key))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("index", ["5", "99", "-1", "not_an_index"])
def test_load_state_dict_with_unknown_param_index_is_rejected_and_changes_nothing(kind: str, index: str) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    state_dict["state"][index] = copy.deepcopy(state_dict["state"][INDEX[VECTOR]])
    _assert_load_rejected(opt, state_dict, re.escape(index))


def _non_finite_cases(kind: str) -> list[Any]:
    cases = [
        pytest.param(kind, ("state", INDEX[MATRIX], key), bad, _any_of(key, MATRIX), id=f"{kind}-{key}-{bad}")
        for key in ARRAY_STATE_KEYS[kind]
        for bad in (NAN, INF, -INF)
    ]
    cases += [
        pytest.param(kind, ("state", INDEX[SCALAR], "step"), bad, _any_of("step", SCALAR), id=f"{kind}-step-{bad}")
        for bad in (NAN, INF)
    ]
    cases.append(pytest.param(kind, ("group", 0, "lr"), NAN, _any_of("learning rate", "lr"), id=f"{kind}-lr-nan"))
    return cases


@pytest.mark.parametrize(
    ("kind", "where", "bad_value", "match"),
    [case for kind in KINDS for case in _non_finite_cases(kind)],
)
def test_load_state_dict_with_non_finite_value_is_rejected_and_changes_nothing(
    kind: str, where: tuple[str, Any, str], bad_value: float, match: str
) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    section, position, key = where
    if section == "group":
        state_dict["param_groups"][position][key] = bad_value
    elif key == "step":
        state_dict["state"][position][key] = bad_value
    else:
        values = np.array(state_dict["state"][position][key])
        values.flat[-1] = bad_value
        state_dict["state"][position][key] = values.tolist()
    _assert_load_rejected(opt, state_dict, match)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "param_names",
    [[VECTOR, MATRIX], [MATRIX, "renamed_param"]],
    ids=["swapped", "renamed"],
)
def test_load_state_dict_with_mismatched_param_names_is_rejected_and_changes_nothing(
    kind: str, param_names: list[str]
) -> None:
    opt = _trained(kind)
    state_dict = _json_state_dict(opt)
    state_dict["param_groups"][0]["param_names"] = param_names
    _assert_load_rejected(opt, state_dict, _any_of("param_names", *param_names))


def _with_int_state_keys(state_dict: StateDict) -> StateDict:
    return {**state_dict, "state": {int(index): entry for index, entry in state_dict["state"].items()}}


def _without_param_names(state_dict: StateDict) -> StateDict:
    groups = [
        {key: value for key, value in group.items() if key != "param_names"} for group in state_dict["param_groups"]
    ]
    return {**state_dict, "param_groups": groups}


def _unchanged_form(state_dict: StateDict) -> StateDict:
    return state_dict


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "convert",
    [_unchanged_form, _with_int_state_keys, _without_param_names],
    ids=["string-keys", "int-keys", "no-param-names"],
)
def test_load_state_dict_accepts_int_keys_and_absent_param_names_and_resumes_identically(
    kind: str, convert: Callable[[StateDict], StateDict]
) -> None:
    source = _trained(kind)
    target = _make(kind, _grouped({name: value.copy() for name, value in source.params.items()}))
    target.load_state_dict(convert(_json_state_dict(source)))
    assert _json_state_dict(target) == _json_state_dict(source)
    _assert_same_trajectory(target, source)


def test_flag_replaced_by_an_equal_int_after_a_step_is_rejected_by_the_next_step() -> None:
    # 1 == True in Python: groups that compare equal to the last parsed ones are parsed again when a type differs.
    opt = _trained("rmsprop")
    before = _snapshot(opt)
    opt.param_groups[0]["centered"] = 1
    _assert_rejected(lambda: opt.step(_grads(opt, seed=7)), "centered must be a bool")
    opt.param_groups[0]["centered"] = True
    _assert_unchanged(opt, before)


def test_pair_edited_in_place_after_a_step_is_rejected_by_the_next_step() -> None:
    opt = _trained("rprop")
    etas = [0.4, 1.3]  # not the group's etas: the step below parses them
    opt.param_groups[1]["etas"] = etas
    opt.step(_grads(opt, seed=5))
    before = _snapshot(opt)
    etas[0] = 1.5  # the same list the last step parsed
    _assert_rejected(lambda: opt.step(_grads(opt, seed=7)), re.escape("Invalid eta values: 1.5, 1.3"))
    etas[0] = 0.4
    _assert_unchanged(opt, before)


def test_pair_of_another_sequence_type_edited_in_place_after_a_step_is_rejected_by_the_next_step() -> None:
    opt = _trained("rprop")
    etas = array.array("d", [0.4, 1.3])
    opt.param_groups[1]["etas"] = etas
    opt.step(_grads(opt, seed=5))
    before = _snapshot(opt)
    etas[0] = 1.5
    _assert_rejected(lambda: opt.step(_grads(opt, seed=7)), re.escape("Invalid eta values: 1.5, 1.3"))
    etas[0] = 0.4
    _assert_unchanged(opt, before)


def test_a_zero_replaced_by_a_negative_zero_after_a_step_is_what_state_dict_reports() -> None:
    opt = _trained("rmsprop")
    opt.param_groups[0]["weight_decay"] = 0.0
    opt.step(_grads(opt, seed=5))
    opt.param_groups[0]["weight_decay"] = -0.0  # torch keeps the sign it was given

    assert math.copysign(1.0, opt.state_dict()["param_groups"][0]["weight_decay"]) == -1.0
