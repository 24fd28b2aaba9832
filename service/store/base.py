"""What the service needs from storage, independent of the engine."""

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from service.buffers import Buffers
from service.store.health import WriteHealth
from service.store.tables import DEFAULT_TENANT


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
    tenant: str = DEFAULT_TENANT
    stored_bytes: int = 0
    """The bytes of its arrays (params and optimizer state): what the tenant's byte quota counts."""
    aggregation: dict[str, Any] | None = None
    """How a data-parallel session takes its workers' contributions (``sessions/aggregation.py``); None for
    an ordinary session, each of whose step requests is a step."""
    clip_grad_norm: dict[str, Any] | None = None
    """``{"max_norm", "norm_type"}``: each step's gradients are clipped by their global norm first."""
    nonfinite: str = "reject"
    """What a step with a non-finite gradient does: "reject" (422) or "skip" (answered, not applied)."""


@dataclass(frozen=True)
class Quotas:
    """What one tenant may hold; ``None`` for no limit."""

    max_sessions: int | None = None
    max_bytes: int | None = None
    max_params: int | None = None


@dataclass(frozen=True)
class TenantUsage:
    sessions: int
    stored_bytes: int


@dataclass(frozen=True)
class CreationRecord:
    """The session that a creation with an Idempotency-Key made, to answer its retries."""

    key: str
    request_hash: str
    session_id: str


@dataclass(frozen=True)
class IdempotencyRecord:
    """What a step with an Idempotency-Key answered, to answer its retries the same."""

    key: str
    request_hash: str
    step: int
    version: int
    params: bytes
    """The response's params as a packed blob; empty once the response is no longer kept."""


@dataclass(frozen=True)
class RecordsKept:
    """What a session keeps of its Idempotency-Key records once a new one is stored: the newest ``keys``
    records, and the first responses of the newest ``responses`` of them (older ones keep their key)."""

    keys: int
    responses: int


@dataclass(frozen=True)
class StepMetrics:
    """One step's telemetry, as its session's history keeps it."""

    step: int
    recorded_at: datetime
    document: str
    """A JSON object: the step's measures and the client's loss."""


@dataclass(frozen=True)
class MetricsKept:
    """What a session keeps of its step metrics: every one of its last ``recent`` steps, and every
    ``every``-th step before them."""

    recent: int
    every: int


@dataclass(frozen=True)
class Contribution:
    """One worker's contribution to a synchronous session's open round (the session's ``step``)."""

    worker: str
    weight: float
    loss: float | None
    request_hash: str
    created_at: datetime
    grads: bytes = b""
    """A packed blob of the gradients, cast to the params' dtype; empty when read without them."""


@dataclass(frozen=True)
class RoundRecord:
    """A closed round of a synchronous session: the step it gathered, the version its step made, who
    contributed (``worker``, ``weight``, ``request_hash`` each), and the answer's params as a packed blob
    (empty when not copied, or no longer kept)."""

    step: int
    version: int
    opened_at: datetime
    closed_at: datetime
    contributors: list[dict[str, Any]]
    params: bytes


@dataclass(frozen=True)
class RoundsKept:
    """What a synchronous session keeps of its closed rounds once one more closes: the newest ``rounds``, and
    the params of the newest ``responses`` of them."""

    rounds: int
    responses: int


class LockedSession(Protocol):
    """A session held for a read-modify-write until the ``locked`` block ends (its changes commit then)."""

    meta: SessionMeta
    record: IdempotencyRecord | None
    """The record of the Idempotency-Key the block was opened with, if the session has one (None also
    when the store trusted the caller's cached version and did not look: a conflict then says so)."""
    trusted: bool
    """Whether the store trusted the caller's cached version: ``meta`` was not read, nor the record."""

    def read_arrays(self) -> bytes:
        """The stored arrays, read now."""
        ...

    def save(
        self,
        meta: SessionMeta,
        arrays: Buffers | None,
        record: IdempotencyRecord | None = None,
        kept: RecordsKept | None = None,
        *,
        quotas: Quotas | None = None,
        metrics: StepMetrics | None = None,
        metrics_kept: MetricsKept | None = None,
    ) -> None:
        """Store the new meta (and arrays, when given) at commit; ``record`` answers later retries, and the
        session's older records are trimmed to ``kept``. ``metrics`` joins the session's history, which is
        thinned to ``metrics_kept``. When ``meta.stored_bytes`` grows, the commit fails
        with ``QuotaExceeded`` if the tenant would hold more than ``quotas`` allow.

        ``arrays`` is a blob as its pieces, which may view live arrays: they are written before this returns.
        """
        ...

    def contributions(self, step: int, *, with_grads: bool) -> list[Contribution]:
        """The contributions stored for the session's round ``step``, by worker."""
        ...

    def contribute(self, step: int, contribution: Contribution) -> None:
        """Store ``contribution`` to round ``step`` at commit."""
        ...

    def close_round(self, record: RoundRecord, kept: RoundsKept) -> None:
        """At commit: remember ``record``, forget the round's contributions, trim older rounds to ``kept``,
        and tell the waiters of other servers (after ``save``, in the same unit of work)."""
        ...


class SessionStore(Protocol):
    """Session storage. Raises ``SessionMissing`` and ``VersionMismatch`` for what callers asked of a
    session, and ``StorageFailure`` when storage itself fails (errors.py); never an HTTP error."""

    health: WriteHealth

    def ping(self, *, timeout: float) -> None:
        """Raise if storage does not answer a read of the sessions table within ``timeout`` s."""
        ...

    def probe_writes(self, *, timeout: float) -> None:
        """Commit a small write within ``timeout`` s, or raise."""
        ...

    def create(
        self,
        meta: SessionMeta,
        arrays: Buffers,
        *,
        quotas: Quotas | None = None,
        creation: CreationRecord | None = None,
    ) -> None:
        """Store a new session, counted in its tenant's usage: ``QuotaExceeded`` if ``quotas`` do not allow
        it; ``creation`` answers retries of the request (``KeyInFlight`` while another holds its key)."""
        ...

    def creation(self, tenant: str, key: str) -> CreationRecord | None:
        """The record of the tenant's creation with ``key``, if one was committed."""
        ...

    def usage(self, tenant: str) -> TenantUsage: ...

    def session_count(self) -> int:
        """Sessions of every tenant."""
        ...

    def get(self, session_id: str, *, with_arrays: bool) -> tuple[SessionMeta, bytes | None] | None: ...

    def list(self, *, limit: int, after: tuple[datetime, str] | None, tenant: str | None) -> list[SessionMeta]:
        """The tenant's sessions (every tenant's for None) in (created_at, id) order, after the given position."""
        ...

    def delete(self, session_id: str, *, expected_version: int | None = None) -> bool:
        """Delete, with its history; ``SessionMissing`` when absent, ``VersionMismatch`` when not at
        ``expected_version``."""
        ...

    def metrics(self, session_id: str, *, after_step: int, limit: int) -> Sequence[StepMetrics]:
        """The session's kept step metrics after ``after_step``, oldest first, at most ``limit`` of them."""
        ...

    def locked(
        self, session_id: str, *, idempotency_key: str | None = None, cached_version: int | None = None
    ) -> AbstractContextManager[LockedSession]:
        """Hold the session for a read-modify-write; ``SessionMissing`` when absent, ``KeyInFlight`` when
        another request holds ``idempotency_key`` for it.

        Writes of one session are serialised by this, across processes and replicas. What
        ``save`` prepared is committed when the block ends without an error. A caller that holds
        ``cached_version`` of the session lets the store skip reading it where the store can check
        at commit instead; ``StaleAssumption`` then means: run the unit of work again, without it.
        """
        ...

    def round(self, session_id: str, step: int) -> RoundRecord | None:
        """The session's closed round ``step``, if it is remembered."""
        ...

    def open_round(self, session_id: str, step: int) -> Sequence[Contribution]:
        """The contributions stored so far to the session's round ``step``, without their gradients."""
        ...

    def forget_records(self, *, created_before: datetime, total_response_bytes: int) -> None:
        """Forget Idempotency-Key records older than ``created_before``, and the oldest first responses
        beyond ``total_response_bytes`` over all sessions."""
        ...

    def close(self) -> None: ...
