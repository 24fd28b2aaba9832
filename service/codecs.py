"""Arrays in and out of JSON: orjson into numpy, bypassing per-element validation."""

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from service.errors import Loc, MalformedBody, ValidationFailed


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise MalformedBody(f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise MalformedBody(f"the body must be a JSON object, got {type(value).__name__}")
    return value


def array_from_json(value: object, *, loc: Loc, dtype: np.dtype[Any] | None = None) -> np.ndarray:
    """A number or nested lists of numbers as a float array (``dtype``, else float64), all finite."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise ValidationFailed.at(loc, "must be a number or rectangular nested lists of numbers") from None
    if array.dtype.kind not in "fiu":
        raise ValidationFailed.at(loc, "must be a number or rectangular nested lists of numbers")
    target = dtype or (array.dtype if array.dtype in (np.float32, np.float64) else np.dtype(np.float64))
    try:
        array = array.astype(target, copy=False)
    except OverflowError:
        raise ValidationFailed.at(loc, "holds a number out of range") from None
    if not np.isfinite(array.sum()) and not np.isfinite(array).all():
        raise ValidationFailed.at(loc, "holds NaN or infinite values")
    return array


def arrays_from_json(
    values: Mapping[str, object], *, loc: Loc, dtype: np.dtype[Any] | None = None
) -> dict[str, np.ndarray]:
    return {name: array_from_json(value, loc=(*loc, name), dtype=dtype) for name, value in values.items()}


def state_dict_from_json(state_dict: object, *, loc: Loc) -> object:
    """A JSON state_dict with its state arrays turned into numpy; anything malformed is left to the core to name."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        return state_dict
    state = {}
    for key, entry in state_dict["state"].items():
        if isinstance(entry, dict):
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
