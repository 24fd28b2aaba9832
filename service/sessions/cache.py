"""Optimizers kept in memory between requests, keyed by session and version.

An entry is used only when the stored version, read under the session's lock,
equals the entry's version; otherwise the session is restored from storage. A
mutating request takes its entry out for the duration, so a failed request
cannot leave a half-changed optimizer behind.
"""

import threading
from collections import OrderedDict
from typing import Any

from optim_core import Optimizer


def _size(optimizer: Optimizer[Any, Any]) -> int:
    return sum(value.nbytes for value in optimizer.params.values()) * 4


class OptimizerCache:
    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._entries: OrderedDict[str, tuple[int, Optimizer[Any, Any], int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def version(self, session_id: str) -> int | None:
        with self._lock:
            entry = self._entries.get(session_id)
            return entry[0] if entry else None

    def take(self, session_id: str, version: int) -> Optimizer[Any, Any] | None:
        """Remove and return the entry when it is at ``version``; drop it if it is not."""
        with self._lock:
            entry = self._entries.pop(session_id, None)
            if entry is None:
                return None
            self._used -= entry[2]
            return entry[1] if entry[0] == version else None

    def put(self, session_id: str, version: int, optimizer: Optimizer[Any, Any]) -> None:
        size = _size(optimizer)
        if size > self._capacity:
            return
        with self._lock:
            previous = self._entries.pop(session_id, None)
            if previous is not None:
                self._used -= previous[2]
            self._entries[session_id] = (version, optimizer, size)
            self._used += size
            while self._used > self._capacity:
                _, (_, _, evicted) = self._entries.popitem(last=False)
                self._used -= evicted

    def discard(self, session_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(session_id, None)
            if entry is not None:
                self._used -= entry[2]
