"""The safetensors layout, written and read without copying the data while holding the GIL.

The format is an 8-byte header length, a JSON header of dtypes, shapes and
offsets, and the raw little-endian data. The library's functions copy every
tensor with Python's GIL held: ``safetensors.numpy.save`` three times (to bytes,
into the file buffer, into a Python bytes object), ``safetensors.numpy.load``
once. At 40 MB a step that is 10 to 25 ms in which no other request of the
process can run (measured with a thread counting beside it: it ran at a fifth
of its speed). So here:

- writing joins the header and views of the arrays' memory, and a large file is
  joined by numpy, which copies without the GIL (``join``);
- reading validates the header as the library does (the tests check both
  accept and refuse the same files) and returns arrays that view the body's
  bytes: no copy at all.

docs/benchmarks.md has the A/B: the p99 of small steps while a 10M-param session
streams, and the 10M binary step.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import orjson

from service.buffers import Buffers
from service.wire.nesting import MAX_ARRAY_DIMENSIONS

DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64"}
ALIGNMENT = 8
ITEM_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "C64": 8,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
"""The dtypes safetensors knows, by their names in a header, and their sizes in bytes."""
NUMPY_DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"), "U16": np.dtype("<u2"), "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"), "U32": np.dtype("<u4"), "F32": np.dtype("<f4"), "C64": np.dtype("<c8"),
    "I64": np.dtype("<i8"), "U64": np.dtype("<u8"), "F64": np.dtype("<f8"),
}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000
"""The library's own bound on a header."""


class MalformedFile(ValueError):
    """The bytes are not a safetensors file; the message says where they fail to be one."""


class Unsupported(NamedTuple):
    """A tensor that is not read into an array: of a dtype numpy lacks, or of more dimensions than an array has."""

    dtype: str
    shape: list[int]


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


def read(body: bytes | memoryview) -> tuple[dict[str, np.ndarray | Unsupported], dict[str, str]]:
    """The tensors of a safetensors file, in the order its header lists them, as read-only arrays that
    view ``body`` (one of a dtype numpy lacks, such as BF16, or of more than ``MAX_ARRAY_DIMENSIONS``
    comes as ``Unsupported``), and the file's metadata.

    Raises ``MalformedFile`` where the library raises: a header that is not a JSON object of tensor
    entries and string metadata, an unknown dtype, offsets that do not tile the data exactly.
    """
    view = memoryview(body).cast("B")
    if len(view) < 8:
        raise MalformedFile("the file is shorter than its 8-byte header length")
    header_length = int.from_bytes(view[:8], "little")
    if header_length > MAX_HEADER_BYTES or 8 + header_length > len(view):
        raise MalformedFile(f"the header length {header_length} runs past the end of the file")
    try:
        header = read_header(view)
    except ValueError as error:
        raise MalformedFile(f"the header is not a JSON object: {error}") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise MalformedFile("__metadata__ must map names to strings")
    data = view[8 + header_length :]
    extents = []
    for name, entry in header.items():
        dtype, shape, offsets = _entry(name, entry)
        count = 1
        for size in shape:
            count *= size
        begin, end = offsets
        if not 0 <= begin <= end or end - begin != count * ITEM_SIZES[dtype]:
            raise MalformedFile(f"tensor {name!r}: data_offsets {offsets} do not hold {shape} of {dtype}")
        extents.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(extents):
        if begin != position:
            raise MalformedFile(f"tensor {name!r} starts at byte {begin}, not where the one before ends ({position})")
        position = end
    if position != len(data):
        raise MalformedFile(f"the tensors take {position} bytes of data, and the file holds {len(data)}")
    tensors: dict[str, np.ndarray | Unsupported] = {}
    for name, entry in header.items():
        dtype, shape, (begin, end) = _entry(name, entry)
        numpy_dtype = NUMPY_DTYPES.get(dtype)
        if numpy_dtype is None or len(shape) > MAX_ARRAY_DIMENSIONS:
            tensors[name] = Unsupported(dtype, shape)
            continue
        array = np.frombuffer(data[begin:end], numpy_dtype).reshape(shape)
        tensors[name] = array
    return tensors, metadata


def _entry(name: str, entry: object) -> tuple[str, list[int], list[int]]:
    """A header entry's dtype, shape and data offsets, each checked for its type."""
    if not isinstance(entry, dict):
        raise MalformedFile(f"tensor {name!r}: its header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEM_SIZES:
        raise MalformedFile(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_whole(size) for size in shape):
        raise MalformedFile(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(offset) for offset in offsets):
        raise MalformedFile(f"tensor {name!r}: data_offsets {offsets!r} is not a pair of byte offsets")
    return dtype, shape, offsets


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(body: bytes | memoryview) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor entries in the file's order, and ``__metadata__``.

    Raises ``ValueError`` (``orjson.JSONDecodeError`` is one) when it is not a JSON object.
    """
    header = orjson.loads(memoryview(body)[8 : 8 + int.from_bytes(body[:8], "little")])
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    return header
