"""Running a call in a thread, for tests that do something else while it waits."""

import threading
from collections.abc import Callable
from typing import Any


def in_a_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """``work`` running in a thread, started; the list gets what it returns, or the exception it raises."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome
