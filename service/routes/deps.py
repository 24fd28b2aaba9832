"""What routes share: the typed dependencies, request bodies, validation and JSON responses."""

import hashlib
from datetime import datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from service.codecs import JSON, dump_json, parse_json_object
from service.config import Settings
from service.errors import BodyTooLarge, UnsupportedMediaType, ValidationFailed
from service.sessions import Sessions, etag
from service.store import SessionMeta

Model = TypeVar("Model", bound=BaseModel)


def get_sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SessionsDep = Annotated[Sessions, Depends(get_sessions)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing anything over ``limit`` bytes (413) or not JSON (415)."""
    media_type = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if media_type != JSON:
        raise UnsupportedMediaType(f"the body must be {JSON}, got {media_type!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse(model: type[Model], body: bytes) -> Model:
    """The body parsed by orjson and its envelope validated by ``model`` (400 or 422)."""
    try:
        return model.model_validate(parse_json_object(body))
    except ValidationError as error:
        errors = [{"loc": ["body", *item["loc"]], "msg": item["msg"]} for item in error.errors()]
        detail = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in errors)
        raise ValidationFailed(detail, errors=errors) from None


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its own JSON body."""
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
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


def json_response(value: Any, *, status: int = 200, version: int | None = None, **headers: str) -> Response:
    if version is not None:
        headers["ETag"] = etag(version)
    return Response(dump_json(value), status_code=status, media_type=JSON, headers=headers)


def hash_request(media_type: str, body: bytes) -> str:
    """What identifies a request for Idempotency-Key: its media type and exact body."""
    return hashlib.sha256(orjson.dumps(media_type) + body).hexdigest()
