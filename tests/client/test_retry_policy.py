"""How long the client waits between attempts: exponential backoff, jitter, and Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from optim_client import RetryPolicy
from optim_client.retry import parse_retry_after

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_backoff_doubles_from_base_delay_up_to_max_delay() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0, jitter=False)
    assert [policy.backoff(retry) for retry in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_waits_between_half_and_all_of_the_backoff() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0, jitter=True)
    delays = [policy.backoff(3) for _ in range(200)]
    assert all(2.0 <= delay <= 4.0 for delay in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(("attempts", "base_delay", "max_delay"), [(0, 0.1, 1.0), (3, -1.0, 1.0), (3, 2.0, 1.0)])
def test_nonsensical_policies_are_refused(attempts: int, base_delay: float, max_delay: float) -> None:
    with pytest.raises(ValueError, match="Invalid"):
        RetryPolicy(attempts=attempts, base_delay=base_delay, max_delay=max_delay)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Thu, 01 Jan 2026 12:00:10 GMT", 10.0),
        ("Thu, 01 Jan 2026 11:59:00 GMT", 0.0),  # a date in the past: now
        ("soon", None),
        ("-3", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_as_an_http_date(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds
