"""A blob or a file as the pieces it is made of, to be written out or joined without another copy."""

import numpy as np

UNLOCKED_JOIN_BYTES = 1 << 20

Buffers = list[bytes | memoryview]
"""A file as the pieces it is made of, to be written out or joined without another copy."""


def buffers_size(buffers: Buffers) -> int:
    """The bytes the pieces hold together."""
    return sum(len(memoryview(buffer).cast("B")) for buffer in buffers)


def join(buffers: Buffers) -> bytes | memoryview:
    """The pieces as one buffer; a large one copied by numpy, which releases the GIL while it copies
    (``bytes.join`` of views holds it)."""
    size = buffers_size(buffers)
    if size < UNLOCKED_JOIN_BYTES:
        return b"".join(buffers)
    joined = np.empty(size, np.uint8)
    offset = 0
    for buffer in buffers:
        piece = np.frombuffer(buffer, np.uint8)
        joined[offset : offset + piece.size] = piece
        offset += piece.size
    return joined.data
