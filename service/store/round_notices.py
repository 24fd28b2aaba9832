"""PostgreSQL: hear of the rounds any replica closes. The close's transaction sends ``NOTIFY optim_rounds``
(``rounds.py``); this listens on a connection of its own, in a thread of its own, and tells ``on_closed``.
A lost connection is opened again after a second; meanwhile the waiters' own polls are the safety net."""

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from service.store.rounds import ROUNDS_CHANNEL

log = logging.getLogger(__name__)
RECONNECT_SECONDS = 1.0
STOP_CHECK_SECONDS = 0.5
"""How often the listener looks whether it should stop, between notifications."""


def libpq_conninfo(database_url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+psycopg://...``) as libpq takes it."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class RoundNotices:
    def __init__(self, database_url: str, on_closed: Callable[[str, int], None]) -> None:
        self._conninfo = libpq_conninfo(database_url)
        self._on_closed = on_closed
        self._stop = threading.Event()
        self.listening = threading.Event()
        """Set while a LISTEN is in place (for tests and readiness)."""
        self._thread = threading.Thread(target=self._run, name="round-notices", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_CHECK_SECONDS * 4)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as error:
                log.warning(
                    "listening for closed rounds failed (%s); listening again in %.0f s", error, RECONNECT_SECONDS
                )
            self.listening.clear()
            self._stop.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"LISTEN {ROUNDS_CHANNEL}")
            self.listening.set()
            while not self._stop.is_set():
                for notice in connection.notifies(timeout=STOP_CHECK_SECONDS):
                    session_id, _, step = notice.payload.partition(" ")
                    if step.isdigit():
                        self._on_closed(session_id, int(step))
