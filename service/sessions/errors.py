"""What the session logic refuses, and why (``service/errors.py`` maps each to its problem)."""

from collections.abc import Sequence

Loc = Sequence[str | int]


class SessionError(Exception):
    """A refused request; nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionNotFound(SessionError):
    """No session has this id."""


class PreconditionFailed(SessionError):
    """The session is no longer at a version the request named (If-Match)."""


class IdempotencyKeyReused(SessionError):
    """An Idempotency-Key was sent again with a different request."""


class IdempotentResponseExpired(SessionError):
    """A retry of an applied step whose first response is no longer kept."""


class InvalidRequest(SessionError):
    """A field of the request is wrong; ``loc`` is its path in the request."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)


class IdempotencyKeyInFlight(SessionError):
    """A request with this Idempotency-Key is still being processed."""


class NotYours(SessionError):
    """An admin key asked to change, or read the arrays of, another tenant's session."""


class QuotaExceeded(SessionError):
    """The request would take the tenant past one of its quotas."""

    def __init__(self, message: str, *, quota: str, limit: int, usage: int, requested: int) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.usage = usage
        self.requested = requested


class RoundMovedOn(SessionError):
    """A contribution for a step other than the session's current round (sync), or too stale (async)."""

    def __init__(self, message: str, *, current_step: int) -> None:
        super().__init__(message)
        self.current_step = current_step


class RoundAnswerExpired(SessionError):
    """A closed round whose answer is no longer kept."""

    def __init__(self, message: str, *, current_step: int) -> None:
        super().__init__(message)
        self.current_step = current_step


class ContributionChanged(SessionError):
    """A worker contributed to the same round again with a different request."""


class RoundNotFound(SessionError):
    """The session has no such round: not yet opened, or no longer remembered."""
