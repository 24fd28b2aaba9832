"""Rprop and RMSprop in numpy, with exactly torch.optim's numbers and state_dict layout."""

from optim_core.errors import (
    InvalidGradientError,
    InvalidHyperparameterError,
    InvalidParameterError,
    InvalidStateDictError,
    OptimCoreError,
)
from optim_core.optimizer import Optimizer, RMSprop, Rprop

__all__ = [
    "InvalidGradientError",
    "InvalidHyperparameterError",
    "InvalidParameterError",
    "InvalidStateDictError",
    "OptimCoreError",
    "Optimizer",
    "RMSprop",
    "Rprop",
]
