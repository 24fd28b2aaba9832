"""The optimizers the service offers, by the name clients use."""

from typing import Any

import numpy as np

from optim_core import Optimizer, RMSprop, Rprop
from optim_core.rmsprop import RMSpropHyperparams
from optim_core.rprop import RpropHyperparams

OPTIMIZERS: dict[str, type[Rprop] | type[RMSprop]] = {"rprop": Rprop, "rmsprop": RMSprop}
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def build_optimizer(
    name: str, params: dict[str, np.ndarray], param_groups: list[dict[str, Any]], hyperparameters: dict[str, Any]
) -> Optimizer[Any, Any]:
    """An optimizer over ``params``, grouped as ``param_groups`` (hyperparameters and names)."""
    specs = [
        {
            **{key: value for key, value in group.items() if key != "params"},
            "params": {n: params[n] for n in group["params"]},
        }
        for group in param_groups
    ]
    optimizer: Optimizer[Any, Any] = OPTIMIZERS[name](specs, **hyperparameters)
    return optimizer


def summary_groups(optimizer: Optimizer[Any, Any]) -> list[dict[str, Any]]:
    """The optimizer's groups as the API shows them: hyperparameters and param names."""
    return [dict(group, params=list(group["params"])) for group in optimizer.param_groups]


HYPERPARAMS: dict[str, type[RpropHyperparams] | type[RMSpropHyperparams]] = {
    "rprop": RpropHyperparams,
    "rmsprop": RMSpropHyperparams,
}
"""Each optimizer's hyperparameter parser: validates a complete torch-style group."""
