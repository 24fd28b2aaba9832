"""A body's bytes to a JSON worker process, and the arrays it decoded back, through temporary files.

Through anyio's pipe to the process, both would be copied in the server process with Python's
lock held: the body when it is pickled, and the decoded arrays three times on the event loop as
the answer is received and unpickled (anyio joins the answer's chunks, then copies it out of its
buffer, then unpickles it). A 64 MiB JSON body of short numbers decodes to 256 MiB of float64,
and the event loop stalled for a quarter of a second. Here the server process writes the body
with ``os.write`` and reads the arrays back with ``readinto``, both of which release the lock,
and keeps the arrays as views of the one buffer it read them into.
"""

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.server.memory import fresh_buffer

ALIGNMENT = 64
"""Each array starts at a multiple of this many bytes of the file (and of the buffer it is read into)."""


@dataclass(frozen=True)
class Shipped:
    """Where an array of a decoded document is in the file of arrays: what stands in for it on the way back."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


@contextmanager
def body_file(body: bytes | memoryview) -> Iterator[str | None]:
    """The path of a temporary file holding ``body``, removed when the block ends; None when the temporary
    directory has no room for it (or cannot be written)."""
    try:
        descriptor, path = tempfile.mkstemp(prefix="optim-body-")
    except OSError:
        yield None
        return
    try:
        try:
            view = memoryview(body).cast("B")
            while view:
                view = view[os.write(descriptor, view) :]
        finally:
            os.close(descriptor)
    except OSError:
        os.unlink(path)
        yield None
        return
    try:
        yield path
    finally:
        os.unlink(path)


def decode_file(path: str, decode: Callable[[bytes], dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """In the worker process: ``decode`` the body in the file at ``path``, and move the arrays of the
    document into a file of their own. The document with ``Shipped`` in their places, and that file's
    path, for ``read_arrays``; or the document as it is and None, when it holds no array or the
    temporary directory has no room for them (they then go back through the pipe)."""
    with open(path, "rb") as file:
        document = decode(file.read())
    layout = _Layout()
    shipped: dict[str, Any] = layout.replaced(document)
    if not layout.arrays:
        return document, None
    try:
        descriptor, arrays_path = tempfile.mkstemp(prefix="optim-arrays-")
    except OSError:
        return document, None
    try:
        with os.fdopen(descriptor, "wb") as file:
            for offset, array in layout.arrays:
                file.seek(offset)
                file.write(np.ascontiguousarray(array).data.cast("B"))
    except OSError:
        os.unlink(arrays_path)
        return document, None
    except BaseException:
        os.unlink(arrays_path)
        raise
    return shipped, arrays_path


class _Layout:
    """Arrays laid out one after another in a file, each at a multiple of ``ALIGNMENT``."""

    def __init__(self) -> None:
        self.arrays: list[tuple[int, np.ndarray]] = []
        self._end = 0

    def replaced(self, value: Any) -> Any:
        """``value`` (nested at most ``MAX_DEPTH`` deep) with each array replaced by its ``Shipped`` place."""
        if isinstance(value, np.ndarray):
            offset = self._end + (-self._end % ALIGNMENT)
            self.arrays.append((offset, value))
            self._end = offset + value.nbytes
            return Shipped(offset, value.dtype.str, value.shape)
        if isinstance(value, dict):
            return {key: self.replaced(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.replaced(item) for item in value]
        return value


def read_arrays(document: dict[str, Any], path: str | None) -> dict[str, Any]:
    """In the server process: ``document`` with its ``Shipped`` arrays read back from the file at ``path``
    (which is then removed), as views of one buffer."""
    if path is None:
        return document
    try:
        with open(path, "rb", buffering=0) as file:
            size = os.fstat(file.fileno()).st_size
            buffer = fresh_buffer(size)
            view, filled = buffer.data.cast("B"), 0
            while filled < size:
                count = file.readinto(view[filled:])
                if not count:
                    raise OSError(f"{path} ended at byte {filled} of {size}")
                filled += count
    finally:
        os.unlink(path)
    placed: dict[str, Any] = _placed(document, buffer)
    return placed


def _placed(value: Any, buffer: np.ndarray) -> Any:
    if isinstance(value, Shipped):
        count = int(np.prod(value.shape, dtype=np.int64))
        return np.frombuffer(buffer, np.dtype(value.dtype), count, value.offset).reshape(value.shape)
    if isinstance(value, dict):
        return {key: _placed(item, buffer) for key, item in value.items()}
    if isinstance(value, list):
        return [_placed(item, buffer) for item in value]
    return value
