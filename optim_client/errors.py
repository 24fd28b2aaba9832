"""What the SDK raises: the service's RFC 9457 problem details as typed exceptions, and silence."""

from __future__ import annotations

import json
from typing import Any

import httpx


class OptimClientError(Exception):
    """The base of every error the SDK raises about the service."""

    def explain(self, text: str) -> None:
        """Add ``text`` to the message, as a sentence of its own."""
        first, *rest = self.args or ("",)
        self.args = (f"{str(first).rstrip('.')}. {text}", *rest)


class ServiceUnreachableError(OptimClientError):
    """No answer from the service: connection refused, a timeout or a dropped connection, on every attempt.

    ``attempts`` says how many were made; the last transport error is the ``__cause__``.
    """

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class OptimServiceError(OptimClientError):
    """The service answered with an error status; the attributes are its problem details."""

    def __init__(
        self,
        *,
        status: int,
        type: str,
        title: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = errors or []


class ClientError(OptimServiceError):
    """4xx: the request is wrong and sending it again cannot help, so it was sent once (429 aside)."""


class BadRequestError(ClientError):
    """400: the body is not well-formed JSON or safetensors."""


class AuthenticationError(ClientError):
    """401: the service needs an API key and got none, or one it does not accept (unknown, revoked, mistyped)."""


class NotFoundError(ClientError):
    """404: no such session (never created, or deleted)."""


class PreconditionFailedError(ClientError):
    """412: If-Match named an ETag the session has moved past."""


class ValidationError(ClientError, ValueError):
    """422: well-formed but invalid (a hyperparameter, a param name, a shape, a state_dict, a reused key).

    A ``ValueError`` as well, as torch.optim raises for an invalid learning rate.
    """


class RateLimitedError(ClientError):
    """429 on every attempt."""


class ServerError(OptimServiceError):
    """5xx on every attempt."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    412: PreconditionFailedError,
    422: ValidationError,
    429: RateLimitedError,
}


def error_from_response(response: httpx.Response) -> OptimServiceError:
    """The typed exception for an error response; a body that is not problem+json still gives a readable one."""
    problem = _problem(response)
    status = response.status_code
    kind: type[OptimServiceError] = ServerError if status >= 500 else _BY_STATUS.get(status, ClientError)
    errors = problem.get("errors")
    return kind(
        status=status,
        type=str(problem.get("type", "about:blank")),
        title=str(problem.get("title", response.reason_phrase)),
        detail=str(problem.get("detail", response.text[:500])),
        errors=errors if isinstance(errors, list) else None,
    )


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        problem = json.loads(response.content)
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}
