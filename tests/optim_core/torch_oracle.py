"""torch.optim as the reference for optim_core's differential tests.

Builds a torch optimizer from the same named params, groups and hyperparameters that optim_core takes, steps it
with optim_core's grads dict, converts state dicts both ways between torch's layout (int keys, tensors, a float32
scalar "step") and optim_core's JSON one, and compares an optim_core optimizer with a torch one: Rprop bit for bit,
RMSprop within the brief's tolerances, widened only where a running bound on rounding error says the computation is
ill-conditioned (TorchTwin keeps that bound).

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
    """torch's counterpart of ``optim_core.<name>(groups, **defaults)``.

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
# RMSprop: torch fuses multiply-adds (FMA) on CPU where numpy rounds every operation, so each such op may differ by an
# ulp, and the differences compound over the steps. For well-conditioned values the brief's tolerances hold:
# float64 rtol 1e-12 / atol 1e-14 (4,500 ulps of 2**-52); float32 rtol 1e-5 (84 ulps of 2**-23) / atol 1e-6 for
# values of order one. Where the computation is ill-conditioned, no fixed tolerance is honest: grad + weight_decay *
# param can cancel to a tiny grad whose one-ulp error is then divided by an avg as small as eps (found by Hypothesis:
# 2e-6 apart in a float32 momentum buffer of -5e-4). There the tolerance widens to RMSPROP_DRIFT_FACTOR times a
# first-order bound on the rounding error that one correct implementation accumulates (see _rmsprop_rounding_bounds):
# two implementations differ by at most twice that bound, and twice again covers the higher-order terms it leaves
# out. Measured against a plain non-FMA numpy RMSprop (optim_core as of this writing) over 4,000 random
# test_torch_parity runs, the worst error used 10% of this tolerance in float32 and 2% in float64; yet a 1e-6
# relative error in eps, or 1e-4 in momentum, still fails it.
RMSPROP_FLOAT64 = Tolerance(rtol=1e-12, atol=1e-14)
RMSPROP_FLOAT32 = Tolerance(rtol=1e-5, atol=1e-6)
RMSPROP_DRIFT_FACTOR = 4.0


def tolerance_for(optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> Tolerance:
    """The agreement the API brief demands: Rprop bit for bit; RMSprop to the rounding of its dtype."""
    if isinstance(optimizer, torch.optim.Rprop):
        return BIT_FOR_BIT
    return RMSPROP_FLOAT64 if dtype == torch.float64 else RMSPROP_FLOAT32


def assert_arrays_agree(
    actual: npt.ArrayLike, expected: FloatArray, tolerance: Tolerance, what: str, drift: FloatArray | None = None
) -> None:
    """``actual`` (optim_core) equals ``expected`` (torch) within ``tolerance``, or within RMSPROP_DRIFT_FACTOR times
    the elementwise rounding ``drift`` bound where that is larger; NaN agrees with NaN."""
    actual_array = np.asarray(actual, dtype=np.float64)
    expected_array = np.asarray(expected, dtype=np.float64)
    assert actual_array.shape == expected_array.shape, f"{what}: shape {actual_array.shape} != {expected_array.shape}"
    if tolerance == BIT_FOR_BIT:
        np.testing.assert_array_equal(actual_array, expected_array, err_msg=what, strict=True)
        np.testing.assert_array_equal(
            np.signbit(actual_array), np.signbit(expected_array), err_msg=f"{what}: sign of a zero differs"
        )
        return
    atol = np.maximum(tolerance.atol, RMSPROP_DRIFT_FACTOR * drift) if drift is not None else tolerance.atol
    close = np.isclose(actual_array, expected_array, rtol=tolerance.rtol, atol=atol, equal_nan=True)
    if not close.all():
        index = tuple(int(i) for i in np.argwhere(~close)[0])
        ours, theirs = float(actual_array[index]), float(expected_array[index])
        allowed = tolerance.rtol * abs(theirs) + float(np.broadcast_to(atol, close.shape)[index])
        raise AssertionError(
            f"{what}: {int((~close).sum())} of {close.size} elements differ beyond tolerance; first at {index}: "
            f"optim_core {ours!r}, torch {theirs!r}, |difference| {abs(ours - theirs)!r} > allowed {allowed!r}"
        )


def _without_foreach(group: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in group.items() if key != "foreach"}


def assert_agrees_with_torch(
    ours: Rprop | RMSprop, theirs: torch.optim.Optimizer, drift: Mapping[tuple[str, str], FloatArray]
) -> None:
    """optim_core's params and whole state_dict, structure and values, agree with torch's.

    Structure is compared exactly (group keys and hyperparameters, param indices and names, which params have state,
    each state's keys); arrays within the tolerance of the optimizer and dtype, widened by ``drift`` (keyed by param
    name and "param" or state key) where that is larger.
    """
    named_params = _flat_named_params(theirs)
    expected_params = torch_params(theirs)
    assert set(ours.params) == set(expected_params), "param names differ"
    for param_name, param in named_params:
        actual = ours.params[param_name]
        assert actual.dtype == expected_params[param_name].dtype, f"{param_name}: dtype {actual.dtype}"
        tolerance = tolerance_for(theirs, param.dtype)
        assert_arrays_agree(
            actual, expected_params[param_name], tolerance, param_name, drift.get((param_name, "param"))
        )

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
            tolerance = tolerance_for(theirs, param.dtype)
            expected = np.asarray(expected_state[index][key])
            assert_arrays_agree(value, expected, tolerance, what, drift.get((param_name, key)))


class TorchTwin:
    """A torch optimizer run beside an optim_core one from the same state: steps it and compares the two.

    For RMSprop it also keeps, per param and state array, the bound from _rmsprop_rounding_bounds; it starts at zero,
    so create the twin when both optimizers hold identical values (at construction, or right after a state load).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._drift: dict[tuple[str, str], FloatArray] = {}

    def step(self, grads: Mapping[str, npt.ArrayLike]) -> None:
        if isinstance(self.optimizer, torch.optim.RMSprop):
            for group in self.optimizer.param_groups:
                for param_name, param in zip(group["param_names"], group["params"], strict=True):
                    if param_name not in grads:
                        continue
                    bounds = {key: bound for (name, key), bound in self._drift.items() if name == param_name}
                    grad = np.asarray(grads[param_name], dtype=np.float64)
                    new_bounds = _rmsprop_rounding_bounds(group, param, self.optimizer.state[param], grad, bounds)
                    self._drift.update({(param_name, key): bound for key, bound in new_bounds.items()})
        step_torch(self.optimizer, grads)

    def assert_agrees(self, ours: Rprop | RMSprop) -> None:
        assert_agrees_with_torch(ours, self.optimizer, self._drift)


def _rmsprop_rounding_bounds(
    group: Mapping[str, Any],
    param: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    grad: FloatArray,
    bounds: Mapping[str, FloatArray],
) -> dict[str, FloatArray]:
    """First-order bounds on the rounding error one correct implementation carries after this RMSprop step, for the
    param and each state array, from torch's values before the step and the ``bounds`` carried into it.

    Every operation is charged one unit roundoff of its operands' magnitudes (products with a scalar hyperparameter,
    itself rounded to the dtype, twice), and incoming errors are propagated through the step's formulas.
    """
    zeros = np.zeros(tuple(param.shape))

    def before(key: str) -> FloatArray:
        # No state yet: torch starts every buffer at zero.
        return state[key].numpy().astype(np.float64) if key in state else zeros

    def carried(key: str) -> FloatArray:
        return bounds.get(key, zeros)

    lr, alpha, eps = float(group["lr"]), float(group["alpha"]), float(group["eps"])
    weight_decay, momentum = float(group["weight_decay"]), float(group["momentum"])
    u = 2.0**-24 if param.dtype == torch.float32 else 2.0**-53  # unit roundoff
    weight = 1.0 - alpha
    p = param.detach().numpy().astype(np.float64)
    g = (-grad if group["maximize"] else grad) + weight_decay * p
    e_g = weight_decay * carried("param") + u * (weight_decay * np.abs(p) + np.abs(g)) if weight_decay else zeros
    square_avg = alpha * before("square_avg") + weight * g * g
    e_square_avg = alpha * carried("square_avg") + 2 * weight * np.abs(g) * e_g + 4 * u * square_avg
    new_bounds: dict[str, FloatArray] = {"square_avg": e_square_avg}
    if group["centered"]:
        old_grad_avg = before("grad_avg")
        grad_avg = old_grad_avg + weight * (g - old_grad_avg)
        e_grad_avg = alpha * carried("grad_avg") + weight * e_g + 4 * u * (np.abs(old_grad_avg) + np.abs(g))
        new_bounds["grad_avg"] = e_grad_avg
        variance = np.maximum(square_avg - grad_avg * grad_avg, 0.0)
        e_variance = e_square_avg + 2 * np.abs(grad_avg) * e_grad_avg + 2 * u * (square_avg + grad_avg * grad_avg)
    else:
        variance, e_variance = square_avg, e_square_avg
    root = np.sqrt(variance)
    # |sqrt(x + d) - sqrt(x)| <= d / (sqrt(x + d) + sqrt(x)), which stays finite at x = 0.
    denominator = np.sqrt(variance + e_variance) + root
    e_root = np.divide(e_variance, denominator, out=zeros.copy(), where=denominator > 0) + u * root
    avg = root + eps
    e_avg = e_root + u * avg
    ratio = g / avg
    e_ratio = e_g / avg + np.abs(g) * e_avg / avg**2 + 2 * u * np.abs(ratio)
    if momentum > 0:
        old_buffer = before("momentum_buffer")
        buffer = momentum * old_buffer + ratio
        e_buffer = (
            momentum * carried("momentum_buffer") + e_ratio + 3 * u * (momentum * np.abs(old_buffer) + np.abs(ratio))
        )
        new_bounds["momentum_buffer"] = e_buffer
        update, e_update = lr * buffer, lr * e_buffer
    else:
        update, e_update = lr * ratio, lr * e_ratio
    new_bounds["param"] = carried("param") + e_update + 2 * u * (np.abs(p) + np.abs(update))
    return new_bounds
