"""The OpenAPI document: what each operation reads and answers, with which statuses and headers.

Routes declare their own answers (``answers``, ``problems``, ``body_schema``). What a middleware does for
every /v1 route (and /metrics, which needs a key too) is added to each of them here, once
(``install_openapi``): the bearer key, its 401 and 429, the RateLimit fields, storage's 503, and the 500
and X-Request-ID that any route may answer with. The request bodies' schemas are ``request_schemas.py``'s,
as strict as the server's validation.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.api.authentication import is_guarded
from service.api.request_schemas import request_schemas
from service.wire.media_types import JSON, SAFETENSORS

PROBLEM_JSON = "application/problem+json"
SECURITY_SCHEME = "bearerAuth"
SAFETENSORS_DESCRIPTION = (
    "A safetensors file (https://github.com/huggingface/safetensors) of this document: its arrays moved "
    "into float32 or float64 tensors. A tensor is named by its array's path in the document (`params/w`, "
    "`state_dict/state/0/prev`), or by param name alone where the document's only arrays are one map by param "
    "name (a step's `grads`, the `params` of a step's answer); the other top-level fields travel in the file's "
    "metadata as JSON text. docs/binary.md has the details."
)


def in_safetensors(schema_name: str) -> dict[str, Any]:
    """The safetensors content of a body or answer whose document has the schema ``schema_name``: the same
    document, its arrays as tensors."""
    return {"schema": {"$ref": f"#/components/schemas/{schema_name}", "description": SAFETENSORS_DESCRIPTION}}


HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {
        "description": 'The session\'s version as an entity tag, one per representation (`"7"` for JSON, '
        '`"7.safetensors"`); If-Match takes either.',
        "schema": {"type": "string", "pattern": '^"[0-9]+(\\.safetensors)?"$'},
    },
    "Location": {
        "description": "The new session's URL; in a 202, the URL of the round to poll.",
        "schema": {"type": "string", "pattern": "^/v1/sessions/"},
    },
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}},
    "WWW-Authenticate": {
        "description": 'The Bearer challenge (RFC 6750): `Bearer realm="optim-service"`.',
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "description": 'The key\'s rate limit (IETF RateLimit header fields): `"per-key";q=<burst>;w=<seconds>`. '
        "Present when the key has a rate limit.",
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of the key\'s rate limit: `"per-key";r=<remaining>;t=<seconds until full>`. '
        "Present when the key has a rate limit.",
        "schema": {"type": "string"},
    },
    "X-Request-ID": {"description": "The request's id, as the server's log names it.", "schema": {"type": "string"}},
}
"""Every response header the API documents, by name."""

PROBLEMS: dict[int, tuple[str, dict[str, bool]]] = {
    400: ("The body is not JSON (or not an object) or not a safetensors file, or a header is malformed.", {}),
    401: ("No API key, or not a valid one; the server needs one once any key exists.", {"WWW-Authenticate": True}),
    403: ("Over a quota of the tenant's (`/problems/quota-exceeded`), or another tenant's session.", {}),
    404: ("No such session (or not the caller's tenant's).", {}),
    406: ("Accept names no media type this operation answers in.", {}),
    409: (
        "A request with this Idempotency-Key is still being processed (with Retry-After), or its first "
        "response is no longer kept.",
        {"Retry-After": False},
    ),
    412: ("If-Match names no version the session is at.", {}),
    413: ("The body is over the server's limit.", {}),
    415: ("A body media type this operation does not read.", {}),
    421: ("The Host header names a host this server does not answer (`OPTIM_ALLOWED_HOSTS`).", {}),
    422: ("A field is wrong; `errors` names each one.", {}),
    429: ("Over the key's rate limit.", {"Retry-After": True, "RateLimit-Policy": True, "RateLimit": True}),
    500: ("A bug: logged with a request id, which the detail names.", {}),
    503: (
        "Storage is busy or not answering (with Retry-After), or the server holds as many connections as it may.",
        {"Retry-After": False},
    ),
    507: ("Storage is full; writes succeed again once there is room.", {"Retry-After": True}),
}
"""Each problem status: what it means, and the headers that come with it (whether always)."""
EVERY_ROUTE = (421, 500)
"""What any route may answer."""
EVERY_GUARDED_ROUTE = (401, 429, 503)
"""What the authentication middleware may answer for any route it guards (/v1, /metrics), before the route runs."""
GUARDED_HEADERS = ("RateLimit-Policy", "RateLimit")
"""Headers the authentication middleware adds to every guarded response of a key with a rate limit."""

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details, with this API's extension members.",
    "properties": {
        "type": {"type": "string", "format": "uri-reference", "description": "Names the problem: `/problems/<slug>`."},
        "title": {"type": "string", "description": "The problem's type, in words."},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "This occurrence, in words."},
        "instance": {"type": "string", "format": "uri-reference"},
        "errors": {
            "type": "array",
            "description": "Each field that is wrong: where (`body`, `query`, `header`, `path`, then keys and "
            "indices) and why.",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
                "required": ["loc", "msg"],
            },
        },
        "quota": {
            "type": "string",
            "enum": ["max_sessions", "max_bytes", "max_params"],
            "description": "quota-exceeded: which one.",
        },
        "limit": {"type": "integer", "description": "quota-exceeded: the quota."},
        "usage": {"type": "integer", "description": "quota-exceeded: what the tenant holds now."},
        "requested": {"type": "integer", "description": "quota-exceeded: what the request needed."},
    },
    "required": ["type", "title", "status", "detail"],
    "additionalProperties": True,
}


def _header_refs(names: Iterable[str], *, required: bool = False) -> dict[str, Any]:
    return {name: _header_ref(name, required=required) for name in names}


def _header_ref(name: str, *, required: bool) -> dict[str, Any]:
    # Inline, not a $ref: a Reference Object's other fields (``required``) are ignored.
    return {**HEADERS[name], "required": required}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these problem statuses, each with what it means and its headers."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = PROBLEMS[status]
        answers[status] = {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if headers:
            answers[status]["headers"] = {name: _header_ref(name, required=always) for name, always in headers.items()}
    return answers


def answers(
    model: type[BaseModel] | None,
    status: int = 200,
    *,
    binary: bool = False,
    headers: Iterable[str] = (),
    links: Mapping[str, Any] | None = None,
    description: str = "Success",
) -> dict[int | str, dict[str, Any]]:
    """An operation's successful answer: its model, safetensors too when ``binary``, its (always present)
    headers and its links."""
    answer: dict[str, Any] = {"description": description}
    if model is not None:
        answer["model"] = model
    if binary:
        assert model is not None, "a binary answer is a document of the model's"
        answer["content"] = {SAFETENSORS: in_safetensors(model.__name__)}
        answer["description"] = f"{description}: JSON, or safetensors with Accept: {SAFETENSORS}"
    if headers:
        answer["headers"] = _header_refs(headers, required=True)
    if links:
        answer["links"] = dict(links)
    return {status: answer}


def body_schema(schema_name: str, *, binary: bool = True, example: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its own body (JSON, and safetensors when ``binary``)."""
    json_content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
    if example is not None:
        json_content["example"] = dict(example)
    content: dict[str, Any] = {JSON: json_content}
    if binary:
        content[SAFETENSORS] = in_safetensors(schema_name)
    return {"requestBody": {"required": True, "content": content}}


def _complete_operation(path: str, operation: dict[str, Any]) -> None:
    """What the middlewares add to the routes' own answers: security, and their statuses and headers."""
    guarded = is_guarded(path)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if "HTTPValidationError" in str(responses.get("422")):
        # FastAPI's own, added to every route with parameters; routes whose parameters can fail declare theirs.
        del responses["422"]
    added = problems(*EVERY_ROUTE, *(EVERY_GUARDED_ROUTE if guarded else ()))
    for status, answer in added.items():
        responses.setdefault(str(status), answer)
    for status, answer in responses.items():
        headers = answer.setdefault("headers", {})
        if guarded:
            for name, header in _header_refs(GUARDED_HEADERS).items():
                headers.setdefault(name, header)
        headers.setdefault("X-Request-ID", _header_ref("X-Request-ID", required=True))
        if status.startswith(("4", "5")):
            answer["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    operation["security"] = [{SECURITY_SCHEME: []}] if guarded else []


def install_openapi(app: FastAPI) -> None:
    """The app's OpenAPI document: the routes' own, completed with what the middlewares do, and the request
    bodies' schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            schemas.update(request_schemas())
            schemas["Problem"] = PROBLEM_SCHEMA
            components["securitySchemes"] = {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`optim-service keys create --tenant NAME`) as `Authorization: Bearer "
                    "osk_...`. Every /v1 request, and /metrics (an admin key), needs one once any key exists; a server "
                    "on loopback with no key serves without.",
                }
            }
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    _complete_operation(path, operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
