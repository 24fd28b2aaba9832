"""Rate limits as GCRA, the token bucket written as one number per key: its theoretical arrival time.

A key may send ``requests_per_second`` on average and ``burst`` at once. Each request
moves the key's theoretical arrival time (TAT) ``1 / requests_per_second`` seconds
later, starting from now if it is in the past; a request is allowed while the TAT it
would leave is at most ``burst`` intervals ahead of now. The store applies this in
one statement (``store/rate_limits.py``); what a decision tells the client, as the
IETF RateLimit header fields, is computed here.
"""

import math
from dataclasses import dataclass

POLICY = "per-key"


@dataclass(frozen=True)
class RateLimit:
    requests_per_second: float
    burst: int

    @property
    def interval(self) -> float:
        return 1.0 / self.requests_per_second

    @property
    def capacity(self) -> float:
        """How far ahead of now the TAT may be, in seconds, after an allowed request."""
        return self.burst * self.interval

    def policy_header(self) -> str:
        """``RateLimit-Policy``: ``burst`` requests, refilled over the seconds an empty bucket takes to fill."""
        return f'"{POLICY}";q={self.burst};w={max(1, math.ceil(self.capacity))}'


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    reset_seconds: int
    """Until the bucket is full again."""
    retry_after_seconds: int
    """Until a request is allowed again (0 when this one was)."""

    def header(self) -> str:
        """``RateLimit``: the requests left now, and the seconds until the bucket is full."""
        return f'"{POLICY}";r={self.remaining};t={self.reset_seconds}'


def decision(limit: RateLimit, *, allowed: bool, tat: float, now: float) -> Decision:
    """What the key learns: ``tat`` is the TAT the allowed request left, or the one that refused it."""
    ahead = max(0.0, tat - now)
    reset = math.ceil(ahead - 1e-9)
    if allowed:
        remaining = math.floor((limit.capacity - ahead) / limit.interval + 1e-9)
        return Decision(allowed=True, remaining=max(0, remaining), reset_seconds=reset, retry_after_seconds=0)
    wait = ahead + limit.interval - limit.capacity
    return Decision(allowed=False, remaining=0, reset_seconds=reset, retry_after_seconds=max(1, math.ceil(wait)))
