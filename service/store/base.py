"""What the service needs from storage, independent of the engine."""

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from service.safetensors_format import Buffers


@dataclass(frozen=True)
class SessionMeta:
    """A session without its arrays. ``version`` grows with every change; it is the ETag."""

    id: str
    optimizer: str
    dtype: str
    step: int
    version: int
    param_groups: list[dict[str, Any]]
    shapes: dict[str, list[int]]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class IdempotencyRecord:
    """What a step with an Idempotency-Key answered, to answer its retries the same."""

    key: str
    request_hash: str
    step: int
    version: int
    params: bytes
    """The response's params as a packed blob; empty once the response is no longer kept."""


class LockedSession(Protocol):
    """A session held exclusively until the surrounding transaction ends."""

    meta: SessionMeta
    arrays: bytes | None
    """The stored arrays, or None when the caller said it holds this version already."""

    def idempotency_record(self, key: str) -> IdempotencyRecord | None: ...

    def read_arrays(self) -> bytes:
        """The stored arrays, read now (for when ``arrays`` was skipped)."""
        ...

    def save(self, meta: SessionMeta, arrays: Buffers | None, record: IdempotencyRecord | None = None) -> None:
        """Store the new meta (and arrays, when given) at commit; ``record`` answers later retries.

        ``arrays`` is a blob as its pieces, which may view live arrays: they are written before this returns.
        """
        ...


class SessionStore(Protocol):
    def ping(self) -> None:
        """Raise if storage does not answer."""
        ...

    def create(self, meta: SessionMeta, arrays: Buffers) -> None: ...

    def get(self, session_id: str, *, with_arrays: bool) -> tuple[SessionMeta, bytes | None] | None: ...

    def list(self, *, limit: int, after: tuple[datetime, str] | None) -> list[SessionMeta]:
        """Sessions in (created_at, id) order, after the given position."""
        ...

    def delete(self, session_id: str, *, expected_version: int | None = None) -> bool:
        """Delete; False when absent. With ``expected_version``, only at that version (else raises)."""
        ...

    def locked(
        self, session_id: str, *, need_arrays: bool, known_version: int | None = None
    ) -> AbstractContextManager[LockedSession]:
        """Hold the session for a read-modify-write; raises SessionNotFound when absent.

        The arrays are read when ``need_arrays``, unless the caller already holds ``known_version``.

        Steps on one session are serialised by this lock, which the database enforces,
        so it holds across processes and replicas.
        """
        ...

    def close(self) -> None: ...
