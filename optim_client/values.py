"""Values on their way to the service: arrays of the session's dtype, and plain JSON values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from optim_client.torch_support import is_tensor, tensor_to_numpy

DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def as_array(value: object, dtype: np.dtype[Any], *, what: str) -> np.ndarray:
    """``value`` (a tensor, an array, a number or nested lists of numbers) as a C-ordered array of ``dtype``.

    Integers and floats of any width are cast, as the service casts them; anything else is a
    ``ValueError`` naming ``what``. An array that is already right is returned as it is, not copied.
    """
    try:
        array = tensor_to_numpy(value) if is_tensor(value) else np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: {error}") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must hold real numbers, not {array.dtype}")
    return np.asarray(array, dtype=dtype, order="C")


def dtype_name(dtype: np.dtype[Any]) -> str:
    for name, known in DTYPES.items():
        if dtype == known:
            return name
    raise ValueError(f"dtype {dtype} is not supported; the service holds float32 or float64")


def plain(value: Any) -> Any:
    """A hyperparameter (or anything holding some) as a JSON value: tensors and numpy scalars become
    numbers, tuples become lists, mapping keys become strings."""
    if is_tensor(value):
        value = tensor_to_numpy(value)
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def torch_style(group: Mapping[str, Any]) -> dict[str, Any]:
    """A param group read from the service with torch's types: list hyperparameters (etas, step_sizes)
    become tuples; the names in ``params`` and ``param_names`` stay lists."""
    return {
        key: tuple(value) if isinstance(value, list) and key not in ("params", "param_names") else value
        for key, value in group.items()
    }
