"""What the service's answers are compared with: optim_core run in-process, on the same inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optim_core import Optimizer
from tests import optimizers
from tests.optimizers import OPTIMIZERS as OPTIMIZERS
from tests.optimizers import example_hyperparameters as example_hyperparameters
from tests.optimizers import hyperparameter as hyperparameter

RPROP: dict[str, Any] = {"lr": 0.01, "etas": (0.5, 1.2), "step_sizes": (1e-6, 50.0)}
RMSPROP: dict[str, Any] = {"lr": 0.01, "alpha": 0.9, "momentum": 0.9, "centered": True, "weight_decay": 0.1}
"""Hyperparameters of the tests about one optimizer; the tests of all of them take ``example_hyperparameters``."""
SHAPES = {"w": (3, 2), "b": (2,), "s": ()}


def initial_params(dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: np.asarray(rng.standard_normal(shape), dtype=dtype) for name, shape in SHAPES.items()}


def grads_sequence(steps: int, dtype: str, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Random gradients; the third step leaves "b" out (torch's grad=None)."""
    rng = np.random.default_rng(seed)
    sequence = []
    for index in range(steps):
        grads = {name: np.asarray(rng.standard_normal(shape), dtype=dtype) for name, shape in SHAPES.items()}
        if index == 2:
            del grads["b"]
        sequence.append(grads)
    return sequence


def core_optimizer(
    optimizer: str,
    params: Mapping[str, np.ndarray],
    hyperparameters: Mapping[str, Any],
    param_groups: Sequence[Mapping[str, Any]] | None = None,
) -> Optimizer[Any, Any]:
    copies = {name: value.copy() for name, value in params.items()}
    return optimizers.core_optimizer(optimizer, copies, hyperparameters, param_groups)


def assert_same_bits(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], where: str = "") -> None:
    """The same names, and for each the same dtype, shape and bits."""
    assert sorted(actual) == sorted(expected), f"{where}: {sorted(actual)} != {sorted(expected)}"
    for name, value in expected.items():
        got = actual[name]
        message = f"{where} {name!r}:\nactual   {got!r}\nexpected {value!r}"
        assert got.dtype == value.dtype, message
        assert got.shape == value.shape, message
        assert got.tobytes() == value.tobytes(), message


def assert_same_state(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """A state_dict in torch's layout (int keys, numpy arrays) equals optim_core's JSON one, bit for bit."""
    assert sorted(actual["state"]) == sorted(int(key) for key in expected["state"])
    for key, entry in expected["state"].items():
        got = actual["state"][int(key)]
        assert sorted(got) == sorted(entry), (got, entry)
        assert got.get("step") == entry.get("step")  # SGD's state has no step
        arrays = {name: value for name, value in got.items() if name != "step"}
        like = {name: np.asarray(entry[name], dtype=value.dtype) for name, value in arrays.items()}
        assert_same_bits(arrays, like, f"state[{key}]")
