"""Request bodies: read within their limit, joined off the event loop, and their envelopes validated."""

import hashlib
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.api.negotiation import body_media_type, check_content_encoding
from service.errors import BodyTooLarge, ValidationFailed
from service.wire.media_types import ARRAY_TYPES

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, limit: int, allowed: Sequence[str] = ARRAY_TYPES) -> tuple[str, list[bytes]]:
    """The body, as the chunks it arrived in, and its media type; 415 for a type not ``allowed`` or a content
    coding, 413 past ``limit`` bytes. Join the chunks (``joined``) in a worker thread: joining a large body
    on the event loop would hold up every other request meanwhile."""
    media_type = body_media_type(request.headers.get("content-type"), allowed)
    check_content_encoding(request.headers.get("content-encoding"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return media_type, chunks


def joined(chunks: list[bytes]) -> bytes:
    """A body's chunks as one ``bytes`` (large joins release the GIL, so call this off the event loop)."""
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse(model: type[Model], value: dict[str, Any]) -> Model:
    """The document's envelope validated by ``model`` (422 naming the field)."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        errors = [{"loc": ["body", *item["loc"]], "msg": item["msg"]} for item in error.errors()]
        detail = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in errors)
        raise ValidationFailed(detail, errors=errors) from None


def hash_request(media_type: str, body: bytes) -> str:
    """What identifies a request for Idempotency-Key: its media type and exact body."""
    return hashlib.sha256(orjson.dumps(media_type) + body).hexdigest()
