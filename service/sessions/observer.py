"""What the domain tells of its work as it does it, for whoever counts and times it (the service's metrics).

``Sessions`` calls an observer at a few points of a step; the observer must be quick and must not fail.
Nothing here knows how the facts are kept: the metrics live in ``service/observability``.
"""

from typing import Protocol


class Observer(Protocol):
    def step_held(self, optimizer: str) -> None:
        """A step holds its session, whose optimizer is ``optimizer``."""
        ...

    def replayed(self, step: int) -> None:
        """A request with an Idempotency-Key was answered with its first response, whose session was then at
        ``step``."""
        ...

    def step_skipped(self) -> None:
        """A step of non-finite gradients was answered without being applied (the session's ``nonfinite``)."""
        ...

    def step_applied(self, *, step: int, seconds: float, commit_seconds: float) -> None:
        """A step was applied and committed as ``step``: in ``seconds`` from asking for the session (a wait for
        another request's hold included) to the end of its commit, of which the commit took ``commit_seconds``."""
        ...


class Unobserved:
    """The observer of a ``Sessions`` nobody watches."""

    def step_held(self, optimizer: str) -> None:
        pass

    def replayed(self, step: int) -> None:
        pass

    def step_skipped(self) -> None:
        pass

    def step_applied(self, *, step: int, seconds: float, commit_seconds: float) -> None:
        pass
