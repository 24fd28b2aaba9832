"""Cache-sized blocking for the element-wise updates.

An update is a dozen element-wise passes. Run over whole tensors, each pass
streams every buffer through main memory again; run over blocks that stay in
the L2 cache, main memory sees each buffer about once. The blocks are large
enough that numpy's per-call overhead is small next to the work in each.
"""

from collections.abc import Iterator

import numpy as np

CHUNK_ELEMENTS = 1 << 15


def chunk_bounds(size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks covering ``range(size)``."""
    for start in range(0, size, CHUNK_ELEMENTS):
        yield start, min(start + CHUNK_ELEMENTS, size)


def scratch(size: int, dtype: np.dtype[np.generic]) -> np.ndarray:
    """An uninitialised work buffer for one block of a tensor of ``size`` elements."""
    return np.empty(min(size, CHUNK_ELEMENTS), dtype=dtype)
