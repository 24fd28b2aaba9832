"""Bodies to documents and documents to answers, in JSON or safetensors.

orjson and numpy's conversion of nested lists hold the GIL for the whole call: a
JSON step of a million params takes hundreds of milliseconds in which no other
request of the process could run. Above a size threshold that work goes to worker
processes (``anyio.to_process``), which also lets two large requests use two cores.
Small bodies, the common case, stay in the calling thread: a round trip to another
process would cost more than the parse. The body goes to the worker, and its
decoded arrays come back, through temporary files (``process_files.py`` says
why). The workers are anyio's: they end with the process that started them
(their input pipe closes).

Call ``decode`` and ``encode`` from a worker thread that anyio started (a route's
``run_in_threadpool``): the hop to a worker process goes through the event loop.
"""

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_process
import numpy as np

from service.server.memory import give_back_free_memory
from service.wire.json_arrays import ArrayPath, dump_json, parse_json_with_arrays
from service.wire.media_types import SAFETENSORS
from service.wire.nesting import check_depth
from service.wire.process_files import body_file, decode_file, read_arrays
from service.wire.safetensors_documents import document_from_safetensors, safetensors_from_document


def array_bytes(value: Any) -> int:
    """The bytes of the arrays a document holds."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(array_bytes(item) for item in value.values())
    if isinstance(value, list):
        return sum(array_bytes(item) for item in value)
    return 0


def decoded_json(body: bytes | memoryview, array_paths: Sequence[ArrayPath]) -> dict[str, Any]:
    """A JSON body as a document whose arrays at ``array_paths`` are numpy, nested at most ``MAX_DEPTH`` deep."""
    document = parse_json_with_arrays(body, array_paths)
    check_depth(document)
    return document


def decode_json_file(path: str, array_paths: Sequence[ArrayPath]) -> tuple[dict[str, Any], str | None]:
    """In a worker process: ``decoded_json`` of the body in the file at ``path``, its arrays in a file of their
    own (``process_files``). The process then gives back the memory the parse took: the objects JSON is
    read into take several times its size, and the process lives on."""
    try:
        return decode_file(path, lambda body: decoded_json(body, array_paths))
    finally:
        give_back_free_memory()


class Documents:
    def __init__(self, *, processes: int, threshold_bytes: int) -> None:
        """JSON of more than ``threshold_bytes`` goes to up to ``processes`` worker processes (0: none).

        Build it where an event loop runs (the app's lifespan): its limiter belongs to that loop.
        """
        self._limiter = anyio.CapacityLimiter(processes) if processes > 0 else None
        self._threshold = threshold_bytes

    def decode(
        self,
        media_type: str,
        body: bytes | memoryview,
        *,
        root: str | None = None,
        array_paths: Sequence[ArrayPath] = (),
    ) -> dict[str, Any]:
        """The body as a JSON-style document whose arrays (at ``array_paths``, or all in binary) are numpy;
        its other values nest at most ``MAX_DEPTH`` deep."""
        if media_type == SAFETENSORS:
            document = document_from_safetensors(body, root=root)
            check_depth(document)
            return document
        if self._limiter is None or len(body) <= self._threshold:
            return decoded_json(body, array_paths)
        with body_file(body) as path:
            if path is None:
                # No room in the temporary directory: decoded here, holding Python's lock meanwhile.
                return decoded_json(body, array_paths)
            shipped, arrays_path = anyio.from_thread.run(self._in_a_process, decode_json_file, path, array_paths)
        return read_arrays(shipped, arrays_path)

    def encode(self, value: dict[str, Any], *, media_type: str, root: str | None = None) -> bytes | memoryview:
        """``value`` as JSON or safetensors (arrays under ``root`` named by param name alone)."""
        if media_type == SAFETENSORS:
            return safetensors_from_document(value, root=root)
        if self._limiter is not None and array_bytes(value) > self._threshold:
            encoded: bytes = anyio.from_thread.run(self._in_a_process, dump_json, value)
            return encoded
        return dump_json(value)

    async def _in_a_process(self, function: Any, *args: Any) -> Any:
        return await anyio.to_process.run_sync(function, *args, limiter=self._limiter)
