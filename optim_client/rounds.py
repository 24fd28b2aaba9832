"""Waiting for a synchronous round to close: a contribution answered ``202 Accepted`` follows its ``Location``.

``GET /v1/sessions/{id}/rounds/{s}`` waits on the service while the round is open (up to
``OPTIM_ROUND_WAIT_SECONDS``), then answers 202 again, or 200 with the answer every contributor gets.
So the client just asks again, until ``Client.round_timeout`` has passed.
"""

from __future__ import annotations

import time

from optim_client.client import Client, Reply
from optim_client.errors import OptimClientError, RoundTimeoutError


def round_answer(client: Client, accepted: Reply) -> Reply:
    """The answer of the round that ``accepted`` (a 202) stored a contribution in: its ``Location`` asked
    until it answers 200. ``RoundTimeoutError`` once the round has been waited for ``client.round_timeout``
    seconds (checked between the service's waits, so it may be overrun by one of them)."""
    deadline = None if client.round_timeout is None else time.monotonic() + client.round_timeout
    reply, location = accepted, accepted.location
    while reply.status == 202:
        if location is None:
            unfollowable = OptimClientError("202 Accepted without a Location: the round cannot be followed")
            unfollowable.maybe_applied = True
            raise unfollowable
        if deadline is not None and time.monotonic() >= deadline:
            raise RoundTimeoutError(
                f"Round {_number(reply, 'round')} is still open after {client.round_timeout:g} s, with "
                f"{_number(reply, 'contributions')} of {_number(reply, 'workers')} contributions; the contribution "
                "is stored and is applied when the round closes",
                round=_number(reply, "round"),
                contributions=_number(reply, "contributions"),
                workers=_number(reply, "workers"),
            )
        reply = client.call("GET", location, arrays_back=True, response_root="params")
        location = reply.location or location
    return reply


def _number(reply: Reply, key: str) -> int | None:
    value = reply.document.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
