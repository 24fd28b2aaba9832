"""Binary bodies: a safetensors file that is the JSON document with its arrays moved into tensors.

A tensor is named by the path of its array in the JSON document, joined with
``/`` (``params/w``, ``state_dict/state/0/prev``); a ``params/`` or ``grads/``
name takes the whole rest as the param name. The document's other top-level
fields travel in the file's metadata, each as JSON text (a value that is not
valid JSON is taken as a plain string). Where a document has one map of
arrays, its ``root`` (the step's ``grads``, a response's ``params``), the
tensors are named by param name alone. ``docs/binary.md`` has the details.
"""

from typing import Any

import numpy as np
import orjson

from service.buffers import join
from service.wire.errors import InvalidValue, MalformedBody
from service.wire.nesting import AT_MOST_DIMENSIONS, MAX_ARRAY_DIMENSIONS
from service.wire.safetensors_file import MalformedFile, Unsupported, dump_buffers, read

FLOAT_DTYPES = (np.dtype("<f4"), np.dtype("<f8"))
SIGN_DTYPE = np.dtype("i1")
"""A step's gradients may also be signs (Rprop: ``sessions/sign_grads.py``)."""
NAME_MAPS = ("params", "grads")
IGNORED_METADATA = ("format",)
"""Written by some safetensors writers (torch's adds ``format: pt``); it carries nothing for us."""


def read_safetensors(
    body: bytes | memoryview, *, root: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (float32 or float64 only, in the order the file lists them, viewing ``body``) and metadata;
    400 or 422 otherwise."""
    try:
        tensors, metadata = read(body)
    except MalformedFile as error:
        raise MalformedBody(f"the body is not a valid safetensors file: {error}") from None
    arrays = {}
    for name, tensor in tensors.items():
        loc = ("body", root, name) if root else ("body", *name.split("/"))
        dtype = tensor.dtype
        if isinstance(tensor, Unsupported) and len(tensor.shape) > MAX_ARRAY_DIMENSIONS:
            raise InvalidValue(loc, f"tensor {name!r} has {len(tensor.shape)} dimensions; {AT_MOST_DIMENSIONS}")
        signs = root == "grads" and dtype == SIGN_DTYPE
        if isinstance(tensor, Unsupported) or (dtype not in FLOAT_DTYPES and not signs):
            also = " (or int8 signs, for Rprop)" if root == "grads" else ""
            raise InvalidValue(loc, f"tensor {name!r} has dtype {dtype}; send float32 or float64{also}")
        arrays[name] = tensor
    return arrays, metadata


def document_from_safetensors(body: bytes | memoryview, *, root: str | None = None) -> dict[str, Any]:
    """The JSON-equivalent document of a binary body (arrays stay numpy arrays)."""
    tensors, metadata = read_safetensors(body, root=root)
    document: dict[str, Any] = {
        key: _metadata_value(value) for key, value in metadata.items() if key not in IGNORED_METADATA
    }
    if root is not None:
        if root in document:
            raise InvalidValue(("body", root), f"{root!r} travels as tensors, not as metadata")
        document[root] = tensors
        return document
    for name, tensor in tensors.items():
        head, _, rest = name.partition("/")
        path = [head, rest] if head in NAME_MAPS else name.split("/")
        _place(document, path, tensor, name)
    return document


def safetensors_from_document(document: dict[str, Any], *, root: str | None = None) -> bytes | memoryview:
    """A binary body for ``document``: arrays (under ``root``, if given) become tensors."""
    tensors: dict[str, np.ndarray] = {}
    if root is not None:
        tensors = {name: np.asarray(value, order="C") for name, value in document[root].items()}
        rest = {key: value for key, value in document.items() if key != root}
    else:
        rest = _without_arrays(document, [], tensors)
    metadata = {key: orjson.dumps(value).decode() for key, value in rest.items()}
    return join(dump_buffers(tensors, metadata))


def _metadata_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _place(document: dict[str, Any], path: list[str], tensor: np.ndarray, name: str) -> None:
    node = document
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidValue(("body", *path), f"tensor {name!r} conflicts with metadata {part!r}")
        node = child
    if path[-1] in node:
        raise InvalidValue(("body", *path), f"tensor {name!r} conflicts with metadata")
    node[path[-1]] = tensor


def _only_arrays(value: Any) -> bool:
    """A non-empty map holding nothing but arrays (and such maps): it travels whole as tensors."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(item, np.ndarray) or _only_arrays(item) for item in value.values())
    )


def _without_arrays(value: Any, path: list[str], tensors: dict[str, np.ndarray]) -> Any:
    """``value`` with its arrays moved into ``tensors`` by path; maps that held only arrays are dropped."""
    if not isinstance(value, dict):
        return value
    kept = {}
    for key, item in value.items():
        item_path = [*path, str(key)]
        if isinstance(item, np.ndarray):
            tensors["/".join(item_path)] = np.asarray(item, order="C")
        elif _only_arrays(item):
            _without_arrays(item, item_path, tensors)
        else:
            kept[key] = _without_arrays(item, item_path, tensors)
    return kept
