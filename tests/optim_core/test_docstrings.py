"""The examples in optim_core's docstrings run and print what they say."""

import doctest
from types import ModuleType

import pytest

from optim_core import adagrad, adam, adamw, optimizer, rmsprop, rprop, sgd


@pytest.mark.parametrize(
    "module", [rprop, rmsprop, sgd, adam, adamw, adagrad, optimizer], ids=lambda module: module.__name__
)
def test_docstring_examples_hold(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
