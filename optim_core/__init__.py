"""Optimizers in numpy, with exactly torch.optim's numbers and state_dict layout (``registry.NAMES`` lists them)."""

from optim_core.adagrad import Adagrad
from optim_core.adam import Adam
from optim_core.adamw import AdamW
from optim_core.errors import (
    InvalidGradientError,
    InvalidHyperparameterError,
    InvalidParameterError,
    InvalidStateDictError,
    OptimCoreError,
    ScheduleStepError,
)
from optim_core.optimizer import Optimizer
from optim_core.registry import ALGORITHMS, NAMES
from optim_core.rmsprop import RMSprop
from optim_core.rprop import Rprop
from optim_core.sgd import SGD
from optim_core.spec import AlgorithmSpec

__all__ = [
    "ALGORITHMS",
    "NAMES",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "AlgorithmSpec",
    "InvalidGradientError",
    "InvalidHyperparameterError",
    "InvalidParameterError",
    "InvalidStateDictError",
    "OptimCoreError",
    "Optimizer",
    "RMSprop",
    "Rprop",
    "ScheduleStepError",
]
