"""The OpenAPI description: bodies the routes read themselves, answers in two media types, the schemas."""

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.wire.media_types import JSON, SAFETENSORS

BINARY_SCHEMA = {"type": "string", "format": "binary", "description": "a safetensors file; see docs/binary.md"}
PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def problems(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for problems, by status, each with what it means."""
    return {status: {"description": text, **PROBLEM} for status, text in statuses.items()}


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


def install_openapi(app: FastAPI, request_models: Sequence[type[BaseModel]]) -> None:
    """The app's OpenAPI document, with the schemas of the bodies its routes parse themselves."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in request_models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
