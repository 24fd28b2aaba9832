"""Sending a request until it gets an answer worth returning, as a ``RetryPolicy`` allows."""

from __future__ import annotations

import logging

import httpx

from optim_client.errors import (
    KEY_IN_FLIGHT,
    OptimClientError,
    ServiceUnreachableError,
    error_from_response,
    problem_type,
)
from optim_client.retry import RetryPolicy, parse_retry_after

logger = logging.getLogger("optim_client")

NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport errors that guarantee the request never reached the service."""
RETRYABLE = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Transport errors worth another attempt: the network failed, not the request."""


def send_with_retries(
    http: httpx.Client, request: httpx.Request, policy: RetryPolicy, *, done_on_retry: frozenset[int] = frozenset()
) -> httpx.Response:
    """The first successful response to ``request``; an error status raises its ``OptimServiceError``.

    Every request the SDK sends may be repeated: it changes nothing twice (an Idempotency-Key, or the
    same change again). Connection errors, timeouts, 5xx, 429 and a 409 for an Idempotency-Key still
    in flight are retried, waiting as the policy (or the service's Retry-After) says; other statuses
    are final. ``done_on_retry`` lists the statuses that mean success when they answer a retry after
    an attempt whose fate is unknown (a DELETE that already happened answers 404). The error raised
    says whether the request may have been applied nonetheless (``maybe_applied``).
    """
    what = f"{request.method} {request.url.path}"
    changes = request.method not in ("GET", "HEAD")
    started = policy.clock()
    maybe_applied = False
    attempt = 0
    while True:
        attempt += 1
        try:
            response = http.send(request)
        except RETRYABLE as error:
            maybe_applied = maybe_applied or (changes and not isinstance(error, NOT_SENT))
            failure = f"{what}: {type(error).__name__}: {error}"
            delay = policy.delay(attempt=attempt, started=started)
            if delay is None:
                elapsed = policy.clock() - started
                unreachable = ServiceUnreachableError(
                    f"{failure} (after {attempt} attempts in {elapsed:.3g} s)", attempts=attempt
                )
                raise _marked(unreachable, maybe_applied=maybe_applied) from error
            logger.warning("%s; retrying in %.3g s", failure, delay)
            policy.sleep(delay)
            continue
        status = response.status_code
        if response.is_success or (maybe_applied and status in done_on_retry):
            return response
        maybe_applied = maybe_applied or (changes and status >= 500)
        retryable = status >= 500 or status == 429 or (status == 409 and problem_type(response) == KEY_IN_FLIGHT)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        delay = policy.delay(attempt=attempt, started=started, retry_after=retry_after) if retryable else None
        if delay is None:
            raise _marked(error_from_response(response), maybe_applied=maybe_applied)
        logger.warning("%s answered %d; retrying in %.3g s", what, status, delay)
        policy.sleep(delay)


def _marked(error: OptimClientError, *, maybe_applied: bool) -> OptimClientError:
    error.maybe_applied = maybe_applied
    return error
