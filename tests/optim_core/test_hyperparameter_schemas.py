"""Each algorithm's hyperparameter schemas accept exactly the values its parser accepts.

The schemas describe the hyperparameters to clients (the service's OpenAPI document); a value the
schema allows and the parser refuses is a request the documentation calls valid and the server
refuses. What JSON Schema cannot say here, a pair's order and a key that needs certain values of
another (SGD's nesterov), the schema's description says.
"""

import math
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optim_core import ALGORITHMS, OptimCoreError
from optim_core.spec import AlgorithmSpec

ORDERED_PAIRS = {("rprop", "step_sizes")}
"""Pairs whose first number may not exceed the second: said in the schema's description, not in its keywords."""
LARGEST = 2.0**1023
EDGES = [0, 0.0, -0.0, 1, 1.0, -1, 2, 0.5, 1.2, 1e-300, 5e-324, 1 - 2**-53, 1 + 2**-52, LARGEST, -LARGEST]
"""Where torch's and our ranges begin and end: the numbers a random float almost never is."""
NUMBERS = st.one_of(st.floats(), st.integers(min_value=-(2**1023), max_value=2**1023), st.sampled_from(EDGES))
VALUES = st.one_of(
    NUMBERS,
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(NUMBERS, max_size=3),
    st.lists(st.sampled_from(EDGES), min_size=2, max_size=2),
    st.lists(st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=2)), max_size=3),
)


COMPANIONS: dict[tuple[str, str], dict[str, object]] = {("sgd", "nesterov"): {"momentum": 0.9}}
"""Keys that torch accepts only beside certain values of other keys, said in the schema's description (SGD's
nesterov needs momentum > 0 and dampening 0): each is checked beside such values."""


def _parses(spec: AlgorithmSpec[Any, Any], key: str, value: object) -> bool:
    try:
        spec.parse({**spec.defaults, **COMPANIONS.get((spec.name, key), {}), key: value})
    except OptimCoreError:
        return False
    return True


def _allowed(spec: AlgorithmSpec[Any, Any], key: str, value: object) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False  # JSON has no such number
    valid = jsonschema_rs.Draft202012Validator(dict(spec.hyperparameter_schemas[key])).is_valid(value)
    if valid and (spec.name, key) in ORDERED_PAIRS:
        assert isinstance(value, list)
        return bool(value[0] <= value[1])
    return valid


CASES = [(spec, key) for spec in ALGORITHMS.values() for key in spec.defaults]


def test_every_hyperparameter_has_a_schema() -> None:
    for spec in ALGORITHMS.values():
        assert set(spec.hyperparameter_schemas) == set(spec.all_defaults), spec.name


@pytest.mark.parametrize(("spec", "key"), CASES, ids=[f"{spec.name}-{key}" for spec, key in CASES])
def test_the_defaults_are_allowed_by_the_schemas(spec: AlgorithmSpec[Any, Any], key: str) -> None:
    default = spec.defaults[key]
    assert _allowed(spec, key, list(default) if isinstance(default, tuple) else default)


@pytest.mark.parametrize(("spec", "key"), CASES, ids=[f"{spec.name}-{key}" for spec, key in CASES])
@given(value=VALUES)
def test_a_value_is_allowed_by_its_schema_exactly_when_the_parser_accepts_it(
    spec: AlgorithmSpec[Any, Any], key: str, value: object
) -> None:
    assert _allowed(spec, key, value) == _parses(spec, key, value), value
