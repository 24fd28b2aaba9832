"""Every error leaves as RFC 9457 problem+json: the one place where the errors of the sessions, the wire
formats, the store and the numeric core become problems, beside the problems only HTTP has."""

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from optim_core import OptimCoreError
from service.api.methods import allowed_methods
from service.api.middleware import HttpMiddleware
from service.api.request_ids import current_request_id, new_request_id
from service.observability.requests import note_problem
from service.problem_types import PROBLEM_TYPES, type_uri
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
HTTP_ERRORS = {404: "not-found", 405: "method-not-allowed"}
"""The problem types of the router's refusals; any other HTTP error is ``http-error``."""


class ProblemError(Exception):
    """A client-facing failure of a kind in ``PROBLEM_TYPES``; ``errors`` name the offending fields."""

    slug = "validation-error"

    def __init__(
        self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class ValidationFailed(ProblemError):
    slug = "validation-error"

    @classmethod
    def at(cls, loc: Loc, msg: str) -> "ValidationFailed":
        return cls(msg, errors=[{"loc": list(loc), "msg": msg}])


class MalformedHeader(ProblemError):
    slug = "malformed-header"

    @classmethod
    def at(cls, loc: Loc, msg: str) -> "MalformedHeader":
        return cls(msg, errors=[{"loc": list(loc), "msg": msg}])


class BodyTooLarge(ProblemError):
    slug = "body-too-large"


class UnsupportedMediaType(ProblemError):
    slug = "unsupported-media-type"


class UnsupportedContentEncoding(ProblemError):
    slug = "unsupported-content-encoding"


class NotAcceptable(ProblemError):
    slug = "not-acceptable"


class StorageNotAnswering(ProblemError):
    slug = "storage-unavailable"


REFUSALS: dict[type[Exception], str] = {
    sessions.SessionNotFound: "session-not-found",
    SessionMissing: "session-not-found",
    sessions.PreconditionFailed: "precondition-failed",
    VersionMismatch: "precondition-failed",
    sessions.IdempotencyKeyReused: "idempotency-key-reused",
    sessions.IdempotentResponseExpired: "idempotent-response-expired",
    wire.MalformedBody: "malformed-body",
    sessions.NotYours: "not-your-session",
    sessions.ContributionChanged: "contribution-changed",
    sessions.RoundNotFound: "round-not-found",
}
"""Refusals of the layers below HTTP that name no field, and their problem types."""


def problem_response(
    *,
    slug: str,
    detail: str,
    status: int | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> Response:
    """The problem of type ``slug`` (its status and title from ``PROBLEM_TYPES``, unless ``status`` is given),
    whose ``instance`` is the request's id."""
    kind = PROBLEM_TYPES[slug]
    status = status or kind.status
    note_problem(slug)
    body: dict[str, Any] = {
        "type": type_uri(slug),
        "title": kind.title,
        "status": status,
        "detail": detail,
        "instance": current_request_id.get() or new_request_id(),
    }
    if errors:
        body["errors"] = errors
    if extensions:
        body.update(extensions)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


STORAGE_PROBLEMS: dict[type[StorageFailure], str] = {
    StorageFull: "insufficient-storage",
    StorageBusy: "storage-busy",
    StorageUnavailable: "storage-unavailable",
}
"""Each storage failure's problem type; the client may retry after ``Retry-After`` seconds."""


def storage_problem(failure: StorageFailure, *, retry_after_seconds: int) -> Response:
    """A storage failure as 507 or 503: the request changed nothing (unless the detail says its outcome is unknown)."""
    slug = next(slug for kind, slug in STORAGE_PROBLEMS.items() if isinstance(failure, kind))
    detail = str(failure)
    if isinstance(failure, StorageUnavailable) and not failure.before_commit:
        detail += (
            "; the change may have been committed before the connection was lost: retry with the same "
            "Idempotency-Key, or read the session to learn its step"
        )
    else:
        detail += "; nothing was changed"
    return problem_response(slug=slug, detail=detail, headers={"Retry-After": str(retry_after_seconds)})


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
        slug = next(slug for kind, slug in REFUSALS.items() if isinstance(error, kind))
        return problem_response(slug=slug, detail=str(error))

    for kind in REFUSALS:
        app.add_exception_handler(kind, on_refusal)

    @app.exception_handler(sessions.IdempotencyKeyInFlight)
    async def on_key_in_flight(request: Request, error: sessions.IdempotencyKeyInFlight) -> Response:
        return problem_response(
            slug="idempotency-key-in-flight",
            detail=str(error),
            headers={"Retry-After": str(max(1, retry_after_seconds))},
        )

    @app.exception_handler(sessions.RoundMovedOn)
    async def on_round_moved_on(request: Request, error: sessions.RoundMovedOn) -> Response:
        return problem_response(
            slug="round-moved-on", detail=str(error), extensions={"current_step": error.current_step}
        )

    @app.exception_handler(sessions.RoundAnswerExpired)
    async def on_round_answer_expired(request: Request, error: sessions.RoundAnswerExpired) -> Response:
        return problem_response(
            slug="round-answer-expired", detail=str(error), extensions={"current_step": error.current_step}
        )

    @app.exception_handler(sessions.QuotaExceeded)
    async def on_quota_exceeded(request: Request, error: sessions.QuotaExceeded) -> Response:
        return problem_response(
            slug="quota-exceeded",
            detail=str(error),
            extensions={"quota": error.quota, "limit": error.limit, "usage": error.usage, "requested": error.requested},
        )

    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, error: ProblemError) -> Response:
        return problem_response(slug=error.slug, detail=error.detail, errors=error.errors, headers=error.headers)

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
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # The router names the methods of the first route on the path; several share it.
            headers["Allow"] = ", ".join(allowed_methods(request.app.router.routes, request.scope))
        return problem_response(
            slug=HTTP_ERRORS.get(error.status_code, "http-error"),
            status=error.status_code,
            detail=str(error.detail),
            headers=headers,
        )


class UnhandledErrors(HttpMiddleware):
    """The middleware just inside ``RequestIds``: an error nothing else handled is a bug, logged and
    answered as a 500 problem here, so that the connection stays open (Starlette's own handler
    re-raises it to the server, which then closes a keep-alive connection without saying so)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            request_id = current_request_id.get()
            logger.exception("unhandled error, request id %s", request_id, exc_info=error)
            if started:
                raise  # half a response is out: only closing the connection can end it
            response = problem_response(
                slug="internal-error", detail=f"An unexpected error occurred; request id {request_id}."
            )
            await response(scope, receive, send)
