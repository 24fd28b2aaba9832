"""How much of their Idempotency-Key records sessions keep, and for how long.

A step sent with an Idempotency-Key leaves a record: the key, what identifies the
request, the step it was applied as, and a copy of its response's params (unless they
are larger than ``copy_max_bytes``: then the session's own params answer a retry while
no other step has changed them). Records are bounded per session (those of the newest
``keys`` versions, and copies of the newest responses that fit in ``response_bytes``, the newest always)
and over all sessions (records older than ``ttl``, and the oldest copies beyond
``total_response_bytes``, are forgotten by a sweep). A forgotten copy leaves its key:
a retry is then refused (409), never applied again.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from service.sessions.arrays_blob import pack
from service.store import IdempotencyRecord, RecordsKept


@dataclass(frozen=True)
class Retention:
    keys: int = 1_000_000
    response_bytes: int = 64 << 20
    copy_max_bytes: int = 1 << 20
    ttl: timedelta = timedelta(hours=24)
    total_response_bytes: int = 1 << 30

    def record(
        self, *, key: str, request_hash: str, step: int, version: int, params: dict[str, np.ndarray]
    ) -> IdempotencyRecord:
        """The record of a step applied with ``key``, which answered ``params`` (copied if small enough)."""
        copied = sum(array.nbytes for array in params.values()) <= self.copy_max_bytes
        return IdempotencyRecord(
            key=key, request_hash=request_hash, step=step, version=version, params=pack(params) if copied else b""
        )

    def kept_with(self, record: IdempotencyRecord) -> RecordsKept:
        """What a session keeps once ``record`` is its newest: keys, and copies of responses."""
        responses = max(1, self.response_bytes // max(1, len(record.params)))
        return RecordsKept(keys=self.keys, responses=min(responses, self.keys))

    def forgotten_before(self, now: datetime) -> datetime:
        """Records created before this are forgotten."""
        return now - self.ttl
