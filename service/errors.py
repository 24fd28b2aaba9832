"""Every error leaves as RFC 9457 problem+json: the one place where the errors of the sessions, the wire
formats, the store and the numeric core become problems, beside the problems only HTTP has."""

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from optim_core import OptimCoreError
from service.sessions import errors as sessions
from service.store import (
    SessionMissing,
    StorageBusy,
    StorageFailure,
    StorageFull,
    StorageUnavailable,
    VersionMismatch,
)
from service.wire import errors as wire

PROBLEM_JSON = "application/problem+json"
logger = logging.getLogger("service")

Loc = Sequence[str | int]


class ProblemError(Exception):
    """A client-facing failure with its HTTP status; ``errors`` name the offending fields."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(
        self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class ValidationFailed(ProblemError):
    status, slug, title = 422, "validation-error", "Invalid request"

    @classmethod
    def at(cls, loc: Loc, msg: str) -> "ValidationFailed":
        return cls(msg, errors=[{"loc": list(loc), "msg": msg}])


class MalformedHeader(ProblemError):
    status, slug, title = 400, "malformed-header", "Malformed request header"

    @classmethod
    def at(cls, loc: Loc, msg: str) -> "MalformedHeader":
        return cls(msg, errors=[{"loc": list(loc), "msg": msg}])


class BodyTooLarge(ProblemError):
    status, slug, title = 413, "body-too-large", "Request body too large"


class UnsupportedMediaType(ProblemError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported request media type"


class NotAcceptable(ProblemError):
    status, slug, title = 406, "not-acceptable", "No acceptable response media type"


class StorageNotAnswering(ProblemError):
    status, slug, title = 503, "storage-unavailable", "Storage is not answering"


REFUSALS: dict[type[Exception], tuple[int, str, str]] = {
    sessions.SessionNotFound: (404, "session-not-found", "No such session"),
    SessionMissing: (404, "session-not-found", "No such session"),
    sessions.PreconditionFailed: (412, "precondition-failed", "The session has moved on"),
    VersionMismatch: (412, "precondition-failed", "The session has moved on"),
    sessions.IdempotencyKeyReused: (
        422,
        "idempotency-key-reused",
        "Idempotency-Key reused with a different request",
    ),
    sessions.IdempotentResponseExpired: (
        409,
        "idempotent-response-expired",
        "The first response to this Idempotency-Key is no longer kept",
    ),
    wire.MalformedBody: (400, "malformed-body", "Malformed request body"),
    sessions.NotYours: (403, "not-your-session", "Another tenant's session"),
}
"""Refusals of the layers below HTTP that name no field: status, type and title."""


def problem_response(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": f"/problems/{slug}", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    if extensions:
        body.update(extensions)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


STORAGE_PROBLEMS: dict[type[StorageFailure], tuple[int, str, str]] = {
    StorageFull: (507, "insufficient-storage", "Storage is full"),
    StorageBusy: (503, "storage-busy", "Storage is busy"),
    StorageUnavailable: (503, "storage-unavailable", "Storage is not answering"),
}
"""Each storage failure's status, type and title; the client may retry after ``Retry-After`` seconds."""


def storage_problem(failure: StorageFailure, *, retry_after_seconds: int) -> Response:
    """A storage failure as 507 or 503: the request changed nothing (unless the detail says its outcome is unknown)."""
    status, slug, title = next(problem for kind, problem in STORAGE_PROBLEMS.items() if isinstance(failure, kind))
    detail = str(failure)
    if isinstance(failure, StorageUnavailable) and not failure.before_commit:
        detail += (
            "; the change may have been committed before the connection was lost: retry with the same "
            "Idempotency-Key, or read the session to learn its step"
        )
    else:
        detail += "; nothing was changed"
    return problem_response(
        status=status, slug=slug, title=title, detail=detail, headers={"Retry-After": str(retry_after_seconds)}
    )


def install_error_handlers(app: FastAPI, *, retry_after_seconds: int = 1) -> None:
    """Map every domain, wire and store error to its problem; ``UnhandledErrors`` answers the rest."""

    @app.exception_handler(StorageFailure)
    async def on_storage_failure(request: Request, failure: StorageFailure) -> Response:
        logger.warning("storage failure on %s %s: %s", request.method, request.url.path, failure)
        return storage_problem(failure, retry_after_seconds=retry_after_seconds)

    @app.exception_handler(sessions.InvalidRequest)
    @app.exception_handler(wire.InvalidValue)
    async def on_invalid(request: Request, error: sessions.InvalidRequest | wire.InvalidValue) -> Response:
        return await on_problem(request, ValidationFailed.at(error.loc, error.message))

    async def on_refusal(request: Request, error: Exception) -> Response:
        status, slug, title = next(problem for kind, problem in REFUSALS.items() if isinstance(error, kind))
        return problem_response(status=status, slug=slug, title=title, detail=str(error))

    for kind in REFUSALS:
        app.add_exception_handler(kind, on_refusal)

    @app.exception_handler(sessions.IdempotencyKeyInFlight)
    async def on_key_in_flight(request: Request, error: sessions.IdempotencyKeyInFlight) -> Response:
        return problem_response(
            status=409,
            slug="idempotency-key-in-flight",
            title="A request with this Idempotency-Key is still being processed",
            detail=str(error),
            headers={"Retry-After": str(max(1, retry_after_seconds))},
        )

    @app.exception_handler(sessions.QuotaExceeded)
    async def on_quota_exceeded(request: Request, error: sessions.QuotaExceeded) -> Response:
        return problem_response(
            status=403,
            slug="quota-exceeded",
            title="Over the tenant's quota",
            detail=str(error),
            extensions={"quota": error.quota, "limit": error.limit, "usage": error.usage, "requested": error.requested},
        )

    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, error: ProblemError) -> Response:
        return problem_response(
            status=error.status,
            slug=error.slug,
            title=error.title,
            detail=error.detail,
            errors=error.errors,
            headers=error.headers,
        )

    @app.exception_handler(OptimCoreError)
    async def on_core_error(request: Request, error: OptimCoreError) -> Response:
        return await on_problem(request, ValidationFailed.at(("body", *error.loc), error.message))

    @app.exception_handler(RequestValidationError)
    async def on_request_validation(request: Request, error: RequestValidationError) -> Response:
        errors = [{"loc": list(item["loc"]), "msg": item["msg"]} for item in error.errors()]
        detail = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in errors)
        return await on_problem(request, ValidationFailed(detail, errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> Response:
        return problem_response(
            status=error.status_code,
            slug="http-error",
            title=str(error.detail),
            detail=str(error.detail),
            headers=dict(error.headers or {}),
        )


class UnhandledErrors:
    """The outermost middleware: an error nothing else handled is a bug, logged and answered as a 500
    problem here, so that the connection stays open (Starlette's own handler re-raises it to the
    server, which then closes a keep-alive connection without saying so)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            request_id = uuid.uuid4().hex
            logger.exception("unhandled error, request id %s", request_id, exc_info=error)
            if started:
                raise  # half a response is out: only closing the connection can end it
            response = problem_response(
                status=500,
                slug="internal-error",
                title="Internal server error",
                detail=f"An unexpected error occurred; request id {request_id}.",
            )
            await response(scope, receive, send)
