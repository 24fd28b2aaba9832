"""Request bodies: read within their limits into one buffer, and their envelopes validated."""

import hashlib
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.api.negotiation import body_media_type, check_content_encoding
from service.buffers import join
from service.config import Settings
from service.errors import BodyTooLarge, ValidationFailed
from service.server.memory import fresh_buffer
from service.wire.errors import MalformedBody
from service.wire.media_types import ARRAY_TYPES, JSON

Model = TypeVar("Model", bound=BaseModel)
MAX_LENGTH_DIGITS = 19
"""A Content-Length of more digits is over any limit (and is not read as an int)."""


class Body:
    """A request body as it was read: its media type and its bytes, as one buffer when its length was
    declared (filled chunk by chunk as it arrived: no join, no second copy), else as the chunks of a
    chunked upload, for ``content`` to join off the event loop."""

    __slots__ = ("_pieces", "media_type", "size")

    def __init__(self, media_type: str, pieces: list[bytes | memoryview], size: int) -> None:
        self.media_type = media_type
        self.size = size
        self._pieces = pieces

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
    if declared is not None and declared.isascii() and declared.isdigit():
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
    copied chunk by chunk into one buffer of that size (``fresh_buffer``)."""
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
                buffer = fresh_buffer(length)
            buffer[size:end] = np.frombuffer(chunk, np.uint8)
        size = end
    if size != length:
        raise MalformedBody(f"the body ended after {size} of the {length} bytes its Content-Length declares")
    return whole if buffer is None else buffer.data.toreadonly()


def _too_large(media_type: str, limit: int, what: str) -> BodyTooLarge:
    if media_type != JSON:
        return BodyTooLarge(f"{what}; the limit is {limit} bytes")
    return BodyTooLarge(
        f"{what}; a JSON body may have at most {limit} bytes. Send large arrays as safetensors "
        "(Content-Type: application/vnd.safetensors), which take no more memory than their size"
    )


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
