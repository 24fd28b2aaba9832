"""A measured step's telemetry against the same quantities computed with numpy from the arrays before and
after the step: the norms in float64 to within 1e-12 relative, the spreads exactly.

Two param groups with their own learning rates, a param the step skips, float32 and float64, and sizes
that span several of the kernels' blocks and more elements than a spread's median samples.
"""

import importlib.util
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from optim_core import ALGORITHMS, Optimizer
from optim_core.chunks import CHUNK_ELEMENTS
from optim_core.telemetry import SAMPLE_LIMIT

TOLERANCE = 1e-12
SMALL = {"w": (30, 7), "b": (11,), "skipped": (5,)}
LARGE = {"w": (2 * CHUNK_ELEMENTS + 123,), "b": (CHUNK_ELEMENTS // 3, 3), "skipped": (5,)}
"""More elements than ``SAMPLE_LIMIT`` and three blocks for ``w``: the blocked sums and the strided sample."""
HYPERPARAMETERS: dict[str, list[dict[str, Any]]] = {
    "rprop": [{}, {"etas": (0.4, 1.3), "step_sizes": (1e-4, 0.5)}, {"maximize": True}],
    "rmsprop": [
        {},
        {"momentum": 0.9, "weight_decay": 0.01},
        {"centered": True, "alpha": 0.9},
        {"centered": True, "momentum": 0.5, "maximize": True},
    ],
}
CASES = [(name, hyperparameters) for name, options in HYPERPARAMETERS.items() for hyperparameters in options]


def _optimizer(
    name: str, shapes: Mapping[str, tuple[int, ...]], dtype: str, **hyperparameters: Any
) -> Optimizer[Any, Any]:
    rng = np.random.default_rng(7)
    params = {key: rng.standard_normal(shape).astype(dtype) for key, shape in shapes.items()}
    groups = [
        {"params": {"w": params["w"], "skipped": params["skipped"]}, "lr": 0.02},
        {"params": {"b": params["b"]}, "lr": 0.005},
    ]
    return Optimizer(ALGORITHMS[name], groups, hyperparameters)


def _stepped_in_order(optimizer: Optimizer[Any, Any], grads: Mapping[str, np.ndarray]) -> list[str]:
    return [name for group in optimizer.param_groups for name in group["params"] if name in grads]


def _norm(arrays: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(array.astype(np.float64)))) for array in arrays))


def _sampled_median(values: list[np.ndarray]) -> float:
    """The median the docs promise: exact up to SAMPLE_LIMIT elements, else of every k-th element."""
    flat = np.concatenate([value.reshape(-1).astype(np.float64) for value in values])
    stride = max(1, -(-flat.size // SAMPLE_LIMIT))
    return float(np.median(flat[::stride]))


def _state_of(optimizer: Optimizer[Any, Any], name: str) -> dict[str, np.ndarray]:
    state = optimizer.state_dict_arrays()
    index = [n for group in state["param_groups"] for n in group["param_names"]].index(name)
    entry: dict[str, np.ndarray] = state["state"].get(str(index), {})
    return entry


def _rel(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / abs(theirs) if theirs else abs(ours)


@pytest.mark.parametrize("shapes", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "hyperparameters"), CASES)
def test_measured_steps_equal_numpy_over_the_arrays_before_and_after(
    name: str, hyperparameters: dict[str, Any], dtype: str, shapes: dict[str, tuple[int, ...]]
) -> None:
    optimizer = _optimizer(name, shapes, dtype, **hyperparameters)
    rng = np.random.default_rng(11)
    for _ in range(4):
        grads = {key: rng.standard_normal(shapes[key]).astype(dtype) for key in ("w", "b")}
        stepped = _stepped_in_order(optimizer, grads)
        before = {key: value.copy() for key, value in optimizer.params.items()}
        previous = {key: _state_of(optimizer, key) for key in stepped}

        telemetry = optimizer.measured_step(grads)

        after = optimizer.params
        state = {key: _state_of(optimizer, key) for key in stepped}
        assert _rel(telemetry.grad_norm, _norm([grads[key] for key in stepped])) <= TOLERANCE
        changes = [after[key].astype(np.float64) - before[key].astype(np.float64) for key in stepped]
        assert _rel(telemetry.update_norm, _norm(changes)) <= TOLERANCE
        assert _rel(telemetry.param_norm, _norm([after[key] for key in stepped])) <= TOLERANCE
        assert np.array_equal(after["skipped"], before["skipped"])
        assert telemetry.lr == [0.02, 0.005]
        if name == "rprop":
            _check_rprop(
                telemetry.extra, grads, previous, state, stepped, maximize=hyperparameters.get("maximize", False)
            )
        else:
            _check_rmsprop(telemetry.extra, state, stepped, optimizer, dtype, hyperparameters)


def _check_rprop(
    extra: dict[str, Any],
    grads: Mapping[str, np.ndarray],
    previous: Mapping[str, dict[str, np.ndarray]],
    state: Mapping[str, dict[str, np.ndarray]],
    stepped: list[str],
    *,
    maximize: bool,
) -> None:
    sizes = [state[key]["step_size"] for key in stepped]
    assert extra["step_size"]["min"] == min(float(size.min()) for size in sizes)
    assert extra["step_size"]["max"] == max(float(size.max()) for size in sizes)
    assert extra["step_size"]["median"] == _sampled_median(sizes)
    sign = -1.0 if maximize else 1.0
    changed = sum(
        int(np.count_nonzero(np.sign(sign * grads[key]) * np.sign(previous[key].get("prev", np.zeros(1))) < 0))
        for key in stepped
    )
    elements = sum(grads[key].size for key in stepped)
    assert extra["sign_change_fraction"] == changed / elements


def _check_rmsprop(
    extra: dict[str, Any],
    state: Mapping[str, dict[str, np.ndarray]],
    stepped: list[str],
    optimizer: Optimizer[Any, Any],
    dtype: str,
    hyperparameters: dict[str, Any],
) -> None:
    eps = np.dtype(dtype).type(1e-8)
    lr_of = {name: group["lr"] for group in optimizer.param_groups for name in group["params"]}
    rates = []
    for key in stepped:
        square_avg = state[key]["square_avg"]
        if hyperparameters.get("centered"):
            grad_avg = state[key]["grad_avg"]
            denominator = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            denominator = np.sqrt(square_avg) + eps
        rates.append(lr_of[key] / denominator.astype(np.float64))
    assert extra["effective_lr"]["min"] == min(float(rate.min()) for rate in rates)
    assert extra["effective_lr"]["max"] == max(float(rate.max()) for rate in rates)
    assert extra["effective_lr"]["median"] == _sampled_median(rates)


@pytest.mark.parametrize("name", sorted(HYPERPARAMETERS))
def test_a_plain_step_and_a_measured_step_change_the_params_alike(name: str) -> None:
    plain, measured = (_optimizer(name, SMALL, "float32") for _ in range(2))
    rng = np.random.default_rng(3)
    for _ in range(3):
        grads = {key: rng.standard_normal(SMALL[key]).astype(np.float32) for key in ("w", "b")}
        plain.step(grads)
        measured.measured_step(grads)
    for key, value in plain.params.items():
        assert np.array_equal(value, measured.params[key])
    assert plain.state_dict() == measured.state_dict()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed: no clip_grad_norm_")
def test_grad_norm_is_the_total_norm_torch_clips_by() -> None:
    import torch

    optimizer = _optimizer("rmsprop", SMALL, "float64")
    rng = np.random.default_rng(5)
    grads = {key: rng.standard_normal(SMALL[key]) for key in ("w", "b")}
    tensors = [torch.nn.Parameter(torch.zeros(SMALL[key], dtype=torch.float64)) for key in grads]
    for tensor, key in zip(tensors, grads, strict=True):
        tensor.grad = torch.from_numpy(grads[key].copy())

    total = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm=float("inf")))

    assert _rel(optimizer.measured_step(grads).grad_norm, total) <= TOLERANCE
