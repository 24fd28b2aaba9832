"""Writing safetensors files with one copy of the data.

``safetensors.numpy.save`` copies each array to bytes, then into the file
buffer, then into a Python bytes object: about three times the work of the
copy itself, which at 40 MB per step is tens of milliseconds. The format is an
8-byte header length, a JSON header of dtypes, shapes and offsets, and the raw
little-endian data; here the data is joined straight from the arrays' memory.
Reading stays with the library (``safetensors.numpy.load``), and the tests
check that it reads these files.
"""

from collections.abc import Mapping

import numpy as np
import orjson

DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64"}
ALIGNMENT = 8


def dump(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file holding ``tensors`` (float32 or float64) and string ``metadata``."""
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
    return b"".join([len(encoded).to_bytes(8, "little"), encoded, *buffers])
