"""Synchronous rounds: a worker's contribution joins its session's open round, and the contribution (or
the poll) that completes the round applies its one step, to the weighted mean of the contributions, in the
same unit of work. Everything here runs while the session is held, except ``RoundView``'s reads.

A round is the session's current step ``s``. It closes when ``workers`` contributions are in, or once
``timeout_s`` has passed since its first with at least ``min_workers``; its answer (``{"step": s + 1,
"params": ...}``) is then what every contributor gets, remembered as a step's answer is for an
Idempotency-Key (``idempotency.py``).
"""

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from optim_core import OptimCoreError, Optimizer
from optim_core.aggregation import weighted_mean
from optim_core.checks import all_finite
from service.sessions.aggregation import Contribution as ContributionFields
from service.sessions.arrays_blob import array_bytes, arrays_finite, pack, pack_buffers, unpack
from service.sessions.errors import ContributionChanged, InvalidRequest, RoundMovedOn
from service.sessions.gradient_settings import prepared_grads
from service.sessions.idempotency import Retention
from service.sessions.lr_scheduler import advance_optimizer
from service.sessions.optimizers import core_error, summary_groups
from service.sessions.step_metrics import finite_or_null, kept_metrics, step_metrics
from service.store import Contribution, LockedSession, MetricsKept, Quotas, RoundRecord, RoundsKept, SessionMeta

ROUNDS_KEPT = 1000
"""The closed rounds a session remembers, to answer their contributors' retries and polls."""


@dataclass(frozen=True)
class Closed:
    """A round closed in this unit of work: its step's outcome, the optimizer it was applied with."""

    step: int
    version: int
    params: dict[str, np.ndarray]
    metrics: dict[str, Any]
    optimizer: Optimizer[Any, Any]
    meta: SessionMeta
    contributors: list[dict[str, Any]]


def casted_grads(
    grads: Mapping[str, np.ndarray], *, shapes: Mapping[str, list[int]], dtype: str
) -> dict[str, np.ndarray]:
    """The gradients cast to the params' dtype, each checked as a step checks it: a known param, its shape,
    finite after the cast; at least one, so that every round has a gradient to step with."""
    if not grads:
        raise InvalidRequest(("body", "grads"), "a contribution needs at least one gradient")
    casted = {}
    for name, grad in grads.items():
        loc = ("body", "grads", name)
        if name not in shapes:
            raise InvalidRequest(loc, f"unknown param {name!r}")
        if list(grad.shape) != shapes[name]:
            raise InvalidRequest(loc, f"gradient of shape {list(grad.shape)} for a param of shape {shapes[name]}")
        with np.errstate(over="ignore"):
            value = np.asarray(grad, dtype=dtype)
        if not all_finite(value):
            raise InvalidRequest(loc, f"gradient of {name!r} is not finite in {dtype} (inf, NaN, or out of range)")
        casted[name] = value
    return casted


def _seconds(since: datetime, until: datetime) -> float:
    return max(0.0, (until - since).total_seconds())


def due(aggregation: Mapping[str, Any], contributions: Sequence[Contribution], now: datetime) -> bool:
    """Whether a round with these contributions closes now."""
    if len(contributions) >= aggregation["workers"]:
        return True
    timeout: float | None = aggregation["timeout_s"]
    if timeout is None or len(contributions) < aggregation["min_workers"]:
        return False
    opened = min(contribution.created_at for contribution in contributions)
    return _seconds(opened, now) >= timeout


def seconds_until_due(
    aggregation: Mapping[str, Any], contributions: Sequence[Contribution], now: datetime
) -> float | None:
    """How long until the round's timeout closes it, if it has enough contributions to close by then."""
    timeout: float | None = aggregation["timeout_s"]
    if timeout is None or len(contributions) < aggregation["min_workers"]:
        return None
    opened = min(contribution.created_at for contribution in contributions)
    return max(0.0, timeout - _seconds(opened, now))


def _round_loss(contributions: list[Contribution]) -> float | None:
    """The weighted mean of the losses the contributors sent (those who sent one), in worker order."""
    sent = [(c.weight, c.loss) for c in sorted(contributions, key=lambda c: c.worker) if c.loss is not None]
    if not sent:
        return None
    total = 0.0
    for weight, loss in sent:
        total += weight * loss
    return total / sum(weight for weight, _ in sent)


class RoundCloser:
    """Closes a held session's round: one step of the weighted mean, its answer remembered, all in the unit of work."""

    def __init__(self, *, retention: Retention, metrics_kept: MetricsKept) -> None:
        self._retention = retention
        self._metrics_kept = metrics_kept

    def close(
        self,
        locked: LockedSession,
        contributions: list[Contribution],
        *,
        fresh: tuple[Contribution, dict[str, np.ndarray]] | None,
        optimizer: Optimizer[Any, Any],
        quotas: Quotas,
        now: datetime,
    ) -> Closed:
        """Apply the round's step to ``optimizer``: the stored ``contributions`` (with their gradients) and
        ``fresh``, the one this request brings (not stored: the round closes with it)."""
        meta = locked.meta
        dtypes = {name: np.dtype(meta.dtype) for name in meta.shapes}
        parts: list[tuple[str, float, Mapping[str, np.ndarray]]] = [
            (c.worker, c.weight, unpack(c.grads)[0]) for c in contributions
        ]
        everyone = list(contributions)
        if fresh is not None:
            parts.append((fresh[0].worker, fresh[0].weight, fresh[1]))
            everyone.append(fresh[0])
        mean = weighted_mean(parts, dtypes)
        prepared = prepared_grads(mean, dtype=meta.dtype, clip_settings=meta.clip_grad_norm, nonfinite="reject")
        try:
            telemetry = optimizer.measured_step(prepared.grads)
        except OptimCoreError as error:
            raise core_error(error, "body") from None
        state = optimizer.state_dict_arrays(copy=False)["state"]
        params = optimizer.params
        if not arrays_finite(params, state):
            raise InvalidRequest(
                ("body", "grads"),
                "this round's step would make params or optimizer state infinite or NaN (an overflow); "
                "it was not applied",
            )
        new_meta = replace(
            meta, step=meta.step + 1, version=meta.version + 1, updated_at=now, stored_bytes=array_bytes(params, state)
        )
        schedule = advance_optimizer(meta.lr_scheduler, optimizer)
        if schedule is not None:
            new_meta = replace(new_meta, param_groups=summary_groups(optimizer), lr_scheduler=schedule)
        opened = min(c.created_at for c in everyone)
        metrics = step_metrics(telemetry, _round_loss(everyone))
        if prepared.clip is not None:
            metrics["clip"] = finite_or_null(prepared.clip)
        metrics["round"] = {
            "contributors": len(everyone),
            "total_weight": sum(c.weight for c in sorted(everyone, key=lambda c: c.worker)),
            "wait_s": _seconds(opened, now),
        }
        copied = sum(array.nbytes for array in params.values()) <= self._retention.copy_max_bytes
        answer = pack(params) if copied else b""
        record = RoundRecord(
            step=meta.step,
            version=new_meta.version,
            opened_at=opened,
            closed_at=now,
            contributors=[
                {"worker": c.worker, "weight": c.weight, "request_hash": c.request_hash}
                for c in sorted(everyone, key=lambda c: c.worker)
            ],
            params=answer,
        )
        responses = max(1, self._retention.response_bytes // max(1, len(answer)))
        locked.save(
            new_meta,
            pack_buffers(params, state),
            quotas=quotas,
            metrics=kept_metrics(new_meta.step, now, metrics),
            metrics_kept=self._metrics_kept,
        )
        locked.close_round(record, RoundsKept(rounds=ROUNDS_KEPT, responses=min(responses, ROUNDS_KEPT)))
        return Closed(
            step=new_meta.step,
            version=new_meta.version,
            params=params,
            metrics=metrics,
            optimizer=optimizer,
            meta=new_meta,
            contributors=record.contributors,
        )


def joined(contributions: list[Contribution], fields: ContributionFields, request_hash: str) -> Contribution | None:
    """The worker's contribution already in the round, if any: a retry with the same request (another
    request is ``ContributionChanged``)."""
    for contribution in contributions:
        if contribution.worker == fields.worker:
            if contribution.request_hash != request_hash:
                raise ContributionChanged(
                    f"worker {fields.worker!r} already contributed to round {fields.based_on_step} with a different "
                    "request; a retry must send the same body"
                )
            return contribution
    return None


def moved_on(fields: ContributionFields, current_step: int, *, reason: str) -> RoundMovedOn:
    return RoundMovedOn(
        f"the contribution of worker {fields.worker!r} is based on step {fields.based_on_step}, and {reason}; "
        f"the session is at step {current_step}: GET its params, recompute the gradient, and contribute to "
        f"round {current_step}",
        current_step=current_step,
    )


ROUND_ANSWERS_REMEMBERED = 64
"""Sessions whose newest closed round's answer a process keeps in memory, the most recent first: its waiting
contributors read it there rather than from storage (a session's params and state, or the round's copy). Only
the newest round of each: it answers what the session's own params would, and no longer."""
ROUND_ANSWER_MAX_BYTES = 256 << 20


@dataclass(frozen=True)
class RememberedRound:
    """A round this process closed: the session as the round left it, who contributed, and the answer's
    params (a copy) and metrics."""

    meta: SessionMeta
    contributors: list[dict[str, Any]]
    params: dict[str, np.ndarray]
    metrics: dict[str, Any] | None


class RecentRounds:
    """The answers of the rounds this process closed most recently (thread-safe)."""

    def __init__(self, *, kept: int = ROUND_ANSWERS_REMEMBERED, max_bytes: int = ROUND_ANSWER_MAX_BYTES) -> None:
        self._kept = kept
        self._max_bytes = max_bytes
        self._rounds: OrderedDict[str, RememberedRound] = OrderedDict()
        self._lock = threading.Lock()

    def remember(
        self,
        meta: SessionMeta,
        contributors: list[dict[str, Any]],
        params: Mapping[str, np.ndarray],
        metrics: dict[str, Any] | None,
    ) -> None:
        """Round ``meta.step - 1`` closed, answering ``params`` (copied now: they may view an optimizer)."""
        if sum(array.nbytes for array in params.values()) > self._max_bytes:
            return
        remembered = RememberedRound(
            meta, contributors, {name: array.copy() for name, array in params.items()}, metrics
        )
        with self._lock:
            self._rounds[meta.id] = remembered
            self._rounds.move_to_end(meta.id)
            while len(self._rounds) > self._kept:
                self._rounds.popitem(last=False)

    def get(self, session_id: str, step: int) -> RememberedRound | None:
        with self._lock:
            remembered = self._rounds.get(session_id)
        return remembered if remembered is not None and remembered.meta.step == step + 1 else None

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._rounds.pop(session_id, None)


def check_contributor(
    contributors: list[dict[str, Any]], *, worker: str, request_hash: str, step: int, current_step: int
) -> None:
    """That ``worker`` contributed to the closed round ``step`` with this request: ``RoundMovedOn`` if it did
    not contribute, ``ContributionChanged`` if it did with another."""
    entry = next((entry for entry in contributors if entry["worker"] == worker), None)
    if entry is None:
        raise moved_on(
            ContributionFields(worker=worker, based_on_step=step), current_step, reason="that round closed without it"
        )
    if entry["request_hash"] != request_hash:
        raise ContributionChanged(
            f"worker {worker!r} contributed to round {step} with a different request; a retry must send the same body"
        )
