"""Small validators shared by the hyperparameter parsers, each beside the JSON Schema of what it accepts.

The schemas are plain data for the layers that describe hyperparameters to clients (the service's
OpenAPI document); a parser built from these validators accepts every value its schema does. A
schema cannot say everything a parser checks: a pair's order, say, is said in its description.
"""

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

from optim_core.errors import InvalidHyperparameterError

LARGEST_FLOAT = float(np.finfo(np.float64).max)
"""JSON numbers beyond this are not finite floats."""
IMPLEMENTATION_FLAG = "torch's implementation switch; accepted, and without effect on the numbers"


def is_number(value: object) -> bool:
    """True for ints and floats (numpy scalars included), false for bools."""
    return isinstance(value, Real) and not isinstance(value, bool)


def finite_float(value: object) -> float | None:
    """The value as a float when it is a finite real number, else None."""
    if not is_number(value):
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def number_at_least_zero(group: Mapping[str, object], key: str, message: str) -> float:
    """``group[key]`` as a float in ``[0, inf)``; otherwise torch's ``message: value``."""
    value = group[key]
    number = finite_float(value)
    if number is None or not number >= 0.0:
        raise InvalidHyperparameterError(f"{message}: {value}", loc=(key,))
    return number


def number_at_least_zero_schema(description: str) -> dict[str, Any]:
    """What ``number_at_least_zero`` accepts."""
    return {"type": "number", "minimum": 0, "maximum": LARGEST_FLOAT, "description": description}


def finite_number(group: Mapping[str, object], key: str, message: str) -> float:
    """``group[key]`` as a finite float; otherwise ``message: value``."""
    value = group[key]
    number = finite_float(value)
    if number is None:
        raise InvalidHyperparameterError(f"{message}: {value}", loc=(key,))
    return number


def finite_number_schema(description: str) -> dict[str, Any]:
    """What ``finite_number`` accepts."""
    return {"type": "number", "minimum": -LARGEST_FLOAT, "maximum": LARGEST_FLOAT, "description": description}


def number_pair(group: Mapping[str, object], key: str, message: str) -> tuple[float, float]:
    """``group[key]`` as a pair of finite floats; otherwise ``message: a, b``."""
    value = group[key]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise InvalidHyperparameterError(f"{key} must be a pair of numbers, got {value!r}", loc=(key,))
    first, second = finite_float(value[0]), finite_float(value[1])
    if first is None or second is None:
        raise InvalidHyperparameterError(f"{message}: {value[0]}, {value[1]}", loc=(key,))
    return first, second


def number_pair_schema(first: Mapping[str, Any], second: Mapping[str, Any], description: str) -> dict[str, Any]:
    """What ``number_pair`` accepts, with each number's own bounds (finite, unless they say less)."""
    finite = {"type": "number", "minimum": -LARGEST_FLOAT, "maximum": LARGEST_FLOAT}
    return {
        "type": "array",
        "prefixItems": [{**finite, **first}, {**finite, **second}],
        "minItems": 2,
        "maxItems": 2,
        "description": description,
    }


def flag(group: Mapping[str, object], key: str) -> bool:
    """``group[key]`` when it is a bool."""
    value = group[key]
    if not isinstance(value, bool):
        raise InvalidHyperparameterError(f"{key} must be a bool, got {value!r}", loc=(key,))
    return value


def flag_schema(description: str) -> dict[str, Any]:
    """What ``flag`` accepts."""
    return {"type": "boolean", "description": description}


def optional_flag(group: Mapping[str, object], key: str) -> bool | None:
    """``group[key]`` when it is a bool or None (torch's ``foreach``)."""
    value = group[key]
    if value is not None and not isinstance(value, bool):
        raise InvalidHyperparameterError(f"{key} must be a bool or null, got {value!r}", loc=(key,))
    return value


def optional_flag_schema(description: str) -> dict[str, Any]:
    """What ``optional_flag`` accepts."""
    return {"type": ["boolean", "null"], "description": description}


def true_flag(group: Mapping[str, object], key: str, why: str) -> bool:
    """``group[key]`` when it is ``True``: a key whose one value is the algorithm's (AdamW's decoupled weight decay)."""
    value = group[key]
    if value is not True:
        raise InvalidHyperparameterError(f"{key} must be true ({why}), got {value!r}", loc=(key,))
    return True


def true_flag_schema(description: str) -> dict[str, Any]:
    """What ``true_flag`` accepts."""
    return {"const": True, "description": description}


def fused_compatible(*, fused: bool | None, foreach: bool | None, differentiable: bool) -> None:
    """torch's refusals of ``fused`` together with ``differentiable`` or ``foreach`` (it raises them as it builds
    the optimizer; here they hold for every group)."""
    if fused and differentiable:
        raise InvalidHyperparameterError("`fused` does not support `differentiable`", loc=("fused",))
    if fused and foreach:
        raise InvalidHyperparameterError("`fused` and `foreach` cannot be `True` together.", loc=("fused",))


FUSED_DESCRIPTION = f"{IMPLEMENTATION_FLAG}; true refuses differentiable or foreach true, as torch does"


def all_finite(array: np.ndarray) -> bool:
    """True when no element is NaN or infinite.

    A sum is finite exactly when no element is NaN or infinite, unless finite
    values overflow it; only then is the element-wise check needed. The sum is
    one pass with no temporary array.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(array.sum()) or np.isfinite(array).all())
