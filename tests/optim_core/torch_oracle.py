"""torch.optim as the reference for optim_core's differential tests.

Builds a torch optimizer from the same named params, groups and hyperparameters that optim_core takes, steps it
with optim_core's grads dict, converts state dicts both ways between torch's layout (int keys, tensors, a float32
scalar "step") and optim_core's JSON one, and compares an optim_core optimizer with a torch one: Rprop bit for bit,
the others (RMSprop, SGD, Adam, AdamW, Adagrad) within the brief's tolerances, widened only where a running bound on
rounding error says the computation is ill-conditioned (TorchTwin keeps that bound).

Importing this module needs torch; test modules that must run without torch import it only where torch is present.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from optim_core import SGD, Adagrad, Adam, AdamW, RMSprop, Rprop

OptimizerName = Literal["Rprop", "RMSprop", "SGD", "Adam", "AdamW", "Adagrad"]
FloatArray = npt.NDArray[np.floating[Any]]
CoreOptimizer = Rprop | RMSprop | SGD | Adam | AdamW | Adagrad

_TORCH_CLASSES: dict[OptimizerName, type[torch.optim.Optimizer]] = {
    "Rprop": torch.optim.Rprop,
    "RMSprop": torch.optim.RMSprop,
    "SGD": torch.optim.SGD,
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "Adagrad": torch.optim.Adagrad,
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
    optimizer: torch.optim.Optimizer = _TORCH_CLASSES[name](torch_groups, **defaults, foreach=False)  # type: ignore[call-arg]
    return optimizer


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
# SGD, Adam, AdamW and Adagrad are held to the same tolerances and the same factor over their own bounds (below, beside
# RMSprop's): torch fuses their multiply-adds too (add with alpha, lerp, addcmul), and its square roots are not
# correctly rounded (about one float32 root in six is an ulp off), which each bound charges as two unit roundoffs.
RMSPROP_FLOAT64 = Tolerance(rtol=1e-12, atol=1e-14)
RMSPROP_FLOAT32 = Tolerance(rtol=1e-5, atol=1e-6)
RMSPROP_DRIFT_FACTOR = 4.0


def tolerance_for(optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> Tolerance:
    """The agreement the API brief demands: Rprop bit for bit; the others to the rounding of their dtype."""
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
    ours: CoreOptimizer, theirs: torch.optim.Optimizer, drift: Mapping[tuple[str, str], FloatArray]
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

    For the optimizers not compared bit for bit it also keeps, per param and state array, the bound from their
    _*_rounding_bounds; it starts at zero, so create the twin when both optimizers hold identical values (at
    construction, or right after a state load).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._drift: dict[tuple[str, str], FloatArray] = {}

    def step(self, grads: Mapping[str, npt.ArrayLike]) -> None:
        rounding_bounds = next(
            (bounds for kind, bounds in _ROUNDING_BOUNDS.items() if isinstance(self.optimizer, kind)), None
        )
        if rounding_bounds is not None:
            for group in self.optimizer.param_groups:
                for param_name, param in zip(group["param_names"], group["params"], strict=True):
                    if param_name not in grads:
                        continue
                    bounds = {key: bound for (name, key), bound in self._drift.items() if name == param_name}
                    grad = np.asarray(grads[param_name], dtype=np.float64)
                    new_bounds = rounding_bounds(group, param, self.optimizer.state.get(param, {}), grad, bounds)
                    self._drift.update({(param_name, key): bound for key, bound in new_bounds.items()})
        step_torch(self.optimizer, grads)

    def assert_agrees(self, ours: CoreOptimizer) -> None:
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


Bounds = dict[str, FloatArray]


class _Before:
    """torch's values of one param before a step, in float64, and the bounds carried into it (zero where none)."""

    def __init__(
        self, param: torch.Tensor, state: Mapping[str, torch.Tensor], bounds: Mapping[str, FloatArray]
    ) -> None:
        self.zeros = np.zeros(tuple(param.shape))
        self.u = 2.0**-24 if param.dtype == torch.float32 else 2.0**-53  # unit roundoff
        self.param = param.detach().numpy().astype(np.float64)
        self._state = state
        self._bounds = bounds

    def has(self, key: str) -> bool:
        return key in self._state

    def state(self, key: str, initial: float = 0.0) -> FloatArray:
        # No state yet: torch starts the buffer at ``initial``.
        return self._state[key].numpy().astype(np.float64) if key in self._state else self.zeros + initial

    def carried(self, key: str) -> FloatArray:
        return self._bounds.get(key, self.zeros)


def _decayed_grad(
    before: _Before, grad: FloatArray, maximize: bool, weight_decay: float
) -> tuple[FloatArray, FloatArray]:
    """grad.add(param, alpha=weight_decay) after maximize's negation, and its bound (one rounding per operation)."""
    g = (-grad if maximize else grad) + weight_decay * before.param
    if not weight_decay:
        return g, before.zeros
    return g, weight_decay * before.carried("param") + before.u * (weight_decay * np.abs(before.param) + np.abs(g))


def _root_bound(before: _Before, value: FloatArray, e_value: FloatArray) -> tuple[FloatArray, FloatArray]:
    """sqrt(value) and its bound: the propagated error, and two unit roundoffs for torch's root, which is not
    correctly rounded."""
    root = np.sqrt(value)
    # |sqrt(x + d) - sqrt(x)| <= d / (sqrt(x + d) + sqrt(x)), which stays finite at x = 0.
    denominator = np.sqrt(value + e_value) + root
    e_root = np.divide(e_value, denominator, out=before.zeros.copy(), where=denominator > 0) + 2 * before.u * root
    return root, e_root


def _sgd_rounding_bounds(
    group: Mapping[str, Any],
    param: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    grad: FloatArray,
    bounds: Mapping[str, FloatArray],
) -> Bounds:
    """SGD's first-order bounds, as _rmsprop_rounding_bounds takes RMSprop's."""
    before = _Before(param, state, bounds)
    u, p = before.u, before.param
    lr, momentum, dampening = float(group["lr"]), float(group["momentum"]), float(group["dampening"])
    g, e_g = _decayed_grad(before, grad, group["maximize"], float(group["weight_decay"]))
    new_bounds: Bounds = {}
    direction, e_direction = g, e_g
    if momentum != 0:
        buffer: FloatArray
        e_buffer: FloatArray
        if before.has("momentum_buffer"):
            old = before.state("momentum_buffer")
            buffer = momentum * old + (1 - dampening) * g
            e_buffer = (
                momentum * before.carried("momentum_buffer")
                + abs(1 - dampening) * e_g
                + 3 * u * (momentum * np.abs(old) + abs(1 - dampening) * np.abs(g))
            )
        else:
            buffer, e_buffer = g, e_g
        new_bounds["momentum_buffer"] = e_buffer
        if group["nesterov"]:
            direction = g + momentum * buffer
            e_direction = e_g + momentum * e_buffer + 2 * u * (np.abs(g) + momentum * np.abs(buffer))
        else:
            direction, e_direction = buffer, e_buffer
    new_bounds["param"] = before.carried("param") + lr * e_direction + 2 * u * (np.abs(p) + lr * np.abs(direction))
    return new_bounds


def _adam_rounding_bounds(
    group: Mapping[str, Any],
    param: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    grad: FloatArray,
    bounds: Mapping[str, FloatArray],
) -> Bounds:
    """Adam's and AdamW's first-order bounds, as _rmsprop_rounding_bounds takes RMSprop's."""
    before = _Before(param, state, bounds)
    u, p = before.u, before.param
    lr, eps, weight_decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    beta1, beta2 = (float(beta) for beta in group["betas"])
    e_p = before.carried("param")
    if weight_decay and group["decoupled_weight_decay"]:
        p = p * (1 - lr * weight_decay)
        e_p = abs(1 - lr * weight_decay) * e_p + u * np.abs(p)
        g, e_g = _decayed_grad(before, grad, group["maximize"], 0.0)
    else:
        g, e_g = _decayed_grad(before, grad, group["maximize"], weight_decay)
    step = float(state["step"]) + 1 if "step" in state else 1.0
    old_exp_avg = before.state("exp_avg")
    exp_avg = old_exp_avg + (1 - beta1) * (g - old_exp_avg)
    e_exp_avg = beta1 * before.carried("exp_avg") + (1 - beta1) * e_g + 4 * u * (np.abs(old_exp_avg) + np.abs(g))
    exp_avg_sq = beta2 * before.state("exp_avg_sq") + (1 - beta2) * g * g
    e_exp_avg_sq = beta2 * before.carried("exp_avg_sq") + 2 * (1 - beta2) * np.abs(g) * e_g + 4 * u * exp_avg_sq
    new_bounds: Bounds = {"exp_avg": e_exp_avg, "exp_avg_sq": e_exp_avg_sq}
    second, e_second = exp_avg_sq, e_exp_avg_sq
    if group["amsgrad"]:
        second = np.maximum(before.state("max_exp_avg_sq"), exp_avg_sq)
        e_second = new_bounds["max_exp_avg_sq"] = np.maximum(before.carried("max_exp_avg_sq"), e_exp_avg_sq)
    step_size = lr / (1 - beta1**step)
    correction = (1 - beta2**step) ** 0.5
    root, e_root = _root_bound(before, second, e_second)
    denominator = root / correction + eps
    e_denominator = e_root / correction + u * root / correction + u * denominator
    ratio = step_size * exp_avg / denominator
    e_ratio = (
        step_size * e_exp_avg / denominator
        + step_size * np.abs(exp_avg) * e_denominator / denominator**2
        + 2 * u * np.abs(ratio)
    )
    new_bounds["param"] = e_p + e_ratio + 2 * u * (np.abs(p) + np.abs(ratio))
    return new_bounds


def _adagrad_rounding_bounds(
    group: Mapping[str, Any],
    param: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    grad: FloatArray,
    bounds: Mapping[str, FloatArray],
) -> Bounds:
    """Adagrad's first-order bounds, as _rmsprop_rounding_bounds takes RMSprop's."""
    before = _Before(param, state, bounds)
    u, p = before.u, before.param
    lr, lr_decay, eps = float(group["lr"]), float(group["lr_decay"]), float(group["eps"])
    g, e_g = _decayed_grad(before, grad, group["maximize"], float(group["weight_decay"]))
    step = float(state["step"]) + 1
    rate = lr / (1 + (step - 1) * lr_decay)
    total = before.state("sum") + g * g
    e_total = before.carried("sum") + 2 * np.abs(g) * e_g + 2 * u * total
    root, e_root = _root_bound(before, total, e_total)
    std = root + eps
    e_std = e_root + u * std
    ratio = rate * g / std
    e_ratio = rate * e_g / std + rate * np.abs(g) * e_std / std**2 + 2 * u * np.abs(ratio)
    return {"sum": e_total, "param": before.carried("param") + e_ratio + 2 * u * (np.abs(p) + np.abs(ratio))}


_ROUNDING_BOUNDS: dict[type[torch.optim.Optimizer], Any] = {
    torch.optim.RMSprop: _rmsprop_rounding_bounds,
    torch.optim.SGD: _sgd_rounding_bounds,
    torch.optim.Adam: _adam_rounding_bounds,  # AdamW is torch's Adam with decoupled_weight_decay
    torch.optim.Adagrad: _adagrad_rounding_bounds,
}
"""Each optimizer compared to rounding, and the function that bounds the rounding of its step."""
