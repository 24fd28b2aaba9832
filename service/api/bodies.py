"""Request bodies: read within their limits into one buffer, their envelopes validated, and the memory a
large one took given back once it is done with."""

import hashlib
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from service.api.negotiation import body_media_type, check_content_encoding
from service.buffers import join
from service.config import Settings
from service.errors import BodyTooLarge, ValidationFailed
from service.server.memory import TRIM_AFTER_BYTES, give_back_free_memory
from service.wire.errors import MalformedBody
from service.wire.media_types import ARRAY_TYPES, JSON

Model = TypeVar("Model", bound=BaseModel)
JSON_DECODED_PER_BYTE = 4
MAX_LENGTH_DIGITS = 19
"""A Content-Length of more digits is over any limit (and is not read as an int)."""


class Body:
    """A request body as it was read: its media type and its bytes, as one buffer when its length was
    declared (filled chunk by chunk as it arrived: no join, no second copy), else as the chunks of a
    chunked upload, for ``content`` to join off the event loop."""

    __slots__ = ("__weakref__", "_pieces", "media_type", "size")

    def __init__(self, media_type: str, pieces: list[bytes | memoryview], size: int) -> None:
        self.media_type = media_type
        self.size = size
        self._pieces = pieces
        if self.large:
            # Once the request is done with it (answered or refused), the memory it took goes back.
            weakref.finalize(self, _give_back_soon).atexit = False

    @property
    def large(self) -> bool:
        """Whether the memory its request may take is worth giving back afterwards: JSON decodes to up to four
        times its size (a number of two characters becomes eight bytes)."""
        return self.size * (JSON_DECODED_PER_BYTE if self.media_type == JSON else 1) >= TRIM_AFTER_BYTES

    def content(self) -> bytes | memoryview:
        """The body as one read-only buffer (a large chunked one is joined here: call it off the event loop)."""
        if len(self._pieces) == 1:
            return self._pieces[0]
        joined = join(self._pieces)
        return joined.toreadonly() if isinstance(joined, memoryview) else joined


async def read_body(request: Request, settings: Settings, allowed: Sequence[str] = ARRAY_TYPES) -> Body:
    """The body; 415 for a media type not ``allowed`` or a content coding, 413 past ``max_body_bytes``, or for JSON past
    ``max_json_body_bytes``: before reading it when its length is declared, else as soon as it is over."""
    media_type = body_media_type(request.headers.get("content-type"), allowed)
    check_content_encoding(request.headers.get("content-encoding"))
    limit = settings.max_body_bytes
    if media_type == JSON:
        limit = min(limit, settings.max_json_body_bytes)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if len(declared) > MAX_LENGTH_DIGITS or int(declared) > limit:
            raise _too_large(media_type, limit, f"the body is {declared[: MAX_LENGTH_DIGITS + 1]} bytes")
        return Body(media_type, [await _read_declared(request, int(declared))], int(declared))
    chunks: list[bytes | memoryview] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(media_type, limit, "the body is over the limit")
        chunks.append(chunk)
    return Body(media_type, chunks, size)


async def _read_declared(request: Request, length: int) -> bytes | memoryview:
    """A body of a declared ``length``: as it came when it came in one chunk (a small one does), else
    copied chunk by chunk into one buffer of that size (numpy's: its pages are touched only as it fills)."""
    buffer: np.ndarray | None = None
    whole: bytes = b""
    size = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        end = size + len(chunk)
        if end > length:
            raise MalformedBody(f"the body is longer than its Content-Length of {length} bytes")
        if size == 0 and end == length:
            whole = chunk
        else:
            if buffer is None:
                buffer = np.empty(length, np.uint8)
            buffer[size:end] = np.frombuffer(chunk, np.uint8)
        size = end
    return whole if buffer is None else buffer.data.toreadonly()


def _too_large(media_type: str, limit: int, what: str) -> BodyTooLarge:
    if media_type != JSON:
        return BodyTooLarge(f"{what}; the limit is {limit} bytes")
    return BodyTooLarge(
        f"{what}; a JSON body may have at most {limit} bytes. Send large arrays as safetensors "
        "(Content-Type: application/vnd.safetensors), which take no more memory than their size"
    )


async def answer_in_a_thread(body: Body, work: Callable[[], Response]) -> Response:
    """``work()``'s answer, computed in a worker thread; after a large body the process's free memory is
    given back once the answer is sent (its buffers are freed by then too)."""
    response = await run_in_threadpool(work)
    if body.large:
        response.background = BackgroundTask(give_back_free_memory)
    return response


def _give_back_soon() -> None:
    # A finalizer runs where the last reference went, the event loop perhaps: trimming takes milliseconds.
    threading.Thread(target=give_back_free_memory, name="malloc-trim", daemon=True).start()


def parse(model: type[Model], value: dict[str, Any]) -> Model:
    """The document's envelope validated by ``model`` (422 naming the field)."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        errors = [{"loc": ["body", *item["loc"]], "msg": item["msg"]} for item in error.errors()]
        detail = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in errors)
        raise ValidationFailed(detail, errors=errors) from None


def hash_request(media_type: str, body: bytes | memoryview) -> str:
    """What identifies a request for Idempotency-Key: its media type and exact body."""
    digest = hashlib.sha256(orjson.dumps(media_type))
    digest.update(body)
    return digest.hexdigest()
