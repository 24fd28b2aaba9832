"""When to try a request again, and how long to wait first."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, within a time budget, for connection errors, 5xx and 429.

    Retry ``n`` (1 for the first) waits ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds, times a
    random factor in [0.5, 1] when ``jitter`` is on, so that many clients do not come back in lockstep.
    A ``Retry-After`` header replaces the backoff (it may be longer than ``max_delay``). No retry starts
    later than ``budget`` seconds after the first attempt did: a wait that would end past it ends the
    retries at once. The default budget outlasts a server restart (about 1.5 s) many times over.
    """

    budget: float = 30.0
    """Seconds from the first attempt within which retries may start."""
    attempts: int | None = None
    """Attempts in all, the first included, if they should be capped by number too; 1 disables retries."""
    base_delay: float = 0.1
    max_delay: float = 2.0
    """The longest backoff; a Retry-After may ask for more, within the budget."""
    jitter: bool = True
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"Invalid attempts: {self.attempts} (at least 1)")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError(f"Invalid delays: base_delay {self.base_delay}, max_delay {self.max_delay}")
        if self.budget < 0:
            raise ValueError(f"Invalid budget: {self.budget} (seconds, at least 0)")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` when the service gave no Retry-After."""
        delay = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return float(delay * random.uniform(0.5, 1.0)) if self.jitter else float(delay)

    def delay(self, *, attempt: int, started: float, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the attempt after ``attempt``, of a call whose first attempt began at
        ``started`` (by ``clock``); None when no retry may follow (attempts or budget spent)."""
        if self.attempts is not None and attempt >= self.attempts:
            return None
        delay = self.backoff(attempt) if retry_after is None else retry_after
        if self.clock() - started + delay > self.budget:
            return None
        return delay


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())
