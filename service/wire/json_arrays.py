"""Arrays in and out of JSON: orjson into numpy, bypassing per-element validation."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from optim_core.checks import all_finite, is_number
from service.wire.errors import InvalidValue, Loc, MalformedBody
from service.wire.nesting import NOT_NUMBERS, check_nested_numbers

MAX_STEP = 2**53 - 1
"""The largest step counter a client may send, a session's or a state_dict entry's: every whole number
up to it is exact as a float64, which is how a state_dict carries ``step`` (torch keeps it as a float
tensor) and how most JSON readers hold numbers. Counters go on from there: the session's, a 64-bit
integer, has 2**63 - 2**53 steps to go; a state_dict's stays the nearest float64."""


def parse_json_object(body: bytes | memoryview) -> dict[str, Any]:
    """The body as a JSON object, or a 400."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise MalformedBody(f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise MalformedBody(f"the body must be a JSON object, got {type(value).__name__}")
    return value


SIGNS = np.dtype(np.int8)


def array_from_json(
    value: object, *, loc: Loc, dtype: np.dtype[Any] | None = None, check_finite: bool = True
) -> np.ndarray:
    """A number or nested lists of numbers (or a float array) as a finite float array; an int8 array (signs,
    from a safetensors body) as it is.

    The result has ``dtype``, else the array's own float dtype, else float64. Without
    ``check_finite`` it may hold NaN or infinities: for arrays the core checks anyway.
    """
    if isinstance(value, bool):
        raise InvalidValue(loc, NOT_NUMBERS)
    if dtype is None and isinstance(value, np.ndarray) and value.dtype == SIGNS:
        return value  # a safetensors gradient of signs, which only an Rprop session takes (sessions/sign_grads.py)
    if isinstance(value, list):
        check_nested_numbers(value, loc)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidValue(loc, NOT_NUMBERS) from None
    if array.dtype.kind not in "fiu":
        raise InvalidValue(loc, NOT_NUMBERS)
    target = dtype or (array.dtype if array.dtype in (np.float32, np.float64) else np.dtype(np.float64))
    with np.errstate(over="ignore"):
        # Numbers beyond the target's range become infinite here, and are refused below.
        array = array.astype(target, copy=False)
    if check_finite and not all_finite(array):
        raise InvalidValue(loc, f"holds NaN or infinite values, or numbers beyond {target}'s range")
    return array


ArrayPath = tuple[str, ...]
"""Where a document holds arrays: keys, with ``*`` for any key (``("grads", "*")``)."""


def parse_json_with_arrays(body: bytes | memoryview, array_paths: Sequence[ArrayPath]) -> dict[str, Any]:
    """The JSON object in ``body`` with the arrays at ``array_paths`` converted to numpy.

    A ``step`` key at an array path is left alone: it is a state entry's counter.
    """
    document = parse_json_object(body)
    for path in array_paths:
        _convert_at(document, path, [])
    return document


def _convert_at(node: Any, path: ArrayPath, loc: list[str]) -> None:
    if not isinstance(node, dict):
        return
    head, rest = path[0], path[1:]
    keys = [key for key in node if key != "step" or rest] if head == "*" else [head] if head in node else []
    for key in keys:
        if rest:
            _convert_at(node[key], rest, [*loc, key])
        else:
            node[key] = array_from_json(node[key], loc=("body", *loc, key))


def arrays_from_json(
    values: Mapping[str, object], *, loc: Loc, dtype: np.dtype[Any] | None = None, check_finite: bool = True
) -> dict[str, np.ndarray]:
    return {
        name: array_from_json(value, loc=(*loc, name), dtype=dtype, check_finite=check_finite)
        for name, value in values.items()
    }


def state_dict_from_json(state_dict: object, *, loc: Loc) -> object:
    """A JSON state_dict with its state arrays turned into numpy, and no step counter past ``MAX_STEP``;
    anything else malformed is left to the core to name."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        return state_dict
    state = {}
    for key, entry in state_dict["state"].items():
        if isinstance(entry, dict):
            if is_number(entry.get("step")) and entry["step"] > MAX_STEP:
                raise InvalidValue(
                    (*loc, "state", key, "step"), f"step must be at most {MAX_STEP}, got {entry['step']}"
                )
            entry = {
                name: value if name == "step" else array_from_json(value, loc=(*loc, "state", key, name))
                for name, value in entry.items()
            }
        state[key] = entry
    return {**state_dict, "state": state}


def jsonable(value: Any) -> Any:
    """Nested dicts and lists with 0-d arrays turned into numpy scalars, which orjson writes as numbers."""
    if isinstance(value, np.ndarray):
        return value[()] if value.ndim == 0 else value
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("non-finite float in a response")
    return value


def dump_json(value: Any) -> bytes:
    """JSON bytes; float32 arrays are written with the shortest digits that read back to the same float32."""
    return orjson.dumps(jsonable(value), option=orjson.OPT_SERIALIZE_NUMPY)
