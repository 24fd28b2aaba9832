"""What the tests know of each optimizer: the registry, and the golden fixtures torch recorded for it.

Tests that cover every optimizer read their list here, so that a new optimizer is tested by them
as soon as it has its module, its registry line and its golden fixtures.
"""

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from optim_core import ALGORITHMS, NAMES, Optimizer
from tests.fixtures.golden import all_cases, load_case

OPTIMIZERS: tuple[str, ...] = NAMES


@cache
def golden_cases(name: str) -> tuple[dict[str, Any], ...]:
    """The golden fixture cases of the optimizer ``name`` (torch ran each)."""
    cases = (load_case(path) for path in all_cases())
    return tuple(case for case in cases if case["optimizer"] == name)


@cache
def example_hyperparameters(name: str) -> dict[str, Any]:
    """Hyperparameters for ``name`` that torch accepts and that move it off its defaults: those of its golden
    case that sets the most of them (the first such, by file name)."""
    cases = golden_cases(name)
    assert cases, f"the optimizer {name!r} has no golden fixtures (tests/fixtures/generate_golden.py)"
    chosen = max(cases, key=lambda case: len(case.get("hyperparameters") or {}))["hyperparameters"]
    # JSON has no tuples; torch's constructors take pairs (etas, betas) as tuples, and keep what they get.
    return {key: tuple(value) if isinstance(value, list) else value for key, value in chosen.items()}


def core_optimizer(
    name: str,
    params: Mapping[str, np.ndarray],
    hyperparameters: Mapping[str, Any],
    param_groups: Sequence[Mapping[str, Any]] | None = None,
) -> Optimizer[Any, Any]:
    """optim_core's optimizer ``name`` over ``params``, grouped as ``param_groups`` (names and overrides) if given."""
    specs: Any = dict(params)
    if param_groups is not None:
        specs = [
            {**{k: v for k, v in group.items() if k != "params"}, "params": {n: params[n] for n in group["params"]}}
            for group in param_groups
        ]
    return Optimizer(ALGORITHMS[name], specs, dict(hyperparameters))


def torch_name(name: str) -> str:
    """The optimizer's class name in ``torch.optim``."""
    return ALGORITHMS[name].torch_name


BIT_FOR_BIT = frozenset({"rprop"})
"""The optimizers whose numbers equal torch's bit for bit; the others differ by the rounding of torch's fused
multiply-adds and square roots (README's conventions), which float32 magnifies to ~1e-5 relative over a few steps."""
ROUNDING: dict[str, tuple[float, float]] = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-14)}


def tolerances(name: str, dtype: str) -> tuple[float, float]:
    """``(rtol, atol)`` within which the optimizer ``name`` follows torch in ``dtype``."""
    return (0.0, 0.0) if name in BIT_FOR_BIT else ROUNDING[dtype]


def hyperparameter(name: str, key: str) -> Any:
    """The example's value of ``key`` for the optimizer ``name``, or torch's default."""
    return example_hyperparameters(name).get(key, ALGORITHMS[name].defaults[key])
