"""optim_core replays torch's recorded runs (tests/fixtures/golden) and matches them after every step."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optim_core import ALGORITHMS, Optimizer
from tests.fixtures.golden import (
    GOLDEN_DIR,
    all_cases,
    as_array,
    constructor_args,
    initial_params,
    load_case,
    step_grads,
)
from tests.optimizers import BIT_FOR_BIT

DTYPES = ("float32", "float64")

# Rprop only multiplies, compares, clamps and adds +-step_size, all of which a port can do exactly as
# torch does, so it is compared bit for bit (sign of zero included).
# RMSprop, SGD, Adam, AdamW and Adagrad: torch's CPU kernels fuse multiply-adds (FMA in add with
# alpha, addcmul and lerp) and take square roots from MKL, which is not correctly rounded; a numpy
# port does neither, so the results agree only up to rounding (README's conventions).
# - float64: rtol 1e-12 / atol 1e-14, as the core brief specifies.
# - float32: |ours - torch| <= RMSPROP_FLOAT32_RTOL * peak, where peak is the largest magnitude the
#   element has had so far (the initial value included, for params). Rounding errors are relative
#   to the magnitudes that were rounded, and cancellation (a param crossing zero, a grad_avg or
#   momentum_buffer changing sign) leaves elements far smaller than those: against the element's
#   own value no rtol is honest, and a fixed atol (1e-6 is under 1 ulp at magnitude 16; momentum
#   buffers reach 20) is either too loose for small elements or too tight for large ones.
#   64 float32 unit roundoffs (u = 2**-24): a straightforward numpy port stays within 9u on these
#   fixtures (optim_core's SGD, Adam, AdamW and Adagrad within 5u, and within 5u of peak in float64
#   too), and formula mistakes (eps inside the sqrt, a missing 1 - alpha, weight decay applied
#   before negating for maximize) are off by orders of magnitude more. An element whose peak is 0
#   must be exactly 0.
RMSPROP_FLOAT64_RTOL, RMSPROP_FLOAT64_ATOL = 1e-12, 1e-14
RMSPROP_FLOAT32_RTOL = 64 * 2.0**-24

Case = dict[str, Any]
FIXTURE_KEYS = ["torch_version", "case", "optimizer", "dtype", "params", "param_groups", "hyperparameters", "steps"]


def _groups(case: Case) -> list[dict[str, Any]]:
    """The param groups with every hyperparameter, as torch reported them."""
    groups: list[dict[str, Any]] = case["steps"][-1]["state_dict"]["param_groups"]
    return groups


def _differ(case: Case, *keys: str) -> bool:
    """Whether each of `keys` takes at least two values across the param groups."""
    return all(len({json.dumps(group[key]) for group in _groups(case)}) > 1 for key in keys)


def _all_groups(case: Case, predicate: Callable[[dict[str, Any]], bool]) -> bool:
    return all(predicate(group) for group in _groups(case))


def _consecutive_grads(case: Case) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(previous, current) gradient of each param that has one in two consecutive steps."""
    for before, after in itertools.pairwise(case["steps"]):
        for name in before["grads"].keys() & after["grads"].keys():
            yield as_array(before["grads"][name], case["dtype"]), as_array(after["grads"][name], case["dtype"])


def _has_zeros_and_sign_flips(case: Case) -> bool:
    """Gradients with +0.0 and -0.0 elements, and elements that change sign from one step to the next."""
    zeros = [g[g == 0] for step in case["steps"] for g in map(np.asarray, step["grads"].values())]
    return (
        any(np.any(np.signbit(z)) for z in zeros)
        and any(np.any(~np.signbit(z)) for z in zeros)
        and any(np.any(prev * cur < 0) for prev, cur in _consecutive_grads(case))
    )


def _has_product_underflow(case: Case) -> bool:
    """Rprop takes the sign of grad * prev: a product that underflows to 0 counts as no sign change."""
    return any(np.any((prev != 0) & (cur != 0) & (prev * cur == 0)) for prev, cur in _consecutive_grads(case))


def _has_missing_grads(case: Case) -> bool:
    """Some param has no gradient in the first step, and some param loses it after having had one."""
    present = [set(step["grads"]) for step in case["steps"]]
    late_start = any(name not in present[0] and any(name in p for p in present) for name in case["params"])
    gap = any(before - after for before, after in itertools.pairwise(present))
    return late_start and gap


def _step_sizes_hit(case: Case, bound: int) -> bool:
    """Whether some Rprop step_size sits exactly on its group's step_sizes[bound], in the case dtype."""
    dtype = np.dtype(case["dtype"])
    for step in case["steps"]:
        state = step["state_dict"]["state"]
        for group in step["state_dict"]["param_groups"]:
            limit = dtype.type(group["step_sizes"][bound])
            for index in group["params"]:
                if str(index) in state and np.any(as_array(state[str(index)]["step_size"], case["dtype"]) == limit):
                    return True
    return False


def _is_defaults(case: Case) -> bool:
    return bool(case["hyperparameters"] == {} and case["param_groups"] == [{"params": list(case["params"])}])


def _centered_with_alpha(alpha: float) -> Callable[[Case], bool]:
    # torch's lerp for grad_avg only runs when centered.
    return lambda case: _all_groups(case, lambda g: g["alpha"] == alpha and g["centered"] is True)


def _lerps_from_the_end(case: Case) -> bool:
    # torch's lerp of exp_avg takes its "end - (end - start) * (1 - weight)" branch for weight 1 - beta1 >= 0.5.
    return _all_groups(case, lambda g: 1 - g["betas"][0] >= 0.5)


def _has_a_stepped_param_without_state(case: Case) -> bool:
    """SGD without momentum keeps no state for a param, even one that had gradients."""
    last = case["steps"][-1]["state_dict"]
    stepped = {name for step in case["steps"] for name in step["grads"]}
    indices = {
        name: str(i)
        for group in last["param_groups"]
        for i, name in zip(group["params"], group["param_names"], strict=True)
    }
    return any(indices[name] not in last["state"] for name in stepped)


def _has_a_param_stepped_late_with_state_from_the_start(case: Case) -> bool:
    """Adagrad makes every param's state as it is built: a param without a grad in the first step has step 0."""
    first = case["steps"][0]
    return any(
        name not in first["grads"] and first["state_dict"]["state"][str(index)]["step"] == 0.0
        for index, name in enumerate(case["params"])
    )


# Every case the fixture set must contain (in both dtypes), with a check that the fixture really
# exercises what its name promises, so a regenerated fixture cannot silently lose its point.
REQUIRED_CASES: dict[str, Callable[[Case], bool]] = {
    "rprop_defaults": _is_defaults,
    "rprop_step_size_max_clamp": lambda case: _step_sizes_hit(case, 1),
    "rprop_step_size_min_clamp": lambda case: _step_sizes_hit(case, 0),
    "rprop_maximize": lambda case: _all_groups(case, lambda g: g["maximize"] is True),
    "rprop_zeros_and_sign_flips": _has_zeros_and_sign_flips,
    "rprop_product_underflow": _has_product_underflow,
    "rprop_per_group": lambda case: _differ(case, "lr", "etas", "step_sizes", "maximize"),
    "rprop_no_grad_some_steps": _has_missing_grads,
    "rmsprop_defaults": _is_defaults,
    "rmsprop_eps_large": lambda case: _all_groups(case, lambda g: g["eps"] >= 0.1),
    "rmsprop_momentum": lambda case: _all_groups(case, lambda g: g["momentum"] > 0),
    "rmsprop_centered": lambda case: _all_groups(case, lambda g: g["centered"] is True),
    "rmsprop_weight_decay": lambda case: _all_groups(case, lambda g: g["weight_decay"] > 0),
    "rmsprop_maximize": lambda case: _all_groups(case, lambda g: g["maximize"] is True),
    "rmsprop_momentum_centered_weight_decay": lambda case: _all_groups(
        case, lambda g: g["momentum"] > 0 and g["centered"] is True and g["weight_decay"] > 0 and not g["maximize"]
    ),
    "rmsprop_momentum_centered_weight_decay_maximize": lambda case: _all_groups(
        case, lambda g: g["momentum"] > 0 and g["centered"] is True and g["weight_decay"] > 0 and g["maximize"] is True
    ),
    "rmsprop_per_group": lambda case: _differ(
        case, "lr", "alpha", "eps", "momentum", "centered", "weight_decay", "maximize"
    ),
    "rmsprop_zeros_and_sign_flips": _has_zeros_and_sign_flips,
    "rmsprop_no_grad_some_steps": _has_missing_grads,
    "rmsprop_alpha_0_9": _centered_with_alpha(0.9),
    "rmsprop_alpha_0_5": _centered_with_alpha(0.5),
    "rmsprop_alpha_0_3": _centered_with_alpha(0.3),
    "sgd_defaults": _is_defaults,
    "sgd_momentum": lambda case: _all_groups(case, lambda g: g["momentum"] > 0 and g["dampening"] == 0),
    "sgd_dampening": lambda case: _all_groups(case, lambda g: g["momentum"] > 0 and g["dampening"] > 0),
    "sgd_nesterov": lambda case: _all_groups(case, lambda g: g["nesterov"] is True),
    "sgd_weight_decay": lambda case: _all_groups(case, lambda g: g["weight_decay"] > 0 and g["momentum"] > 0),
    "sgd_maximize": lambda case: _all_groups(case, lambda g: g["maximize"] is True and g["momentum"] > 0),
    "sgd_per_group": lambda case: (
        _differ(case, "lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
        and _has_a_stepped_param_without_state(case)
    ),
    "sgd_no_grad_some_steps": _has_missing_grads,
    "adam_defaults": _is_defaults,
    "adam_amsgrad": lambda case: _all_groups(case, lambda g: g["amsgrad"] is True),
    "adam_amsgrad_weight_decay_maximize": lambda case: _all_groups(
        case, lambda g: g["amsgrad"] is True and g["weight_decay"] > 0 and g["maximize"] is True
    ),
    "adam_weight_decay": lambda case: _all_groups(
        case, lambda g: g["weight_decay"] > 0 and g["decoupled_weight_decay"] is False
    ),
    "adam_decoupled_weight_decay": lambda case: _all_groups(
        case, lambda g: g["weight_decay"] > 0 and g["decoupled_weight_decay"] is True
    ),
    "adam_maximize": lambda case: _all_groups(case, lambda g: g["maximize"] is True),
    "adam_betas": _lerps_from_the_end,
    "adam_eps_large": lambda case: _all_groups(case, lambda g: g["eps"] >= 0.1),
    "adam_per_group": lambda case: _differ(
        case, "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"
    ),
    "adam_no_grad_some_steps": _has_missing_grads,
    "adamw_defaults": _is_defaults,
    "adamw_amsgrad": lambda case: _all_groups(case, lambda g: g["amsgrad"] is True),
    "adamw_weight_decay": lambda case: _all_groups(case, lambda g: g["weight_decay"] >= 0.5),
    "adamw_maximize": lambda case: _all_groups(case, lambda g: g["maximize"] is True),
    "adamw_per_group": lambda case: _differ(case, "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"),
    "adamw_no_grad_some_steps": _has_missing_grads,
    "adagrad_defaults": _is_defaults,
    "adagrad_lr_decay": lambda case: _all_groups(case, lambda g: g["lr_decay"] > 0),
    "adagrad_weight_decay": lambda case: _all_groups(case, lambda g: g["weight_decay"] > 0),
    "adagrad_initial_accumulator_value": lambda case: _all_groups(case, lambda g: g["initial_accumulator_value"] > 0),
    "adagrad_maximize": lambda case: _all_groups(case, lambda g: g["maximize"] is True),
    "adagrad_per_group": lambda case: _differ(
        case, "lr", "lr_decay", "eps", "weight_decay", "initial_accumulator_value", "maximize"
    ),
    "adagrad_no_grad_some_steps": lambda case: (
        _has_missing_grads(case) and _has_a_param_stepped_late_with_state_from_the_start(case)
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REQUIRED_CASES)
def test_fixture_set_has_each_required_case_in_each_dtype_exercising_what_it_names(name: str, dtype: str) -> None:
    path = GOLDEN_DIR / f"{name}_{dtype}.json"
    assert path.is_file(), f"missing fixture {path.name}: run tests/fixtures/generate_golden.py"
    case = load_case(path)
    assert (case["case"], case["dtype"], case["optimizer"]) == (path.stem, dtype, name.split("_")[0])
    assert REQUIRED_CASES[name](case), f"{path.name} does not exercise what its name promises"


@pytest.mark.parametrize("path", all_cases(), ids=lambda path: path.stem)
def test_fixture_is_a_short_torch_2_13_run_with_a_0d_param(path: Path) -> None:
    case = load_case(path)
    assert list(case) == FIXTURE_KEYS
    assert case["torch_version"] == "2.13.0"
    assert case["case"] == path.stem
    assert case["optimizer"] in ALGORITHMS
    assert case["dtype"] in DTYPES
    assert 10 <= len(case["steps"]) <= 20
    assert any(np.ndim(value) == 0 for value in case["params"].values())
    assert [name for group in case["param_groups"] for name in group["params"]] == list(case["params"])


def _where(case: Case, step_index: int, *path: object) -> str:
    return f"{case['case']}, after step {step_index + 1}: " + "".join(f"[{p!r}]" for p in path)


def _state_array(value: Any, case: Case, where: str) -> np.ndarray:
    """A state_dict array of ours (JSON nested lists) in the case dtype; it must hold only values of that dtype."""
    wide = np.asarray(value, dtype=np.float64)
    narrow = wide.astype(case["dtype"])
    assert np.array_equal(narrow.astype(np.float64), wide), f"{where}: holds values that are not {case['dtype']}"
    return narrow


def _assert_same_json(actual: Any, expected: Any, where: str) -> None:
    """Equal JSON values; ints and floats may stand for each other (torch's default weight_decay is
    the int 0), bools and None may not (True == 1 in Python)."""
    message = f"{where}: {actual!r}, torch {expected!r}"
    if isinstance(expected, list):
        assert isinstance(actual, list), message
        assert len(actual) == len(expected), message
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_same_json(a, e, f"{where}[{i}]")
    elif isinstance(expected, int | float) and not isinstance(expected, bool):
        assert isinstance(actual, int | float), message
        assert not isinstance(actual, bool), message
        assert actual == expected, message
    else:
        assert type(actual) is type(expected), message
        assert actual == expected, message


class _TorchComparison:
    """Compares one replay's arrays with torch's, step after step."""

    def __init__(self, case: Case) -> None:
        self.case = case
        # Largest magnitude of each element so far, for the float32 RMSprop bound, keyed by
        # ("params", name) or (state index, state key).
        self.peaks: dict[tuple[str, str], np.ndarray] = {
            ("params", name): np.abs(value) for name, value in initial_params(case).items()
        }

    def assert_matches(self, actual: np.ndarray, expected: np.ndarray, key: tuple[str, str], where: str) -> None:
        assert actual.shape == expected.shape, f"{where}: shape {actual.shape}, torch {expected.shape}"
        if self.case["optimizer"] in BIT_FOR_BIT:
            message = f"{where}: not bit for bit torch's\nours  {actual!r}\ntorch {expected!r}"
            assert np.array_equal(actual, expected), message
            assert np.array_equal(np.signbit(actual), np.signbit(expected)), message
        elif self.case["dtype"] == "float64":
            np.testing.assert_allclose(
                actual, expected, rtol=RMSPROP_FLOAT64_RTOL, atol=RMSPROP_FLOAT64_ATOL, strict=True, err_msg=where
            )
        else:
            peak = self.peaks[key] = np.maximum(self.peaks.get(key, np.zeros_like(expected)), np.abs(expected))
            # In float64, where the difference of two float32 values is exact.
            error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            assert np.all(error <= RMSPROP_FLOAT32_RTOL * peak.astype(np.float64)), (
                f"{where}: beyond float32 rounding\nours  {actual!r}\ntorch {expected!r}\npeak  {peak!r}"
            )

    def assert_state_dict_matches(self, ours: dict[str, Any], torch_sd: dict[str, Any], step_index: int) -> None:
        case = self.case
        assert list(ours) == ["state", "param_groups"], _where(case, step_index)
        assert len(ours["param_groups"]) == len(torch_sd["param_groups"]), _where(case, step_index, "param_groups")
        for g, (group, expected_group) in enumerate(zip(ours["param_groups"], torch_sd["param_groups"], strict=True)):
            where = _where(case, step_index, "param_groups", g)
            assert list(group) == list(expected_group), f"{where}: keys {list(group)}, torch {list(expected_group)}"
            for key, expected in expected_group.items():
                _assert_same_json(group[key], expected, f"{where}[{key!r}]")

        # Only params that have had a gradient have state; the order of the entries carries no meaning.
        assert sorted(ours["state"]) == sorted(torch_sd["state"]), _where(case, step_index, "state")
        for index, expected_entry in torch_sd["state"].items():
            entry = ours["state"][index]
            assert sorted(entry) == sorted(expected_entry), _where(case, step_index, "state", index)
            if "step" in expected_entry:
                where = _where(case, step_index, "state", index, "step")
                message = f"{where}: {entry['step']!r}, torch {expected_entry['step']!r}"
                assert type(entry["step"]) is float, message
                assert entry["step"] == expected_entry["step"], message
            for key, expected in expected_entry.items():
                if key != "step":
                    where = _where(case, step_index, "state", index, key)
                    actual = _state_array(entry[key], case, where)
                    self.assert_matches(actual, as_array(expected, case["dtype"]), (index, key), where)


@pytest.mark.parametrize("path", all_cases(), ids=lambda path: path.stem)
def test_replaying_torch_gradients_gives_torch_params_and_state_dict_after_every_step(path: Path) -> None:
    case = load_case(path)
    params, hyperparameters = constructor_args(case)
    opt = Optimizer(ALGORITHMS[case["optimizer"]], params, hyperparameters)
    comparison = _TorchComparison(case)
    for step_index, step in enumerate(case["steps"]):
        opt.step(step_grads(case, step_index))

        assert sorted(opt.params) == sorted(step["params"]), _where(case, step_index, "params")
        for name, expected in step["params"].items():
            ours = opt.params[name]
            where = _where(case, step_index, "params", name)
            assert isinstance(ours, np.ndarray), f"{where}: {ours!r}"
            assert ours.dtype == np.dtype(case["dtype"]), f"{where}: {ours!r}"
            comparison.assert_matches(ours, as_array(expected, case["dtype"]), ("params", name), where)

        # Through JSON, as a client sees it; json.dumps must take the state_dict as it is.
        ours_sd = json.loads(json.dumps(opt.state_dict(), allow_nan=False))
        comparison.assert_state_dict_matches(ours_sd, step["state_dict"], step_index)
