"""What one request did, as the layers that serve it learn it: the facts its metrics and access line need.

The HTTP middleware (``api/instrumentation.py``) starts a ``RequestFacts`` for each request; the problem
it was refused with (``errors.problem_response``) and what its step was (the domain's observer) are noted
in it as they happen. A mutable object in a context variable, so that worker threads of the request,
which run in a copy of its context, note into the same one.
"""

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RequestFacts:
    problem: str | None = None
    """The slug of the problem the request was answered with, if any."""
    optimizer: str | None = None
    """The optimizer of the session a step held."""
    replayed: bool = False
    skipped: bool = False
    """A step answered without being applied (non-finite gradients, on a session that skips them)."""
    """Answered with the first response of its Idempotency-Key."""
    step: int | None = None
    """The step a step request applied (or replayed)."""


current_facts: ContextVar[RequestFacts | None] = ContextVar("current_facts", default=None)


def note_problem(slug: str) -> None:
    """The request being served is answered with the problem ``slug``."""
    facts = current_facts.get()
    if facts is not None:
        facts.problem = slug
