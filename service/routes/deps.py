"""What routes share: the typed dependencies, request bodies, validation and JSON responses."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from service.binary import document_from_safetensors, safetensors_from_document
from service.codecs import ArrayPath
from service.config import Settings
from service.errors import BodyTooLarge, ValidationFailed
from service.json_workers import JsonWorkers
from service.media import ARRAY_TYPES, JSON, SAFETENSORS, body_media_type
from service.sessions import Sessions, etag
from service.store import SessionMeta

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, limit: int, allowed: Sequence[str] = ARRAY_TYPES) -> tuple[str, list[bytes]]:
    """The body, as the chunks it arrived in, and its media type; 415 for a type not ``allowed``, 413 past
    ``limit`` bytes. Join the chunks (``joined``) in a worker thread: joining a large body on the event
    loop would hold up every other request meanwhile."""
    media_type = body_media_type(request.headers.get("content-type"), allowed)
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


BINARY_SCHEMA = {"type": "string", "format": "binary", "description": "a safetensors file; see docs/binary.md"}


def body_schema(model: type[BaseModel], *, binary: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its own body (JSON, and safetensors when ``binary``)."""
    content: dict[str, Any] = {JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if binary:
        content[SAFETENSORS] = {"schema": BINARY_SCHEMA}
    return {"requestBody": {"required": True, "content": content}}


def array_responses(model: type[BaseModel], status: int = 200) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for a route that answers in JSON or safetensors, as Accept asks."""
    return {
        status: {
            "model": model,
            "content": {SAFETENSORS: {"schema": BINARY_SCHEMA}},
            "description": "JSON, or safetensors with Accept: application/vnd.safetensors",
        }
    }


def _timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds") + "Z"


def summary(meta: SessionMeta) -> dict[str, Any]:
    return {
        "id": meta.id,
        "optimizer": meta.optimizer,
        "dtype": meta.dtype,
        "step": meta.step,
        "param_groups": meta.param_groups,
        "shapes": meta.shapes,
        "created_at": _timestamp(meta.created_at),
        "updated_at": _timestamp(meta.updated_at),
    }


class Wire:
    """Bodies in and responses out, in JSON or safetensors; large JSON goes through worker processes."""

    def __init__(self, json_workers: JsonWorkers) -> None:
        self._json_workers = json_workers

    def document(
        self, media_type: str, body: bytes, *, root: str | None = None, array_paths: Sequence[ArrayPath] = ()
    ) -> dict[str, Any]:
        """The body as a JSON-style document whose arrays (at ``array_paths``, or all in binary) are numpy."""
        if media_type == SAFETENSORS:
            return document_from_safetensors(body, root=root)
        return self._json_workers.decode(body, array_paths)

    def respond(
        self,
        value: dict[str, Any],
        *,
        media_type: str = JSON,
        root: str | None = None,
        status: int = 200,
        version: int | None = None,
        **headers: str,
    ) -> Response:
        """``value`` as JSON or safetensors (arrays under ``root`` named by param name alone)."""
        if version is not None:
            headers["ETag"] = etag(version)
        if media_type == SAFETENSORS:
            body = safetensors_from_document(value, root=root)
        else:
            body = self._json_workers.encode(value)
        return Response(body, status_code=status, media_type=media_type, headers=headers)


@dataclass(frozen=True)
class Service:
    """What the routes work with, built once in the app's lifespan."""

    sessions: Sessions
    wire: Wire
    settings: Settings


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def hash_request(media_type: str, body: bytes) -> str:
    """What identifies a request for Idempotency-Key: its media type and exact body."""
    return hashlib.sha256(orjson.dumps(media_type) + body).hexdigest()
