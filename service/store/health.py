"""Whether the store's writes are failing: readiness reports it, and a successful write clears it."""

import threading
import time
from dataclasses import dataclass

from service.store.errors import StorageFailure


@dataclass(frozen=True)
class WriteFailure:
    reason: str
    since: float
    """``time.monotonic()`` of the first failure in a row."""
    size: int
    """Bytes of the largest write that failed in this row: a probe that proves writes work again writes as many."""


class WriteHealth:
    """The last outcome of the store's writes, shared by the threads of a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failure: WriteFailure | None = None

    def failed(self, failure: StorageFailure, *, size: int = 0) -> None:
        with self._lock:
            previous = self._failure
            self._failure = WriteFailure(
                reason=f"{type(failure).__name__}: {failure}",
                since=previous.since if previous is not None else time.monotonic(),
                size=max(size, previous.size if previous is not None else 0),
            )

    def succeeded(self) -> None:
        if self._failure is not None:
            with self._lock:
                self._failure = None

    @property
    def failure(self) -> WriteFailure | None:
        """Why writes are failing, or None when the last one succeeded."""
        return self._failure
