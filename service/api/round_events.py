"""Waiting for a synchronous round to close, on the event loop, without holding a thread.

A waiter watches ``(session, round)`` before it reads the round, so that a close announced between its read
and its wait still wakes it. Closes are announced by this process's ``Sessions`` (from worker threads) and,
on PostgreSQL, by every replica's through ``LISTEN`` (``store/round_notices.py``, from its own thread).
A waiter also looks again every ``poll_seconds``: on SQLite that is how it learns of a close made by
another server process on the same machine; on PostgreSQL it is only a safety net.
"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class RoundEvents:
    def __init__(self, *, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: dict[tuple[str, int], set[asyncio.Event]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the waiters run on (the app's, in its lifespan)."""
        self._loop = loop

    @contextmanager
    def watching(self, session_id: str, step: int) -> Iterator[asyncio.Event]:
        """An event set when round ``step`` of the session is announced closed, while the block runs."""
        key = (session_id, step)
        event = asyncio.Event()
        self._watchers.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[key]

    def closed(self, session_id: str, step: int) -> None:
        """Announce that the round closed; callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(self._wake, session_id, step)

    def _wake(self, session_id: str, step: int) -> None:
        for event in self._watchers.get((session_id, step), ()):
            event.set()


async def wait_for(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` s have passed, whichever is first."""
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
