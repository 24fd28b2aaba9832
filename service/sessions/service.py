"""Sessions: create, step, change and snapshot optimizers kept in storage, each call a unit of work.

A unit of work holds the session (``store.locked``), reads it (or trusts the cached
optimizer when the store can check at commit), computes with optim_core, saves, and
commits; every check runs before anything changes. Nothing here knows HTTP: requests
arrive as keyword arguments holding numpy arrays, refusals leave as ``errors.py``'s
classes, and a step's outcome is yielded to the caller, who renders it.
"""

import base64
import binascii
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from optim_core import ALGORITHMS, OptimCoreError, Optimizer
from optim_core.aggregation import staleness_scaled
from service.buffers import Buffers
from service.sessions.aggregation import Contribution as ContributionFields
from service.sessions.aggregation import checked_aggregation, checked_contribution
from service.sessions.arrays_blob import array_bytes, arrays_finite, pack, pack_buffers, unpack
from service.sessions.cache import OptimizerCache
from service.sessions.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    IdempotentResponseExpired,
    InvalidRequest,
    NotYours,
    PreconditionFailed,
    QuotaExceeded,
    RoundAnswerExpired,
    RoundNotFound,
    SessionNotFound,
)
from service.sessions.gradient_settings import checked_clip_grad_norm, checked_nonfinite, prepared_grads
from service.sessions.idempotency import Retention
from service.sessions.lr_scheduler import advance_optimizer, last_lr, restored, started, with_state_dict
from service.sessions.observer import Observer, Unobserved
from service.sessions.optimizers import build_optimizer, core_error, summary_groups
from service.sessions.rounds import (
    Closed,
    RecentRounds,
    RoundCloser,
    casted_grads,
    check_contributor,
    due,
    joined,
    moved_on,
    seconds_until_due,
)
from service.sessions.sign_grads import sign_grads_cast
from service.sessions.step_metrics import (
    MAX_METRICS_PAGE,
    finite_or_null,
    history_item,
    kept_metrics,
    replayed_metrics,
    step_metrics,
)
from service.store import (
    Contribution,
    CreationRecord,
    IdempotencyRecord,
    KeyInFlight,
    LockedSession,
    MetricsKept,
    RoundRecord,
    SessionMeta,
    SessionMissing,
    SessionStore,
    StaleAssumption,
    StorageUnavailable,
    TenantUsage,
    VersionMismatch,
)
from service.store import QuotaExceeded as QuotaGuardFailed
from service.tenancy.callers import Caller

MAX_NAME_LENGTH = 256
PARAM_NAME = re.compile(rf"[^\x00-\x1f\x7f-\x9f]{{1,{MAX_NAME_LENGTH}}}")
"""A param name: 1 to ``MAX_NAME_LENGTH`` characters, none of them a control character (which would garble
messages and logs). A regular expression, so that the OpenAPI document states the same rule."""
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What ids this service issues look like; anything else names no session, without asking storage."""

Versions = frozenset[int] | None
"""The versions a request may change (If-Match); None for any."""


@dataclass(frozen=True)
class StepOutcome:
    """What a step answers: the step it was applied as, the version it made, and the params, which
    view the optimizer's memory until the ``step`` block ends."""

    step: int
    version: int
    params: dict[str, np.ndarray]
    metrics: dict[str, Any] | None
    """The step's telemetry (``step_metrics.py``); None for a replay whose step the history no longer keeps."""
    replayed: bool = False
    round: int | None = None
    """Of a synchronous session's contribution: the round it joined."""
    pending: bool = False
    """The answer is not in this outcome: it is round ``round``'s (``Sessions.round``), still open or closed before."""
    staleness: int | None = None
    """Of an asynchronous session's step: the staleness it was applied with."""
    closed: Closed | None = None
    """Of a contribution that closed its round: the round's close."""
    skipped: bool = False
    """A step of non-finite gradients on a session whose ``nonfinite`` is "skip": answered, not applied."""


@dataclass(frozen=True)
class RoundView:
    """A synchronous round as a contributor or a poll finds it: closed, with its answer (``params`` from
    storage, a copy); or open, with its progress."""

    round: int
    closed: bool
    step: int = 0
    version: int = 0
    params: dict[str, np.ndarray] | None = None
    metrics: dict[str, Any] | None = None
    contributions: int = 0
    workers: int = 0
    due_in: float | None = None
    """Open: the seconds until its timeout closes it, if it has the contributions to close by then."""


def _require_well_formed(session_id: str) -> None:
    if not SESSION_ID.fullmatch(session_id):
        raise SessionNotFound(f"no session {session_id!r}")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _require_match(expected: Versions, version: int) -> None:
    if expected is not None and version not in expected:
        raise PreconditionFailed(f"the session is at version {version}, which If-Match does not name")


def _packed(optimizer: Optimizer[Any, Any]) -> Buffers:
    """The optimizer's arrays as a blob's pieces, viewing its memory: store them before it changes."""
    return pack_buffers(optimizer.params, optimizer.state_dict_arrays(copy=False)["state"])


def _check_access(meta: SessionMeta, caller: Caller, *, summary_only: bool = False) -> None:
    """The session is the caller's tenant's; an admin key may also read other tenants' summaries."""
    if meta.tenant == caller.tenant:
        return
    if not caller.admin:
        raise SessionNotFound(f"no session {meta.id!r}")
    if not summary_only:
        raise NotYours(
            f"session {meta.id!r} belongs to tenant {meta.tenant!r}: an admin key lists every tenant's sessions "
            "and reads their summaries, and changes or reads the arrays of its own tenant's only"
        )


def _torch_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary groups (names) as state_dict groups (indices, and names as param_names)."""
    torch_groups, index = [], 0
    for group in groups:
        names = list(group["params"])
        torch_groups.append({**group, "params": list(range(index, index + len(names))), "param_names": names})
        index += len(names)
    return torch_groups


def _restore(meta: SessionMeta, arrays: bytes) -> Optimizer[Any, Any]:
    params, state = unpack(arrays)
    optimizer = build_optimizer(meta.optimizer, params, meta.param_groups, {})
    optimizer.load_state_dict({"state": state, "param_groups": _torch_groups(meta.param_groups)})
    return optimizer


def _merged_groups(
    meta: SessionMeta, hyperparameters: dict[str, Any] | None, param_groups: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The session's groups with the change applied, each validated like creation."""
    spec = ALGORITHMS[meta.optimizer]
    changes: list[tuple[tuple[str | int, ...], dict[str, Any]]]
    if hyperparameters is not None:
        changes = [(("body", "hyperparameters"), hyperparameters)] * len(meta.param_groups)
    else:
        assert param_groups is not None
        if len(param_groups) != len(meta.param_groups):
            raise InvalidRequest(
                ("body", "param_groups"),
                f"the session has {len(meta.param_groups)} param groups; give one entry for each",
            )
        changes = [(("body", "param_groups", index), entry) for index, entry in enumerate(param_groups)]
    merged = []
    for group, (loc, change) in zip(meta.param_groups, changes, strict=True):
        for key in change:
            if key == "params" and change[key] == group["params"]:
                continue
            if key not in spec.all_defaults:
                reason = "param groups cannot change" if key == "params" else "unknown hyperparameter"
                raise InvalidRequest((*loc, key), f"{reason}: {key!r}")
        candidate = {**group, **{key: value for key, value in change.items() if key != "params"}}
        try:
            hyperparams = spec.parse(candidate)
        except OptimCoreError as error:
            raise core_error(error, *loc) from None
        merged.append({**hyperparams.to_group(), "params": list(group["params"])})
    return merged


def _encode_cursor(meta: SessionMeta) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([meta.created_at.isoformat(), meta.id])).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, session_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not SESSION_ID.fullmatch(session_id):
            raise ValueError(session_id)
        return datetime.fromisoformat(created_at), session_id
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise InvalidRequest(("query", "cursor"), "not a cursor this service issued") from None


def _checked_groups(
    param_groups: list[dict[str, Any]] | None, params: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    if param_groups is None:
        return [{"params": list(params)}]
    seen: set[str] = set()
    for index, group in enumerate(param_groups):
        for name in group["params"]:
            loc = ("body", "param_groups", index, "params")
            if name not in params:
                raise InvalidRequest(loc, f"unknown param {name!r}")
            if name in seen:
                raise InvalidRequest(loc, f"param {name!r} is in more than one group")
            seen.add(name)
    missing = [name for name in params if name not in seen]
    if missing:
        raise InvalidRequest(("body", "param_groups"), f"params in no group: {missing}")
    return param_groups


class Sessions:
    """Session operations; each validates fully before it changes anything."""

    def __init__(
        self,
        *,
        store: SessionStore,
        cache: OptimizerCache,
        retention: Retention | None = None,
        metrics_kept: MetricsKept | None = None,
        observer: Observer | None = None,
        on_round_closed: Callable[[str, int], None] | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._metrics_kept = metrics_kept or MetricsKept(recent=1000, every=100)
        self._retention = retention or Retention()
        self._observer = observer or Unobserved()
        self._closer = RoundCloser(retention=self._retention, metrics_kept=self._metrics_kept)
        self._recent_rounds = RecentRounds()
        self.on_round_closed = on_round_closed or (lambda session_id, step: None)
        """Told, after the commit, of each round this process closed (the waiters of this process)."""

    def create(
        self,
        *,
        caller: Caller,
        optimizer: str,
        params: dict[str, np.ndarray],
        hyperparameters: dict[str, Any],
        param_groups: list[dict[str, Any]] | None,
        dtype: str,
        state_dict: dict[str, Any] | None,
        step: int,
        idempotency_key: str | None = None,
        request_hash: str = "",
        aggregation: object = None,
        clip_grad_norm: object = None,
        nonfinite: object = "reject",
        lr_scheduler: object = None,
    ) -> tuple[SessionMeta, dict[str, np.ndarray]]:
        """A new session of ``optimizer`` over ``params`` (already of ``dtype``), from ``state_dict`` if given,
        for the caller's tenant. With ``idempotency_key``, a retry answers the session the first one made."""
        if idempotency_key is not None:
            made = self._store.creation(caller.tenant, idempotency_key)
            if made is not None:
                return self._made_before(made, caller=caller, request_hash=request_hash)
        param_count = sum(array.size for array in params.values())
        max_params = caller.quotas.max_params
        if max_params is not None and param_count > max_params:
            raise QuotaExceeded(
                f"a session of tenant {caller.tenant!r} holds at most {max_params} params (max_params); "
                f"this one has {param_count}",
                quota="max_params",
                limit=max_params,
                usage=0,
                requested=param_count,
            )
        spec = ALGORITHMS[optimizer]
        for name in params:
            if not PARAM_NAME.fullmatch(name):
                raise InvalidRequest(
                    ("body", "params", name),
                    f"param names are 1 to {MAX_NAME_LENGTH} characters, none of them a control character",
                )
        for key in hyperparameters:
            if key not in spec.all_defaults:
                raise InvalidRequest(("body", "hyperparameters", key), f"unknown hyperparameter {key!r}")
        groups = _checked_groups(param_groups, params)
        aggregating = checked_aggregation(aggregation)
        clipping = checked_clip_grad_norm(clip_grad_norm)
        policy = checked_nonfinite(nonfinite)
        try:
            built = build_optimizer(optimizer, params, groups, hyperparameters)
        except OptimCoreError as error:
            in_body = error.loc[:1] in (("params",), ("param_groups",))
            raise core_error(error, *(("body",) if in_body else ("body", "hyperparameters"))) from None
        if state_dict is not None:
            try:
                built.load_state_dict(state_dict)
            except OptimCoreError as error:
                raise core_error(error, "body", "state_dict") from None
        schedule = None
        if isinstance(lr_scheduler, dict) and "config" in lr_scheduler:
            schedule = restored(lr_scheduler, built.param_groups)  # a checkpoint's: as it was
        elif lr_scheduler is not None:
            schedule, built.param_groups = started(lr_scheduler, built.param_groups)
        now = _now()
        meta = SessionMeta(
            id=secrets.token_urlsafe(18),
            optimizer=optimizer,
            dtype=dtype,
            step=step,
            version=1,
            param_groups=summary_groups(built),
            shapes={name: list(value.shape) for name, value in params.items()},
            created_at=now,
            updated_at=now,
            tenant=caller.tenant,
            stored_bytes=array_bytes(built.params, built.state_dict_arrays(copy=False)["state"]),
            aggregation=aggregating,
            clip_grad_norm=clipping,
            nonfinite=policy,
            lr_scheduler=schedule,
        )
        creation = None
        if idempotency_key is not None:
            creation = CreationRecord(key=idempotency_key, request_hash=request_hash, session_id=meta.id)
        try:
            self._store.create(meta, _packed(built), quotas=caller.quotas, creation=creation)
        except QuotaGuardFailed as refused:
            raise self._quota_refusal(refused, caller) from None
        except KeyInFlight:
            assert idempotency_key is not None
            made = self._store.creation(caller.tenant, idempotency_key)
            if made is None:
                raise IdempotencyKeyInFlight(
                    f"a request with Idempotency-Key {idempotency_key!r} is still being processed; retry later"
                ) from None
            return self._made_before(made, caller=caller, request_hash=request_hash)
        self._cache.put(meta.id, meta.version, built)
        return meta, built.params

    def _made_before(
        self, made: CreationRecord, *, caller: Caller, request_hash: str
    ) -> tuple[SessionMeta, dict[str, np.ndarray]]:
        """The answer to a retry of a creation: the session it made, as long as it is as it was made."""
        if made.request_hash != request_hash:
            raise IdempotencyKeyReused(f"Idempotency-Key {made.key!r} was used with a different request body")
        found = self._store.get(made.session_id, with_arrays=True)
        if found is None or found[1] is None:
            raise IdempotentResponseExpired(
                f"Idempotency-Key {made.key!r} created session {made.session_id!r}, which has been deleted since"
            )
        meta, arrays = found[0], found[1]
        if meta.version != 1:
            raise IdempotentResponseExpired(
                f"Idempotency-Key {made.key!r} created session {made.session_id!r}, which has changed since "
                f"(it is at step {meta.step}); GET /v1/sessions/{made.session_id} for its current state"
            )
        _check_access(meta, caller)
        self._observer.replayed(meta.step)
        return meta, unpack(arrays)[0]

    def _quota_refusal(self, refused: QuotaGuardFailed, caller: Caller) -> QuotaExceeded:
        """The quota a write was refused by, with its limit and the tenant's usage now."""
        usage = self._store.usage(caller.tenant)
        quotas = caller.quotas
        if refused.quota == "max_sessions":
            limit, used, unit = quotas.max_sessions, usage.sessions, "sessions"
        else:
            limit, used, unit = quotas.max_bytes, usage.stored_bytes, "bytes of arrays"
        assert limit is not None
        return QuotaExceeded(
            f"tenant {caller.tenant!r} holds {used} of its {limit} {unit} ({refused.quota}); this request needs "
            f"{refused.requested} more",
            quota=refused.quota,
            limit=limit,
            usage=used,
            requested=refused.requested,
        )

    def summary(self, *, caller: Caller, session_id: str) -> SessionMeta:
        _require_well_formed(session_id)
        found = self._store.get(session_id, with_arrays=False)
        if found is None:
            raise SessionNotFound(f"no session {session_id!r}")
        _check_access(found[0], caller, summary_only=True)
        return found[0]

    def page(self, *, caller: Caller, limit: int, cursor: str | None) -> tuple[list[SessionMeta], str | None]:
        """The caller's tenant's sessions (an admin key's: every tenant's), a page at a time."""
        after = _decode_cursor(cursor) if cursor else None
        metas = self._store.list(limit=limit + 1, after=after, tenant=None if caller.admin else caller.tenant)
        if len(metas) > limit:
            return metas[:limit], _encode_cursor(metas[limit - 1])
        return metas, None

    def patch(
        self,
        *,
        caller: Caller,
        session_id: str,
        hyperparameters: dict[str, Any] | None,
        param_groups: list[dict[str, Any]] | None,
        expected_versions: Versions,
        gradient_settings: Mapping[str, Any] | None = None,
    ) -> SessionMeta:
        """Change hyperparameters, of every group or group by group, and the gradient settings given
        (``clip_grad_norm``, ``nonfinite``); they apply from the next step."""
        _require_well_formed(session_id)
        changes: dict[str, Any] = {}
        settings = dict(gradient_settings or {})
        if "clip_grad_norm" in settings:
            changes["clip_grad_norm"] = checked_clip_grad_norm(settings["clip_grad_norm"])
        if "nonfinite" in settings:
            changes["nonfinite"] = checked_nonfinite(settings["nonfinite"])
        with self._held(session_id) as locked:
            _check_access(locked.meta, caller)
            groups = locked.meta.param_groups
            if hyperparameters is not None or param_groups is not None:
                groups = _merged_groups(locked.meta, hyperparameters, param_groups)
            if "lr_scheduler" in settings:
                changes["lr_scheduler"] = None
                if settings["lr_scheduler"] is not None:
                    changes["lr_scheduler"], groups = started(settings["lr_scheduler"], groups)
            # After the body is checked: a malformed body is 422 whatever If-Match says.
            _require_match(expected_versions, locked.meta.version)
            meta = replace(
                locked.meta, param_groups=groups, version=locked.meta.version + 1, updated_at=_now(), **changes
            )
            locked.save(meta, None)
        optimizer = self._cache.take(session_id, meta.version - 1)
        if optimizer is not None:
            optimizer.param_groups = [dict(group) for group in groups]
            self._cache.put(session_id, meta.version, optimizer)
        return meta

    def delete(self, *, caller: Caller, session_id: str, expected_versions: Versions) -> None:
        _require_well_formed(session_id)
        meta = self.summary(caller=caller, session_id=session_id)
        _check_access(meta, caller)
        expected = None
        if expected_versions is not None:
            expected = meta.version
            _require_match(expected_versions, expected)
        self._cache.discard(session_id)
        self._recent_rounds.forget(session_id)
        try:
            self._store.delete(session_id, expected_version=expected)
        except SessionMissing:
            raise SessionNotFound(f"no session {session_id!r}") from None
        except VersionMismatch:
            raise PreconditionFailed("the session has changed since If-Match was checked") from None

    @contextmanager
    def _held(
        self, session_id: str, *, idempotency_key: str | None = None, cached_version: int | None = None
    ) -> Iterator[LockedSession]:
        """The store's hold on the session, its absence as ``SessionNotFound``."""
        try:
            with self._store.locked(
                session_id, idempotency_key=idempotency_key, cached_version=cached_version
            ) as locked:
                yield locked
        except SessionMissing:
            raise SessionNotFound(f"no session {session_id!r}") from None

    @contextmanager
    def step(
        self,
        *,
        caller: Caller,
        session_id: str,
        grads: dict[str, np.ndarray],
        request_hash: str,
        idempotency_key: str | None,
        expected_versions: Versions,
        loss: float | None = None,
        contribution: ContributionFields | None = None,
    ) -> Iterator[StepOutcome]:
        """Apply one step durably (or answer a retry of one), and yield its outcome.

        The outcome's params view the session's optimizer, which goes back into the cache, and
        may change, once the block ends: render them inside it.
        """
        _require_well_formed(session_id)
        # A contribution to a synchronous round is never trusted to the cache (``_step_once``): do not try.
        trust_cache, reconnected = contribution is None, False
        while True:
            try:
                outcome, optimizer, version = self._step_once(
                    session_id,
                    caller=caller,
                    grads=grads,
                    loss=loss,
                    request_hash=request_hash,
                    idempotency_key=idempotency_key,
                    expected_versions=expected_versions,
                    trust_cache=trust_cache,
                    contribution=contribution,
                )
                break
            except StaleAssumption:
                if not trust_cache:
                    raise
                # The cached optimizer was not the stored one after all (another process stepped the
                # session, or this is a retry): nothing was changed; run it again from storage.
                trust_cache = False
            except StorageUnavailable as failure:
                if not failure.before_commit or reconnected:
                    raise
                # The connection was lost before anything was committed (a PostgreSQL backend killed,
                # say): the unit of work runs again, once, on a new connection.
                reconnected = True
            except QuotaGuardFailed as refused:
                raise self._quota_refusal(refused, caller) from None
            except KeyInFlight:
                raise IdempotencyKeyInFlight(
                    f"a step with Idempotency-Key {idempotency_key!r} is still being processed; retry later"
                ) from None
        closed = outcome.closed
        if closed is not None:
            self._recent_rounds.remember(closed.meta, closed.contributors, closed.params, closed.metrics)
            assert outcome.round is not None
            self.on_round_closed(session_id, outcome.round)
        try:
            if outcome.replayed:
                kept = self._store.metrics(session_id, after_step=outcome.step - 1, limit=1)
                outcome = replace(outcome, metrics=replayed_metrics(kept, outcome.step))
            yield outcome
        finally:
            if optimizer is not None:
                self._cache.put(session_id, version, optimizer)

    def _step_once(
        self,
        session_id: str,
        *,
        caller: Caller,
        grads: dict[str, np.ndarray],
        loss: float | None,
        request_hash: str,
        idempotency_key: str | None,
        expected_versions: Versions,
        trust_cache: bool,
        contribution: ContributionFields | None = None,
    ) -> tuple[StepOutcome, Optimizer[Any, Any] | None, int]:
        """The unit of work of a step: its outcome, the optimizer taken out of the cache for it (to put back
        once the outcome is rendered), and the version to put it back at."""
        cached_version = self._cache.version(session_id) if trust_cache else None
        started = time.perf_counter()
        with self._held(session_id, idempotency_key=idempotency_key, cached_version=cached_version) as locked:
            _check_access(locked.meta, caller)
            self._observer.step_held(locked.meta.optimizer)
            grads = sign_grads_cast(grads, optimizer=locked.meta.optimizer, dtype=locked.meta.dtype)
            aggregation = locked.meta.aggregation
            checked_contribution(aggregation, contribution)
            record = locked.record
            staleness = None
            if aggregation is not None and aggregation["mode"] == "sync":
                assert contribution is not None
                if locked.trusted:
                    # A contribution saves no version-checked row: what the round is must be read, not trusted.
                    raise StaleAssumption("a synchronous session's round is read, never trusted")
                outcome, optimizer = self._contributed(
                    locked, caller=caller, grads=grads, loss=loss, fields=contribution, request_hash=request_hash
                )
                applied = outcome.round is not None and not outcome.pending
            elif record is not None:
                if record.request_hash != request_hash:
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {idempotency_key!r} was used with a different request body"
                    )
                outcome, optimizer = self._replayed(locked, record)
                if contribution is not None:
                    outcome = replace(outcome, staleness=record.step - 1 - contribution.based_on_step)
                self._observer.replayed(outcome.step)
                applied = False
            else:
                if aggregation is not None and contribution is not None:
                    staleness = self._staleness(locked.meta.step, aggregation, contribution)
                    if aggregation["staleness_weighting"] == "inverse":
                        grads = staleness_scaled(grads, staleness)
                outcome, optimizer = self._applied(
                    locked,
                    caller=caller,
                    grads=grads,
                    loss=loss,
                    request_hash=request_hash,
                    idempotency_key=idempotency_key,
                    expected_versions=expected_versions,
                    staleness=staleness,
                )
                applied = True
            held_version = locked.meta.version
            committing = time.perf_counter()
        if applied:
            ended = time.perf_counter()
            self._observer.step_applied(step=outcome.step, seconds=ended - started, commit_seconds=ended - committing)
        return outcome, optimizer, held_version

    def _applied(
        self,
        locked: LockedSession,
        *,
        caller: Caller,
        grads: dict[str, np.ndarray],
        loss: float | None,
        request_hash: str,
        idempotency_key: str | None,
        expected_versions: Versions,
        staleness: int | None = None,
    ) -> tuple[StepOutcome, Optimizer[Any, Any]]:
        """Apply the step to the held session and save it; the outcome views the optimizer's params."""
        stale = expected_versions is not None and locked.meta.version not in expected_versions
        if stale and idempotency_key is not None and locked.trusted:
            # The key's record was not looked up, and this may be a repeat of a step applied here, whose
            # If-Match that step made stale: the record, read from storage, answers it.
            raise StaleAssumption(f"If-Match failed before the record of {idempotency_key!r} was read")
        _require_match(expected_versions, locked.meta.version)
        optimizer = self._optimizer(locked)
        prepared = prepared_grads(
            grads,
            dtype=locked.meta.dtype,
            clip_settings=locked.meta.clip_grad_norm,
            nonfinite=locked.meta.nonfinite,
            shapes=locked.meta.shapes,
        )
        if prepared.skipped:
            self._observer.step_skipped()
            skipped = StepOutcome(
                step=locked.meta.step, version=locked.meta.version, params=optimizer.params, metrics=None, skipped=True
            )
            return skipped, optimizer
        try:
            telemetry = optimizer.measured_step(prepared.grads)
        except OptimCoreError as error:
            raise core_error(error, "body") from None
        state = optimizer.state_dict_arrays(copy=False)["state"]
        params = optimizer.params
        if not arrays_finite(params, state):
            # The optimizer is not put back: the next step restores it from storage.
            raise InvalidRequest(
                ("body", "grads"),
                "this step would make params or optimizer state infinite or NaN (an overflow); it was not applied",
            )
        meta = replace(
            locked.meta,
            step=locked.meta.step + 1,
            version=locked.meta.version + 1,
            updated_at=_now(),
            stored_bytes=array_bytes(params, state),
        )
        record = None
        if idempotency_key is not None:
            record = self._retention.record(
                key=idempotency_key, request_hash=request_hash, step=meta.step, version=meta.version, params=params
            )
        metrics = step_metrics(telemetry, loss)
        if prepared.clip is not None:
            metrics["clip"] = finite_or_null(prepared.clip)
        schedule = advance_optimizer(locked.meta.lr_scheduler, optimizer)
        if schedule is not None:
            meta = replace(meta, param_groups=summary_groups(optimizer), lr_scheduler=schedule)
        if staleness is not None:
            metrics["staleness"] = staleness
        locked.save(
            meta,
            pack_buffers(params, state),
            record,
            self._retention.kept_with(record) if record else None,
            quotas=caller.quotas,
            metrics=kept_metrics(meta.step, meta.updated_at, metrics),
            metrics_kept=self._metrics_kept,
        )
        outcome = StepOutcome(step=meta.step, version=meta.version, params=params, metrics=metrics, staleness=staleness)
        return outcome, optimizer

    def _staleness(self, step: int, aggregation: dict[str, Any], fields: ContributionFields) -> int:
        """An asynchronous contribution's staleness, if it is within the session's bound."""
        staleness = step - fields.based_on_step
        if staleness < 0:
            raise moved_on(fields, step, reason="that step is ahead of the session")
        bound = aggregation["max_staleness"]
        if bound is not None and staleness > bound:
            raise moved_on(fields, step, reason=f"its staleness {staleness} is over max_staleness {bound}")
        return staleness

    def _contributed(
        self,
        locked: LockedSession,
        *,
        caller: Caller,
        grads: dict[str, np.ndarray],
        loss: float | None,
        fields: ContributionFields,
        request_hash: str,
    ) -> tuple[StepOutcome, Optimizer[Any, Any] | None]:
        """A contribution to the held synchronous session's round: stored, or closing the round with it."""
        meta = locked.meta
        current = meta.step
        pending = StepOutcome(step=current, version=meta.version, params={}, metrics=None, pending=True)
        if fields.based_on_step > current:
            raise moved_on(fields, current, reason="that step is ahead of the session")
        if fields.based_on_step < current:
            # A retry of a contribution to a round that has closed, or a late one: the round's record tells.
            return replace(pending, round=fields.based_on_step), None
        pending = replace(pending, round=current)
        stored = locked.contributions(current, with_grads=False)
        if joined(stored, fields, request_hash) is not None:
            return pending, None
        casted = casted_grads(grads, shapes=meta.shapes, dtype=meta.dtype)
        now = _now()
        mine = Contribution(
            worker=fields.worker, weight=fields.weight, loss=loss, request_hash=request_hash, created_at=now
        )
        assert meta.aggregation is not None
        if not due(meta.aggregation, [*stored, mine], now):
            locked.contribute(current, replace(mine, grads=pack(casted)))
            return pending, None
        others = locked.contributions(current, with_grads=True) if stored else []
        closed = self._closer.close(
            locked,
            others,
            fresh=(mine, casted),
            optimizer=self._optimizer(locked),
            quotas=caller.quotas,
            now=now,
        )
        outcome = StepOutcome(
            step=closed.step,
            version=closed.version,
            params=closed.params,
            metrics=closed.metrics,
            round=current,
            closed=closed,
        )
        return outcome, closed.optimizer

    def close_due_round(self, *, caller: Caller, session_id: str, step: int) -> bool:
        """Close the synchronous session's round ``step`` if it is due (its timeout passed with enough
        contributions); whether this call closed it."""
        try:
            return self._close_due_round(caller, session_id, step)
        except QuotaGuardFailed as refused:
            raise self._quota_refusal(refused, caller) from None

    def _close_due_round(self, caller: Caller, session_id: str, step: int) -> bool:
        with self._held(session_id) as locked:
            _check_access(locked.meta, caller)
            aggregation = locked.meta.aggregation
            if aggregation is None or aggregation["mode"] != "sync" or locked.meta.step != step:
                return False
            stored = locked.contributions(step, with_grads=True)
            now = _now()
            if not stored or not due(aggregation, stored, now):
                return False
            closed = self._closer.close(
                locked,
                stored,
                fresh=None,
                optimizer=self._optimizer(locked),
                quotas=caller.quotas,
                now=now,
            )
            version = locked.meta.version
        self._recent_rounds.remember(closed.meta, closed.contributors, closed.params, closed.metrics)
        self._cache.put(session_id, version, closed.optimizer)
        self.on_round_closed(session_id, step)
        return True

    def round(
        self, *, caller: Caller, session_id: str, step: int, worker: str | None = None, request_hash: str = ""
    ) -> RoundView:
        """The synchronous session's round ``step`` as it is now (closing it first when it is due). With
        ``worker``, as that worker's contribution finds it: ``RoundMovedOn`` if the round closed without it."""
        _require_well_formed(session_id)
        remembered = self._recent_rounds.get(session_id, step)
        if remembered is not None:
            _check_access(remembered.meta, caller)
            if worker is not None:
                check_contributor(
                    remembered.contributors,
                    worker=worker,
                    request_hash=request_hash,
                    step=step,
                    current_step=remembered.meta.step,
                )
            return RoundView(
                round=step,
                closed=True,
                step=remembered.meta.step,
                version=remembered.meta.version,
                params=remembered.params,
                metrics=remembered.metrics,
            )
        for _ in range(2):
            record = self._store.round(session_id, step)
            meta, _ = self._stored_meta(session_id, caller)
            if record is None and meta.step > step:
                record = self._store.round(session_id, step)
            aggregation = meta.aggregation
            if aggregation is None or aggregation["mode"] != "sync":
                raise RoundNotFound(f"session {session_id!r} is not synchronous: it has no rounds")
            if record is not None:
                return self._closed_round(session_id, caller, meta, record, worker=worker, request_hash=request_hash)
            if step != meta.step:
                if worker is not None and step < meta.step:
                    fields = ContributionFields(worker=worker, based_on_step=step)
                    raise moved_on(fields, meta.step, reason="that round is no longer remembered")
                raise RoundNotFound(
                    f"session {session_id!r} has no round {step}: it is at step {meta.step}, and remembers its "
                    "newest rounds only"
                )
            stored = self._store.open_round(session_id, step)
            now = _now()
            if stored and due(aggregation, stored, now):
                self.close_due_round(caller=caller, session_id=session_id, step=step)
                continue
            return RoundView(
                round=step,
                closed=False,
                contributions=len(stored),
                workers=aggregation["workers"],
                due_in=seconds_until_due(aggregation, stored, now) if stored else None,
            )
        raise RoundNotFound(f"round {step} of session {session_id!r} was closed and forgotten meanwhile")

    def _stored_meta(self, session_id: str, caller: Caller) -> tuple[SessionMeta, None]:
        found = self._store.get(session_id, with_arrays=False)
        if found is None:
            raise SessionNotFound(f"no session {session_id!r}")
        _check_access(found[0], caller)
        return found[0], None

    def _closed_round(
        self,
        session_id: str,
        caller: Caller,
        meta: SessionMeta,
        record: RoundRecord,
        *,
        worker: str | None,
        request_hash: str,
    ) -> RoundView:
        if worker is not None:
            check_contributor(
                record.contributors, worker=worker, request_hash=request_hash, step=record.step, current_step=meta.step
            )
        answer_step = record.step + 1
        if record.params:
            params = unpack(record.params)[0]
        else:
            current, params = self.params(caller=caller, session_id=session_id)
            if current.step != answer_step:
                raise RoundAnswerExpired(
                    f"round {record.step} of session {session_id!r} closed as step {answer_step}; the session is at "
                    f"step {current.step} now, and that answer's params are no longer kept. GET the session's params "
                    "for their current values.",
                    current_step=current.step,
                )
        kept = self._store.metrics(session_id, after_step=record.step, limit=1)
        return RoundView(
            round=record.step,
            closed=True,
            step=answer_step,
            version=record.version,
            params=params,
            metrics=replayed_metrics(kept, answer_step),
        )

    def _replayed(
        self, locked: LockedSession, record: IdempotencyRecord
    ) -> tuple[StepOutcome, Optimizer[Any, Any] | None]:
        """The first response to a step, again: from its copy, or from the session while no step has
        changed its params since (hyperparameters and state may have changed); and the optimizer
        taken out for it, if any."""
        # Its metrics are read once the session is no longer held (``step``): on PostgreSQL the hold is a
        # pooled connection, and a read now would take a second one.
        if record.params:
            params = unpack(record.params)[0]
            return StepOutcome(record.step, record.version, params, metrics=None, replayed=True), None
        if record.step != locked.meta.step:
            raise IdempotentResponseExpired(
                f"Idempotency-Key {record.key!r} was applied as step {record.step}; the session is at step "
                f"{locked.meta.step} now, and the params that step answered are no longer kept. GET the "
                "session's params for their current values."
            )
        optimizer = self._optimizer(locked)
        return StepOutcome(record.step, record.version, optimizer.params, metrics=None, replayed=True), optimizer

    def _optimizer(self, locked: LockedSession) -> Optimizer[Any, Any]:
        """The held session's optimizer: the cached one when it is at the stored version, else restored
        from the stored arrays. While the session is held, nobody else can change either."""
        cached = self._cache.take(locked.meta.id, locked.meta.version)
        if cached is not None:
            return cached
        return _restore(locked.meta, locked.read_arrays())

    def _stored(self, session_id: str, caller: Caller) -> tuple[SessionMeta, bytes]:
        found = self._store.get(session_id, with_arrays=True)
        if found is None or found[1] is None:
            raise SessionNotFound(f"no session {session_id!r}")
        _check_access(found[0], caller)
        return found[0], found[1]

    def params(self, *, caller: Caller, session_id: str) -> tuple[SessionMeta, dict[str, np.ndarray]]:
        _require_well_formed(session_id)
        meta, arrays = self._stored(session_id, caller)
        return meta, unpack(arrays)[0]

    def state_dict(self, *, caller: Caller, session_id: str) -> tuple[SessionMeta, dict[str, Any]]:
        _require_well_formed(session_id)
        meta, arrays = self._stored(session_id, caller)
        return meta, _restore(meta, arrays).state_dict_arrays()

    def checkpoint(self, *, caller: Caller, session_id: str) -> tuple[SessionMeta, dict[str, Any]]:
        _require_well_formed(session_id)
        meta, arrays = self._stored(session_id, caller)
        optimizer = _restore(meta, arrays)
        return meta, {
            "optimizer": meta.optimizer,
            "dtype": meta.dtype,
            "params": optimizer.params,
            "param_groups": meta.param_groups,
            "state_dict": optimizer.state_dict_arrays(),
            "step": meta.step,
            "aggregation": meta.aggregation,
            "clip_grad_norm": meta.clip_grad_norm,
            "nonfinite": meta.nonfinite,
            "lr_scheduler": meta.lr_scheduler,
        }

    def load_state_dict(
        self, *, caller: Caller, session_id: str, state_dict: object, expected_versions: Versions
    ) -> SessionMeta:
        """Replace the optimizer state (torch's layout, arrays as numpy); the params stay."""
        _require_well_formed(session_id)
        try:
            return self._load_state_dict(caller, session_id, state_dict, expected_versions)
        except QuotaGuardFailed as refused:
            raise self._quota_refusal(refused, caller) from None

    def _load_state_dict(
        self, caller: Caller, session_id: str, state_dict: object, expected_versions: Versions
    ) -> SessionMeta:
        with self._held(session_id) as locked:
            _check_access(locked.meta, caller)
            optimizer = self._optimizer(locked)
            try:
                optimizer.load_state_dict(state_dict)  # type: ignore[arg-type]
            except OptimCoreError as error:
                raise core_error(error, "body") from None
            # After the body is checked: a malformed body is 422 whatever If-Match says. The optimizer, changed
            # by the load, is not put back into the cache when this refuses.
            _require_match(expected_versions, locked.meta.version)
            meta = replace(
                locked.meta,
                param_groups=summary_groups(optimizer),
                version=locked.meta.version + 1,
                updated_at=_now(),
                stored_bytes=array_bytes(optimizer.params, optimizer.state_dict_arrays(copy=False)["state"]),
            )
            locked.save(meta, _packed(optimizer), quotas=caller.quotas)
        self._cache.put(session_id, meta.version, optimizer)
        return meta

    def metrics(
        self, *, caller: Caller, session_id: str, after_step: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the session's kept step metrics after ``after_step``, oldest first, and the step to read
        on after (None on the last page). An admin key may read any tenant's, as it reads their summaries."""
        self.summary(caller=caller, session_id=session_id)
        limit = min(limit, MAX_METRICS_PAGE)
        rows = self._store.metrics(session_id, after_step=after_step, limit=limit + 1)
        next_step = rows[limit - 1].step if len(rows) > limit else None
        return [history_item(row) for row in rows[:limit]], next_step

    def lr_scheduler(self, *, caller: Caller, session_id: str) -> tuple[SessionMeta, dict[str, Any] | None]:
        """The session's LR schedule: its config, torch's state_dict of it, and the lrs it last set; None
        without one."""
        _require_well_formed(session_id)
        meta, _ = self._stored_meta(session_id, caller)
        if meta.lr_scheduler is None:
            return meta, None
        setting = meta.lr_scheduler
        return meta, {"config": setting["config"], "state_dict": setting["state_dict"], "last_lr": last_lr(setting)}

    def load_lr_scheduler(
        self, *, caller: Caller, session_id: str, state_dict: object, expected_versions: Versions
    ) -> SessionMeta:
        """Load torch's state_dict of the session's schedule (``scheduler.load_state_dict``: the lrs stay)."""
        _require_well_formed(session_id)
        with self._held(session_id) as locked:
            _check_access(locked.meta, caller)
            _require_match(expected_versions, locked.meta.version)
            if locked.meta.lr_scheduler is None:
                raise InvalidRequest(
                    ("body", "state_dict"), "the session has no lr_scheduler: PATCH one in first, then load its state"
                )
            setting = with_state_dict(locked.meta.lr_scheduler, state_dict)
            meta = replace(locked.meta, lr_scheduler=setting, version=locked.meta.version + 1, updated_at=_now())
            locked.save(meta, None)
        optimizer = self._cache.take(session_id, meta.version - 1)
        if optimizer is not None:
            self._cache.put(session_id, meta.version, optimizer)
        return meta

    def usage(self, *, caller: Caller) -> TenantUsage:
        """What the caller's tenant holds now."""
        return self._store.usage(caller.tenant)

    def forget_old_records(self) -> None:
        """Forget Idempotency-Key records past their time to live, and the oldest first responses beyond the
        total kept over all sessions (their keys stay: a retry then gets 409, not a new step)."""
        self._store.forget_records(
            created_before=self._retention.forgotten_before(_now()),
            total_response_bytes=self._retention.total_response_bytes,
        )
