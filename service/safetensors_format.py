"""The safetensors layout: writing files with one copy of the data, and reading their header.

``safetensors.numpy.save`` copies each array to bytes, then into the file
buffer, then into a Python bytes object: about three times the work of the
copy itself, which at 40 MB per step is tens of milliseconds. The format is an
8-byte header length, a JSON header of dtypes, shapes and offsets, and the raw
little-endian data; here the data is joined straight from the arrays' memory.
Reading stays with the library (``safetensors.numpy.load``), and the tests
check that it reads these files.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64"}
ALIGNMENT = 8


Buffers = list[bytes | memoryview]
"""A file as the pieces it is made of, to be written out or joined without another copy."""


def buffers_size(buffers: Buffers) -> int:
    """The bytes the pieces hold together."""
    return sum(len(memoryview(buffer).cast("B")) for buffer in buffers)


def dump(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file holding ``tensors`` (float32 or float64) and string ``metadata``."""
    return b"".join(dump_buffers(tensors, metadata))


def dump_buffers(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> Buffers:
    """``dump``'s file as its header and views of the arrays' memory, which must not change until it is written."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    buffers: list[memoryview] = []
    offset = 0
    for name, tensor in tensors.items():
        array = np.asarray(tensor, order="C")
        if array.dtype.newbyteorder("<") not in DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}; only float32 and float64 are written")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header[name] = {
            "dtype": DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        buffers.append(array.reshape(-1).data.cast("B"))
        offset += array.nbytes
    encoded = orjson.dumps(header)
    encoded += b" " * (-len(encoded) % ALIGNMENT)
    return [len(encoded).to_bytes(8, "little"), encoded, *buffers]


def read_header(body: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor entries in the file's order, and ``__metadata__``.

    Raises ``ValueError`` (``orjson.JSONDecodeError`` is one) when it is not a JSON object.
    """
    header = orjson.loads(body[8 : 8 + int.from_bytes(body[:8], "little")])
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    return header
