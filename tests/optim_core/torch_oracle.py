"""torch.optim as the reference for optim_core's differential tests.

Builds a torch optimizer from the same named params, groups and hyperparameters that optim_core takes, steps it
with optim_core's grads dict, converts state dicts both ways between torch's layout (int keys, tensors, a float32
scalar "step") and optim_core's JSON one, and compares an optim_core optimizer with a torch one.

Importing this module needs torch; test modules that must run without torch import it only where torch is present.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from optim_core import RMSprop, Rprop

OptimizerName = Literal["Rprop", "RMSprop"]
FloatArray = npt.NDArray[np.floating[Any]]

_TORCH_CLASSES: dict[OptimizerName, type[torch.optim.Rprop] | type[torch.optim.RMSprop]] = {
    "Rprop": torch.optim.Rprop,
    "RMSprop": torch.optim.RMSprop,
}


def build_torch_optimizer(
    name: OptimizerName, groups: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The torch twin of ``optim_core.<name>(groups, **defaults)``.

    ``groups`` are in optim_core's form, ``{"params": {name: array}, **hyperparameter overrides}``. The params are
    copied into tensors and handed to torch as (name, tensor) pairs so that its state_dict carries "param_names".
    foreach=False pins torch to the single-tensor path that optim_core reproduces.
    """
    torch_groups = [
        {
            **{key: value for key, value in group.items() if key != "params"},
            "params": [(param_name, torch.tensor(np.asarray(array))) for param_name, array in group["params"].items()],
        }
        for group in groups
    ]
    return _TORCH_CLASSES[name](torch_groups, **defaults, foreach=False)


def _flat_named_params(optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """(name, param) in torch's flat index order, the order of the state_dict's int keys."""
    return [
        (param_name, param)
        for group in optimizer.param_groups
        for param_name, param in zip(group["param_names"], group["params"], strict=True)
    ]


def step_torch(optimizer: torch.optim.Optimizer, grads: Mapping[str, npt.ArrayLike]) -> None:
    """One torch step with optim_core's grads dict: a name absent from ``grads`` gets ``grad = None``."""
    for param_name, param in _flat_named_params(optimizer):
        param.grad = torch.tensor(np.asarray(grads[param_name]), dtype=param.dtype) if param_name in grads else None
    optimizer.step()


def torch_params(optimizer: torch.optim.Optimizer) -> dict[str, FloatArray]:
    """Copies of torch's current param values, by name."""
    return {param_name: param.detach().numpy().copy() for param_name, param in _flat_named_params(optimizer)}


def state_dict_to_json(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """torch's state_dict in optim_core's JSON layout: str keys, nested lists, floats, lists for tuples."""
    return {
        "state": {
            str(index): {key: value.tolist() for key, value in param_state.items()}
            for index, param_state in state_dict["state"].items()
        },
        "param_groups": [
            {key: list(value) if isinstance(value, tuple) else value for key, value in group.items()}
            for group in state_dict["param_groups"]
        ],
    }


def load_json_state_dict_into_torch(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any]) -> None:
    """Loads optim_core's JSON state_dict into ``optimizer`` the way the API brief prescribes: int state keys, every
    array a tensor of its param's dtype, "step" a float32 scalar tensor as torch creates it."""
    dtypes = [param.dtype for _, param in _flat_named_params(optimizer)]
    optimizer.load_state_dict(
        {
            "state": {
                int(index): {
                    key: torch.tensor(float(value), dtype=torch.float32)
                    if key == "step"
                    else torch.tensor(value, dtype=dtypes[int(index)])
                    for key, value in param_state.items()
                }
                for index, param_state in state_dict["state"].items()
            },
            "param_groups": [dict(group) for group in state_dict["param_groups"]],
        }
    )


@dataclass(frozen=True)
class Tolerance:
    """How close optim_core must be to torch; rtol = atol = 0 means equal bit for bit, signed zeros included."""

    rtol: float
    atol: float


BIT_FOR_BIT = Tolerance(rtol=0.0, atol=0.0)
# torch fuses multiply-adds (FMA) on CPU where numpy rounds every operation, so each such op may differ by an ulp of
# its result, and the differences compound over up to 20 steps; cancellation (grad + weight_decay * param, a momentum
# buffer or a param crossing zero) turns them into absolute rather than relative errors, hence atol.
# float64: the brief's rtol 1e-12 / atol 1e-14, 4,500 ulps of 2**-52.
# float32: rtol 1e-5 (84 ulps of 2**-23) and atol 1e-6, for values of order one (the tests keep params and grads
# within [-2, 2] and RMSprop's lr at most 0.1). Measured against a plain non-FMA numpy float32 RMSprop over 4,000
# random test_torch_parity runs, the worst error used 11% of this tolerance (float64: 1.5% of its own); one float32
# rounding of any hyperparameter already costs 1e-7 relative, so a much tighter bound would reject correct code.
RMSPROP_FLOAT64 = Tolerance(rtol=1e-12, atol=1e-14)
RMSPROP_FLOAT32 = Tolerance(rtol=1e-5, atol=1e-6)


def tolerance_for(optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> Tolerance:
    """The agreement the API brief demands: Rprop bit for bit; RMSprop to the rounding of its dtype."""
    if isinstance(optimizer, torch.optim.Rprop):
        return BIT_FOR_BIT
    return RMSPROP_FLOAT64 if dtype == torch.float64 else RMSPROP_FLOAT32


def assert_arrays_agree(actual: npt.ArrayLike, expected: FloatArray, tolerance: Tolerance, what: str) -> None:
    """``actual`` (optim_core) equals ``expected`` (torch) within ``tolerance``; NaN agrees with NaN."""
    actual_array = np.asarray(actual, dtype=np.float64)
    expected_array = np.asarray(expected, dtype=np.float64)
    assert actual_array.shape == expected_array.shape, f"{what}: shape {actual_array.shape} != {expected_array.shape}"
    if tolerance == BIT_FOR_BIT:
        np.testing.assert_array_equal(actual_array, expected_array, err_msg=what, strict=True)
        np.testing.assert_array_equal(
            np.signbit(actual_array), np.signbit(expected_array), err_msg=f"{what}: sign of a zero differs"
        )
    else:
        np.testing.assert_allclose(
            actual_array, expected_array, rtol=tolerance.rtol, atol=tolerance.atol, err_msg=what, strict=True
        )


def _without_foreach(group: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in group.items() if key != "foreach"}


def assert_agrees_with_torch(ours: Rprop | RMSprop, theirs: torch.optim.Optimizer) -> None:
    """optim_core's params and whole state_dict, structure and values, agree with torch's.

    Structure is compared exactly (group keys and hyperparameters, param indices and names, which params have state,
    each state's keys); arrays within the tolerance of the optimizer and dtype.
    """
    named_params = _flat_named_params(theirs)
    expected_params = torch_params(theirs)
    assert set(ours.params) == set(expected_params), "param names differ"
    for param_name, param in named_params:
        actual = ours.params[param_name]
        assert actual.dtype == expected_params[param_name].dtype, f"{param_name}: dtype {actual.dtype}"
        assert_arrays_agree(actual, expected_params[param_name], tolerance_for(theirs, param.dtype), param_name)

    actual_dict = ours.state_dict()
    expected_dict = state_dict_to_json(theirs.state_dict())
    assert list(actual_dict) == ["state", "param_groups"]
    assert len(actual_dict["param_groups"]) == len(expected_dict["param_groups"]), "group count"
    for index, (actual_group, expected_group) in enumerate(
        zip(actual_dict["param_groups"], expected_dict["param_groups"], strict=True)
    ):
        # The brief fixes the key order as torch's defaults order, then "params", then "param_names"; torch's own
        # group dicts put the keys a group overrides first, so only the key set is torch's to judge.
        assert list(actual_group) == [*theirs.defaults, "params", "param_names"], f"group {index} keys"
        # torch is pinned to foreach=False; optim_core keeps what it was given (torch's default None when built,
        # the loaded value after load_state_dict), and on CPU both select the same single-tensor path.
        assert _without_foreach(actual_group) == _without_foreach(expected_group), f"group {index}"
        assert ours.param_groups[index]["params"] == expected_group["param_names"], f"param_groups[{index}]"

    expected_state = expected_dict["state"]
    assert set(actual_dict["state"]) == set(expected_state), "which params have state"
    for index, actual_state in actual_dict["state"].items():
        param_name, param = named_params[int(index)]
        assert list(actual_state) == list(expected_state[index]), f"state of {param_name}: keys"
        for key, value in actual_state.items():
            what = f"state of {param_name}: {key}"
            if key == "step":
                assert isinstance(value, float), f"{what} is a {type(value).__name__}, not a float"
                assert value == expected_state[index][key], what
                continue
            # torch keeps state in the param's dtype, so every float32 value must survive a float32 round trip.
            if param.dtype == torch.float32:
                as_float64 = np.asarray(value, dtype=np.float64)
                np.testing.assert_array_equal(as_float64.astype(np.float32), as_float64, err_msg=f"{what} not float32")
            assert_arrays_agree(value, np.asarray(expected_state[index][key]), tolerance_for(theirs, param.dtype), what)
