"""Documents as JSON: arrays become nested lists (a 0-d array a bare number)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from optim_client.values import plain

MEDIA_TYPE = "application/json"


class JsonCodec:
    media_type = MEDIA_TYPE

    def encode(self, document: Mapping[str, Any], *, root: str | None = None) -> bytes:
        """JSON text of ``document``; ``root`` only matters to binary bodies.

        JSON has no NaN or infinity, so a document holding one is a ``ValueError`` naming where, raised
        before anything is sent (the binary transport sends them and the service answers 422).
        """
        return json_text(document, "body").encode()


def json_text(value: Any, where: str) -> str:
    """``value`` as compact JSON text; NaN or infinity is a ``ValueError`` naming ``where``."""
    return json.dumps(_jsonable(value, where), allow_nan=False, separators=(",", ":"))


def decode_json(content: bytes) -> dict[str, Any]:
    document = json.loads(content)
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object from the service, got {type(document).__name__}")
    return document


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"{where} holds NaN or infinite values, which JSON cannot carry")
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item, f"{where}[{index}]") for index, item in enumerate(value)]
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}, which JSON cannot carry")
    return value
