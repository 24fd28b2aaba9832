"""What the SDK raises: the service's RFC 9457 problem details as typed exceptions, and silence."""

from __future__ import annotations

import json
from typing import Any

import httpx

KEY_IN_FLIGHT = "/problems/idempotency-key-in-flight"
"""The problem type of a 409 that answers a repeat of a request the service is still processing."""
RESPONSE_EXPIRED = "/problems/idempotent-response-expired"
"""The problem type of a 409 that answers a repeat of an applied request whose first answer is gone."""
ROUND_MOVED_ON = "/problems/round-moved-on"
"""The problem type of a 409 that refuses a contribution for a step other than the one the session takes."""
ROUND_ANSWER_EXPIRED = "/problems/round-answer-expired"
"""The problem type of a 409 that answers a contributor of a closed round whose answer is gone."""


class OptimClientError(Exception):
    """The base of every error the SDK raises about the service.

    ``maybe_applied`` is True when the request may have changed the session although the call failed:
    an attempt reached the service and no answer said what became of it (the connection dropped, or
    a 5xx). A step that fails so stays pending on its session (``Session.resolve_pending``).
    """

    maybe_applied: bool = False

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
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.problem = problem or {}
        """The whole problem document, extension members (``current_step``) included."""


class ClientError(OptimServiceError):
    """4xx: the request is wrong and sending it again cannot help, so it was sent once (429 and a 409 for a
    request still in flight aside)."""


class BadRequestError(ClientError):
    """400: the body is not well-formed JSON or safetensors."""


class AuthenticationError(ClientError):
    """401: the service needs an API key and got none, or one it does not accept (unknown, revoked, mistyped)."""


class NotFoundError(ClientError):
    """404: no such session (never created, or deleted)."""


class ConflictError(ClientError):
    """409: a repeat of an Idempotency-Key whose first request is still being processed (after every retry)."""


class ResponseExpiredError(ConflictError):
    """409: a repeat of a request that was applied, whose first answer the service no longer keeps."""


class RoundMovedOnError(ConflictError):
    """409 to a contribution: its ``based_on_step`` is not a step the session takes contributions for.

    In a synchronous session the round it names closed without it (or is not open yet); in an asynchronous
    one it is staler than ``max_staleness`` allows. Nothing was stored: compute the gradient again on the
    params of ``current_step`` (an attached optimizer has written them into its params already).
    """

    @property
    def current_step(self) -> int | None:
        """The session's step when the contribution was refused: the round that takes contributions now."""
        return _current_step(self.problem)


class RoundAnswerExpiredError(ResponseExpiredError):
    """409 to a contributor: its round closed, with its contribution, and the service no longer keeps the answer.

    The contribution was applied; ``current_step`` is where the session is now.
    """

    @property
    def current_step(self) -> int | None:
        return _current_step(self.problem)


class PreconditionFailedError(ClientError):
    """412: If-Match named an ETag the session has moved past."""


class StepConflictError(PreconditionFailedError):
    """412 to a step: the session is no longer at the version the step was sent for.

    ``expected_step`` and ``expected_version`` are where the session was when the step was sent;
    ``step`` and ``version`` where the service holds it now (None if it could not be read). ``applied``
    is False when the step was certainly not applied, None when that cannot be told (an earlier
    attempt's outcome was unknown and the service no longer remembers its Idempotency-Key).
    """

    def __init__(
        self,
        message: str,
        *,
        refused: PreconditionFailedError,
        expected_step: int,
        expected_version: int | None,
        step: int | None,
        version: int | None,
        applied: bool | None,
    ) -> None:
        super().__init__(status=refused.status, type=refused.type, title=refused.title, detail=refused.detail)
        self.args = (message,)
        self.expected_step = expected_step
        self.expected_version = expected_version
        self.step = step
        self.version = version
        self.applied = applied


class ValidationError(ClientError, ValueError):
    """422: well-formed but invalid (a hyperparameter, a param name, a shape, a state_dict, a reused key).

    A ``ValueError`` as well, as torch.optim raises for an invalid learning rate.
    """


class RateLimitedError(ClientError):
    """429 on every attempt."""


class ServerError(OptimServiceError):
    """5xx on every attempt."""


class RoundTimeoutError(OptimClientError):
    """A contribution's round stayed open longer than the client waits (``Client(round_timeout=...)``).

    The contribution is stored in round ``round`` (``contributions`` of ``workers`` are in) and is applied
    when the round closes: it stays pending, and the next ``step()`` (or ``resolve_pending()``) waits again.
    """

    maybe_applied = True

    def __init__(self, message: str, *, round: int | None, contributions: int | None, workers: int | None) -> None:
        super().__init__(message)
        self.round = round
        self.contributions = contributions
        self.workers = workers


_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    412: PreconditionFailedError,
    422: ValidationError,
    429: RateLimitedError,
}
_BY_TYPE: dict[str, type[ClientError]] = {
    RESPONSE_EXPIRED: ResponseExpiredError,
    ROUND_MOVED_ON: RoundMovedOnError,
    ROUND_ANSWER_EXPIRED: RoundAnswerExpiredError,
}


def problem_type(response: httpx.Response) -> str:
    """The ``type`` of a problem+json answer ("about:blank" when it names none)."""
    return str(_problem(response).get("type", "about:blank"))


def error_from_response(response: httpx.Response) -> OptimServiceError:
    """The typed exception for an error response; a body that is not problem+json still gives a readable one."""
    problem = _problem(response)
    status = response.status_code
    problem_type = str(problem.get("type", "about:blank"))
    kind: type[OptimServiceError] = (
        ServerError if status >= 500 else _BY_TYPE.get(problem_type) or _BY_STATUS.get(status, ClientError)
    )
    errors = problem.get("errors")
    return kind(
        status=status,
        type=problem_type,
        title=str(problem.get("title", response.reason_phrase)),
        detail=str(problem.get("detail", response.text[:500])),
        errors=errors if isinstance(errors, list) else None,
        problem=problem,
    )


def _current_step(problem: dict[str, Any]) -> int | None:
    step = problem.get("current_step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        problem = json.loads(response.content)
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}
