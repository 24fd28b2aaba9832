"""The blocked in-place kernels agree bit for bit with a plain transliteration of torch's single-tensor loop.

The kernels work in cache-sized blocks, reuse their buffers, and build Rprop's factors
from bit patterns; ``reference.py`` does none of that. Random cases: shapes across
block boundaries, 0-d and empty arrays, both dtypes, hyperparameters across their
ranges, gradients with exact zeros and sign changes, several steps. No torch needed.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from optim_core import ALGORITHMS
from optim_core.chunks import CHUNK_ELEMENTS
from tests.optim_core.reference import (
    adagrad_reference,
    adam_reference,
    adamw_reference,
    rmsprop_reference,
    rprop_reference,
    sgd_reference,
)

SHAPES = [(), (0,), (1,), (7,), (3, 5), (CHUNK_ELEMENTS + 17,), (2, CHUNK_ELEMENTS // 3)]
CASES = 240
STEPS = 4


def rprop_hyperparameters(rng: np.random.Generator) -> dict[str, Any]:
    low = float(rng.choice([0.0, 1e-6, 1e-3]))
    return {
        "lr": float(rng.choice([1e-3, 0.01, 0.5])),
        # Also etas that round to 0 or to 1 in float32, where torch's order of assignments shows.
        "etas": (
            float(rng.choice([rng.uniform(0.1, 0.9), 1e-46, 1 - 1e-9])),
            float(rng.choice([rng.uniform(1.05, 2.0), 1 + 1e-9])),
        ),
        "step_sizes": (low, float(rng.choice([low, 0.02, 50.0]))),
        "maximize": bool(rng.random() < 0.3),
    }


def rmsprop_hyperparameters(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "lr": float(rng.choice([1e-3, 0.01, 0.3])),
        "alpha": float(rng.choice([0.0, 0.3, 0.5, 0.9, 0.99, 1.0])),
        "eps": float(rng.choice([1e-8, 1e-3])),
        "weight_decay": float(rng.choice([0.0, 0.1])),
        "momentum": float(rng.choice([0.0, 0.9])),
        "centered": bool(rng.random() < 0.5),
        "maximize": bool(rng.random() < 0.3),
    }


def sgd_hyperparameters(rng: np.random.Generator) -> dict[str, Any]:
    momentum = float(rng.choice([0.0, 0.5, 0.9]))
    nesterov = bool(momentum > 0 and rng.random() < 0.4)
    return {
        "lr": float(rng.choice([1e-3, 0.01, 0.3])),
        "momentum": momentum,
        "dampening": 0.0 if nesterov else float(rng.choice([0.0, 0.3])),
        "weight_decay": float(rng.choice([0.0, 0.1])),
        "nesterov": nesterov,
        "maximize": bool(rng.random() < 0.3),
    }


def adam_hyperparameters(rng: np.random.Generator) -> dict[str, Any]:
    return {
        **adamw_hyperparameters(rng),
        "decoupled_weight_decay": bool(rng.random() < 0.5),
    }


def adamw_hyperparameters(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "lr": float(rng.choice([1e-3, 0.01, 0.3])),
        # 1 - 0.3 >= 0.5: torch's lerp then takes its other formula.
        "betas": (float(rng.choice([0.0, 0.3, 0.9])), float(rng.choice([0.0, 0.5, 0.999]))),
        "eps": float(rng.choice([1e-8, 1e-3])),
        "weight_decay": float(rng.choice([0.0, 0.1])),
        "amsgrad": bool(rng.random() < 0.5),
        "maximize": bool(rng.random() < 0.3),
    }


def adagrad_hyperparameters(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "lr": float(rng.choice([1e-3, 0.01, 0.3])),
        "lr_decay": float(rng.choice([0.0, 0.1])),
        "weight_decay": float(rng.choice([0.0, 0.1])),
        "initial_accumulator_value": float(rng.choice([0.0, 0.5])),
        "eps": float(rng.choice([1e-10, 1e-3])),
        "maximize": bool(rng.random() < 0.3),
    }


REFERENCES: dict[str, tuple[Callable[..., None], Callable[[np.random.Generator], dict[str, Any]]]] = {
    "rprop": (rprop_reference, rprop_hyperparameters),
    "rmsprop": (rmsprop_reference, rmsprop_hyperparameters),
    "sgd": (sgd_reference, sgd_hyperparameters),
    "adam": (adam_reference, adam_hyperparameters),
    "adamw": (adamw_reference, adamw_hyperparameters),
    "adagrad": (adagrad_reference, adagrad_hyperparameters),
}


def test_every_registered_algorithm_has_a_reference() -> None:
    assert set(REFERENCES) == set(ALGORITHMS)


def gradient(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    values = rng.standard_normal(shape).astype(dtype)
    values[rng.random(shape) < 0.2] = 0
    return values


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_the_kernel_matches_the_reference_bit_for_bit(name: str) -> None:
    spec = ALGORITHMS[name]
    reference, draw = REFERENCES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    for case in range(CASES):
        shape = SHAPES[case % len(SHAPES)]
        dtype = np.dtype(np.float32 if case % 2 else np.float64)
        hyperparameters = draw(rng)
        hyperparams = spec.parse({**spec.defaults, **hyperparameters})
        param = rng.standard_normal(shape).astype(dtype)
        expected_param, expected_state = param.copy(), dict[str, Any]()
        state = spec.init(param, hyperparams)
        grad = gradient(rng, shape, dtype)
        for step in range(STEPS):
            if step:
                # Half the time the last gradient's signs again, so that Rprop's steps grow as well as shrink.
                fresh = gradient(rng, shape, dtype)
                grad = np.abs(fresh) * np.sign(grad) if step % 2 else fresh
            state = spec.update_in_place(param, grad, state, hyperparams, None)
            reference(expected_param, grad, expected_state, **hyperparameters)
            where = f"{name} case {case} {hyperparameters} {dtype} {shape}, step {step + 1}"
            assert param.tobytes() == expected_param.tobytes(), where
            assert state.step == expected_state["step"], where
            for key in spec.state_arrays:
                array = getattr(state, key)
                if key not in expected_state:
                    assert array is None, f"{where}: {key}"
                    continue
                assert array.tobytes() == expected_state[key].tobytes(), f"{where}: {key}"
