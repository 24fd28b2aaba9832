"""Documents as safetensors files (``application/vnd.safetensors``), as the service's binary transport defines them.

A document's arrays become tensors named by their path in the document joined with ``/``
(``params/w``, ``state_dict/state/0/prev``); a ``params/`` or ``grads/`` name takes the whole rest
as the param name. The other top-level fields travel in the file's metadata, each as JSON text.
Where a document has one map of arrays, its ``root`` (a step's ``grads``, a response's
``params``), the tensors are named by param name alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from optim_client.json_codec import json_text

MEDIA_TYPE = "application/vnd.safetensors"
NAME_MAPS = ("params", "grads")


class SafetensorsCodec:
    media_type = MEDIA_TYPE

    def __init__(self) -> None:
        # Imported here so that a JSON-only client works without safetensors installed.
        from safetensors.numpy import save

        self._save = save

    def encode(self, document: Mapping[str, Any], *, root: str | None = None) -> bytes:
        tensors: dict[str, np.ndarray] = {}
        if root is not None:
            tensors = {str(name): np.asarray(value, order="C") for name, value in document[root].items()}
            rest = {key: value for key, value in document.items() if key != root}
        else:
            rest = _move_arrays(document, [], tensors)
        metadata = {key: json_text(value, f"body.{key}") for key, value in rest.items()}
        data: bytes = self._save(tensors, metadata=metadata or None)
        return _canonical_header(data) if len(metadata) > 1 else data


def _canonical_header(data: bytes) -> bytes:
    """``data`` with its header's keys sorted. safetensors writes the metadata in a hash map's order, which
    changes from call to call; a body sent again under its Idempotency-Key must be the same bytes."""
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the tensors' data starts 8-byte aligned, as safetensors pads it
    return len(header).to_bytes(8, "little") + header + data[8 + length :]


def decode_safetensors(content: bytes, *, root: str | None = None) -> dict[str, Any]:
    """The document a safetensors body carries; its arrays are numpy arrays."""
    from safetensors.numpy import load

    tensors = load(content)
    header = json.loads(content[8 : 8 + int.from_bytes(content[:8], "little")])
    metadata: dict[str, str] = header.get("__metadata__") or {}
    document: dict[str, Any] = {key: _metadata_value(text) for key, text in metadata.items() if key != "format"}
    if root is not None:
        document[root] = tensors
        return document
    for name, tensor in tensors.items():
        head, _, rest = name.partition("/")
        path = [head, rest] if head in NAME_MAPS else name.split("/")
        node = document
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = tensor
    return document


def _metadata_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _move_arrays(value: Any, path: list[str], tensors: dict[str, np.ndarray]) -> Any:
    """``value`` without its arrays, which go into ``tensors`` by path; maps left empty by that are dropped."""
    if not isinstance(value, Mapping):
        return value
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, np.ndarray):
            tensors["/".join([*path, str(key)])] = np.asarray(item, order="C")
            continue
        stripped = _move_arrays(item, [*path, str(key)], tensors)
        if not (isinstance(item, Mapping) and item and not stripped):
            kept[str(key)] = stripped
    return kept
