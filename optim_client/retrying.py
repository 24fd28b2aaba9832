"""Sending a request until it gets an answer worth returning, as a ``RetryPolicy`` allows."""

from __future__ import annotations

import logging

import httpx

from optim_client.errors import ServiceUnreachableError, error_from_response
from optim_client.retry import RetryPolicy, parse_retry_after

logger = logging.getLogger("optim_client")

NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport errors that guarantee the request never reached the service."""
RETRYABLE = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Transport errors worth another attempt: the network failed, not the request."""


def send_with_retries(
    http: httpx.Client,
    request: httpx.Request,
    policy: RetryPolicy,
    *,
    replay_safe: bool = True,
    done_on_retry: frozenset[int] = frozenset(),
) -> httpx.Response:
    """The first successful response to ``request``; an error status raises its ``OptimServiceError``.

    Connection errors, timeouts, 5xx and 429 are retried; other statuses are final. A request that is
    not ``replay_safe`` (no Idempotency-Key protects it) is repeated only when the service cannot
    have applied it: a connection never made, or a 429 or 503 answer. ``done_on_retry`` lists the
    statuses that mean success when they answer a retry after an attempt whose fate is unknown (a
    DELETE that already happened answers 404).
    """
    what = f"{request.method} {request.url.path}"
    outcome_unknown = False
    attempt = 0
    while True:
        attempt += 1
        try:
            response = http.send(request)
        except RETRYABLE as error:
            sent = not isinstance(error, NOT_SENT)
            failure = f"{what}: {type(error).__name__}: {error}"
            if sent and not replay_safe:
                raise ServiceUnreachableError(
                    f"{failure}; the service may have applied it, and repeating it is not safe", attempts=attempt
                ) from error
            if attempt >= policy.attempts:
                raise ServiceUnreachableError(f"{failure} (after {attempt} attempts)", attempts=attempt) from error
            outcome_unknown = outcome_unknown or sent
            delay = policy.backoff(attempt)
            logger.warning("%s; retrying in %.3g s", failure, delay)
            policy.sleep(delay)
            continue
        status = response.status_code
        if response.is_success or (outcome_unknown and status in done_on_retry):
            return response
        retryable = status in (429, 503) or (replay_safe and status >= 500)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if not retryable or attempt >= policy.attempts or (retry_after or 0.0) > policy.max_delay:
            raise error_from_response(response)
        delay = policy.backoff(attempt) if retry_after is None else retry_after
        logger.warning("%s answered %d; retrying in %.3g s", what, status, delay)
        policy.sleep(delay)
