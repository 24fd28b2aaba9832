"""Optimizers as sessions hold them: built from the registry by name, over named params in groups."""

from typing import Any

import numpy as np

from optim_core import ALGORITHMS, OptimCoreError, Optimizer
from service.sessions.errors import InvalidRequest

DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def build_optimizer(
    name: str, params: dict[str, np.ndarray], param_groups: list[dict[str, Any]], hyperparameters: dict[str, Any]
) -> Optimizer[Any, Any]:
    """An optimizer of the algorithm ``name`` over ``params``, grouped as ``param_groups`` (names and overrides)."""
    specs = [
        {
            **{key: value for key, value in group.items() if key != "params"},
            "params": {n: params[n] for n in group["params"]},
        }
        for group in param_groups
    ]
    return Optimizer(ALGORITHMS[name], specs, hyperparameters)


def summary_groups(optimizer: Optimizer[Any, Any]) -> list[dict[str, Any]]:
    """The optimizer's groups as sessions show them: hyperparameters and param names."""
    return [dict(group, params=list(group["params"])) for group in optimizer.param_groups]


def core_error(error: OptimCoreError, *prefix: str | int) -> InvalidRequest:
    """A core rejection as the request's error, at the field under ``prefix``."""
    return InvalidRequest((*prefix, *error.loc), error.message)
