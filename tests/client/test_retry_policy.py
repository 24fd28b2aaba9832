"""How long the client waits between attempts: capped exponential backoff, jitter, Retry-After, and the budget."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from optim_client import RetryPolicy
from optim_client.retry import parse_retry_after
from tests.client.fake_clock import FakeClock

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_backoff_doubles_from_base_delay_up_to_max_delay() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0, jitter=False)
    assert [policy.backoff(retry) for retry in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_waits_between_half_and_all_of_the_backoff() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0, jitter=True)
    delays = [policy.backoff(3) for _ in range(200)]
    assert all(2.0 <= delay <= 4.0 for delay in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "settings",
    [{"attempts": 0}, {"base_delay": -1.0}, {"base_delay": 2.0, "max_delay": 1.0}, {"budget": -1.0}],
)
def test_nonsensical_policies_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Invalid"):
        RetryPolicy(**settings)


def test_no_retry_starts_after_the_budget_and_a_retry_after_may_exceed_max_delay_within_it() -> None:
    clock = FakeClock()
    policy = RetryPolicy(budget=10.0, base_delay=1.0, max_delay=2.0, jitter=False, clock=clock.now)
    started = clock.now()
    assert policy.delay(attempt=1, started=started, retry_after=9.0) == 9.0
    assert policy.delay(attempt=1, started=started, retry_after=10.5) is None
    clock.sleep(9.0)
    assert policy.delay(attempt=2, started=started) is None, "1 s left, and the backoff is 2 s"
    assert policy.delay(attempt=2, started=started, retry_after=1.0) == 1.0


def test_attempts_cap_the_retries_too_when_given() -> None:
    policy = RetryPolicy(attempts=2, jitter=False)
    assert policy.delay(attempt=1, started=policy.clock()) == policy.base_delay
    assert policy.delay(attempt=2, started=policy.clock()) is None


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
