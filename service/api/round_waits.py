"""How a contribution to a synchronous session, or a poll of its round, waits for the round to close.

A contributor waits on the event loop (``round_events.py``), never in a thread, up to
``OPTIM_ROUND_WAIT_SECONDS``; then it is answered ``202 Accepted`` with the round's ``Location``, whose GET
waits the same way. Every look at the round runs in a thread, and closes it if its timeout is due.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.api.dependencies import Service, caller_of
from service.api.round_events import wait_for
from service.sessions.service import RoundView

DUE_MARGIN_SECONDS = 0.01
"""A waiter whose round's timeout is due looks just after it, not just before."""


@dataclass(frozen=True)
class Joined:
    """A contribution whose answer is round ``round``'s, still to be waited for or read."""

    round: int
    worker: str
    request_hash: str


def round_location(session_id: str, step: int) -> str:
    return f"/v1/sessions/{session_id}/rounds/{step}"


async def round_answer(
    request: Request,
    *,
    session_id: str,
    step: int,
    answer_as: str,
    worker: str | None = None,
    request_hash: str = "",
) -> Response:
    """The round's answer once it closes, waiting for it up to the server's round wait; else 202."""
    service: Service = request.app.state.service
    caller = caller_of(request)
    events = service.round_events
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.settings.round_wait_seconds
    with events.watching(session_id, step) as closed:
        while True:
            closed.clear()
            view = await run_in_threadpool(
                service.sessions.round,
                caller=caller,
                session_id=session_id,
                step=step,
                worker=worker,
                request_hash=request_hash,
            )
            if view.closed:
                return await run_in_threadpool(_closed_answer, service, view, answer_as)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return _pending_answer(service, session_id, view)
            wait = min(remaining, events.poll_seconds)
            if view.due_in is not None:
                wait = min(wait, view.due_in + DUE_MARGIN_SECONDS)
            await wait_for(closed, wait)


def _closed_answer(service: Service, view: RoundView, answer_as: str) -> Response:
    assert view.params is not None
    return service.answer(
        {"step": view.step, "params": view.params, "metrics": view.metrics},
        media_type=answer_as,
        root="params",
        version=view.version,
    )


def _pending_answer(service: Service, session_id: str, view: RoundView) -> Response:
    body: dict[str, Any] = {
        "round": view.round,
        "contributions": view.contributions,
        "workers": view.workers,
        "closed": False,
    }
    return service.answer(body, status=202, Location=round_location(session_id, view.round))
