"""The examples in optim_core's docstrings run and print what they say."""

import doctest
from types import ModuleType

import pytest

from optim_core import adagrad, adam, adamw, lr_schedules, optimizer, rmsprop, rprop, sgd
from optim_core.lr_schedules import cosine, decays, one_cycle, sequential, warmups

MODULES = [
    rprop,
    rmsprop,
    sgd,
    adam,
    adamw,
    adagrad,
    optimizer,
    lr_schedules,
    decays,
    warmups,
    cosine,
    one_cycle,
    sequential,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_docstring_examples_hold(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
