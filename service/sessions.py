"""The service logic: sessions, steps and snapshots, between the routes and the store."""

import base64
import binascii
import re
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import orjson

from optim_core import OptimCoreError, Optimizer
from optim_core.checks import all_finite
from service.cache import OptimizerCache
from service.codecs import arrays_from_json, state_dict_from_json
from service.errors import (
    IdempotencyKeyReused,
    IdempotentResponseExpired,
    PreconditionFailed,
    SessionNotFound,
    ValidationFailed,
    core_error,
)
from service.optimizers import DTYPES, HYPERPARAMS, OPTIMIZERS, build_optimizer, summary_groups
from service.safetensors_format import Buffers, buffers_size
from service.schemas import CreateSessionRequest, PatchSessionRequest
from service.snapshot import pack, pack_buffers, unpack
from service.store import (
    IdempotencyRecord,
    LockedSession,
    SessionMeta,
    SessionMissing,
    SessionStore,
    StaleAssumption,
    StorageUnavailable,
    VersionMismatch,
)


@dataclass(frozen=True)
class StepOutcome:
    step: int
    version: int
    params: dict[str, np.ndarray]


Rendered = TypeVar("Rendered")

OVERLAP_MIN_BYTES = 4 << 20
"""From this size of params and state, a step checks them for overflow and renders its response in
helper threads while the new state is written to disk (numpy and file writes release the GIL): at
10M float32 params that hides about 18 ms behind a 30 ms write. Below it, a thread costs more than it saves."""
MAX_NAME_LENGTH = 256
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What ids this service issues look like; anything else names no session, without asking storage."""


def _require_well_formed(session_id: str) -> None:
    if not SESSION_ID.fullmatch(session_id):
        raise SessionNotFound(f"no session {session_id!r}")


def etag(version: int) -> str:
    return f'"{version}"'


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _require_match(if_match: str | None, version: int) -> None:
    if if_match is None:
        return
    tags = {tag.strip() for tag in if_match.split(",")}
    if "*" not in tags and etag(version) not in tags:
        raise PreconditionFailed(f"If-Match {if_match} does not match the session's ETag {etag(version)}")


def _packed(optimizer: Optimizer[Any, Any]) -> Buffers:
    """The optimizer's arrays as a blob's pieces, viewing its memory: store them before it changes."""
    return pack_buffers(optimizer.params, optimizer.state_dict_arrays(copy=False)["state"])


def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(array.nbytes for array in arrays.values())


def _finite(params: dict[str, np.ndarray], state: dict[str, dict[str, Any]]) -> bool:
    arrays = [*params.values(), *(value for entry in state.values() for key, value in entry.items() if key != "step")]
    return all(all_finite(array) for array in arrays)


def _overflowed() -> ValidationFailed:
    """The 422 for a step that made params or state infinite or NaN; raising it rolls the step back."""
    return ValidationFailed.at(
        ("body", "grads"),
        "this step would make params or optimizer state infinite or NaN (an overflow); it was not applied",
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


def _merged_groups(meta: SessionMeta, request: PatchSessionRequest) -> list[dict[str, Any]]:
    """The session's groups with the patch applied, each validated like creation."""
    parse = HYPERPARAMS[meta.optimizer]
    allowed = set(OPTIMIZERS[meta.optimizer].defaults)
    changes: list[tuple[tuple[str | int, ...], dict[str, Any]]]
    if request.hyperparameters is not None:
        changes = [(("body", "hyperparameters"), request.hyperparameters)] * len(meta.param_groups)
    else:
        assert request.param_groups is not None
        if len(request.param_groups) != len(meta.param_groups):
            raise ValidationFailed.at(
                ("body", "param_groups"),
                f"the session has {len(meta.param_groups)} param groups; give one entry for each",
            )
        changes = [(("body", "param_groups", index), entry) for index, entry in enumerate(request.param_groups)]
    merged = []
    for group, (loc, change) in zip(meta.param_groups, changes, strict=True):
        for key in change:
            if key == "params" and change[key] == group["params"]:
                continue
            if key not in allowed:
                reason = "param groups cannot change" if key == "params" else "unknown hyperparameter"
                raise ValidationFailed.at((*loc, key), f"{reason}: {key!r}")
        candidate = {**group, **{key: value for key, value in change.items() if key != "params"}}
        try:
            hyperparams = parse.from_group(candidate)
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
        raise ValidationFailed.at(("query", "cursor"), "not a cursor this service issued") from None


class Sessions:
    """Session operations; each validates fully before it changes anything."""

    def __init__(
        self,
        *,
        store: SessionStore,
        cache: OptimizerCache,
        idempotency_response_copy_max_bytes: int = 1 << 20,
        idempotency_key_ttl_seconds: float = 24 * 3600,
        idempotency_total_response_bytes: int = 1 << 30,
    ) -> None:
        self._store = store
        self._cache = cache
        self._response_copy_max_bytes = idempotency_response_copy_max_bytes
        self._key_ttl = timedelta(seconds=idempotency_key_ttl_seconds)
        self._total_response_bytes = idempotency_total_response_bytes

    def forget_old_records(self) -> None:
        """Forget Idempotency-Key records older than their time to live, and the oldest first responses
        beyond the total kept over all sessions (their keys stay: a retry then gets 409, not a new step)."""
        self._store.forget_records(
            created_before=_now() - self._key_ttl, total_response_bytes=self._total_response_bytes
        )

    def create(self, *, request: CreateSessionRequest) -> tuple[SessionMeta, dict[str, np.ndarray]]:
        optimizer_class = OPTIMIZERS[request.optimizer]
        for name in request.params:
            if not name.isprintable() or len(name) > MAX_NAME_LENGTH:
                raise ValidationFailed.at(
                    ("body", "params", name), f"param names are printable and at most {MAX_NAME_LENGTH} characters"
                )
        params = arrays_from_json(request.params, loc=("body", "params"), dtype=DTYPES[request.dtype])
        for key in request.hyperparameters:
            if key not in optimizer_class.defaults:
                raise ValidationFailed.at(("body", "hyperparameters", key), f"unknown hyperparameter {key!r}")
        groups = self._checked_groups(request, params)
        try:
            optimizer = build_optimizer(request.optimizer, params, groups, request.hyperparameters)
        except OptimCoreError as error:
            in_body = error.loc[:1] in (("params",), ("param_groups",))
            raise core_error(error, *(("body",) if in_body else ("body", "hyperparameters"))) from None
        if request.state_dict is not None:
            state_dict = state_dict_from_json(request.state_dict, loc=("body", "state_dict"))
            try:
                optimizer.load_state_dict(state_dict)  # type: ignore[arg-type]
            except OptimCoreError as error:
                raise core_error(error, "body", "state_dict") from None
        now = _now()
        meta = SessionMeta(
            id=secrets.token_urlsafe(18),
            optimizer=request.optimizer,
            dtype=request.dtype,
            step=request.step,
            version=1,
            param_groups=summary_groups(optimizer),
            shapes={name: list(value.shape) for name, value in params.items()},
            created_at=now,
            updated_at=now,
        )
        self._store.create(meta, _packed(optimizer))
        self._cache.put(meta.id, meta.version, optimizer)
        return meta, optimizer.params

    @staticmethod
    def _checked_groups(request: CreateSessionRequest, params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        if request.param_groups is None:
            return [{"params": list(params)}]
        seen: set[str] = set()
        for index, group in enumerate(request.param_groups):
            for name in group.params:
                loc = ("body", "param_groups", index, "params")
                if name not in params:
                    raise ValidationFailed.at(loc, f"unknown param {name!r}")
                if name in seen:
                    raise ValidationFailed.at(loc, f"param {name!r} is in more than one group")
                seen.add(name)
        missing = [name for name in params if name not in seen]
        if missing:
            raise ValidationFailed.at(("body", "param_groups"), f"params in no group: {missing}")
        return [{**(group.model_extra or {}), "params": group.params} for group in request.param_groups]

    def summary(self, *, session_id: str) -> SessionMeta:
        _require_well_formed(session_id)
        found = self._store.get(session_id, with_arrays=False)
        if found is None:
            raise SessionNotFound(f"no session {session_id!r}")
        return found[0]

    def page(self, *, limit: int, cursor: str | None) -> tuple[list[SessionMeta], str | None]:
        after = _decode_cursor(cursor) if cursor else None
        metas = self._store.list(limit=limit + 1, after=after)
        if len(metas) > limit:
            return metas[:limit], _encode_cursor(metas[limit - 1])
        return metas, None

    def patch(self, *, session_id: str, request: PatchSessionRequest, if_match: str | None) -> SessionMeta:
        _require_well_formed(session_id)
        with self._held(session_id) as locked:
            _require_match(if_match, locked.meta.version)
            groups = _merged_groups(locked.meta, request)
            meta = replace(locked.meta, param_groups=groups, version=locked.meta.version + 1, updated_at=_now())
            locked.save(meta, None)
        optimizer = self._cache.take(session_id, meta.version - 1)
        if optimizer is not None:
            optimizer.param_groups = [dict(group) for group in groups]
            self._cache.put(session_id, meta.version, optimizer)
        return meta

    def delete(self, *, session_id: str, if_match: str | None) -> None:
        _require_well_formed(session_id)
        expected = None
        if if_match is not None:
            expected = self.summary(session_id=session_id).version
            _require_match(if_match, expected)
        self._cache.discard(session_id)
        try:
            self._store.delete(session_id, expected_version=expected)
        except SessionMissing:
            raise SessionNotFound(f"no session {session_id!r}") from None
        except VersionMismatch:
            raise PreconditionFailed(f"If-Match {if_match} does not match the session's current ETag") from None

    @contextmanager
    def _held(
        self, session_id: str, *, idempotency_key: str | None = None, cached_version: int | None = None
    ) -> Iterator[LockedSession]:
        """The store's hold on the session, its absence as a 404."""
        try:
            with self._store.locked(
                session_id, idempotency_key=idempotency_key, cached_version=cached_version
            ) as locked:
                yield locked
        except SessionMissing:
            raise SessionNotFound(f"no session {session_id!r}") from None

    def step(
        self,
        *,
        session_id: str,
        grads: dict[str, np.ndarray],
        request_hash: str,
        idempotency_key: str | None,
        if_match: str | None,
        render: Callable[[StepOutcome], Rendered],
    ) -> Rendered:
        """Apply the step durably, and ``render`` its outcome (whose params view the optimizer's memory).

        ``render`` runs before the session's optimizer is kept for the next step, which changes
        those params in place.
        """
        _require_well_formed(session_id)
        trust_cache, reconnected = True, False
        while True:
            try:
                return self._step_once(
                    session_id,
                    grads=grads,
                    request_hash=request_hash,
                    idempotency_key=idempotency_key,
                    if_match=if_match,
                    render=render,
                    trust_cache=trust_cache,
                )
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
                # say): the unit of work is run again, once, on a new connection.
                reconnected = True

    def _step_once(
        self,
        session_id: str,
        *,
        grads: dict[str, np.ndarray],
        request_hash: str,
        idempotency_key: str | None,
        if_match: str | None,
        render: Callable[[StepOutcome], Rendered],
        trust_cache: bool,
    ) -> Rendered:
        rendering: Future[Rendered] | None = None
        cached_version = self._cache.version(session_id) if trust_cache else None
        with self._held(session_id, idempotency_key=idempotency_key, cached_version=cached_version) as locked:
            record = locked.record
            if record is not None:
                if record.request_hash != request_hash:
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {idempotency_key!r} was used with a different request body"
                    )
                outcome, optimizer = self._replayed(locked, record)
            else:
                outcome, optimizer, rendering = self._applied(
                    locked,
                    grads=grads,
                    request_hash=request_hash,
                    idempotency_key=idempotency_key,
                    if_match=if_match,
                    render=render,
                )
            held_version = locked.meta.version
        # Rendered after the commit and outside the lock (or alongside the write, for a large step),
        # and before the optimizer is kept again.
        try:
            return rendering.result() if rendering is not None else render(outcome)
        finally:
            if optimizer is not None:
                self._cache.put(session_id, held_version, optimizer)

    def _applied(
        self,
        locked: LockedSession,
        *,
        grads: dict[str, np.ndarray],
        request_hash: str,
        idempotency_key: str | None,
        if_match: str | None,
        render: Callable[[StepOutcome], Rendered],
    ) -> tuple[StepOutcome, Optimizer[Any, Any], "Future[Rendered] | None"]:
        """Apply the step to the held session and save it; the outcome views the optimizer's params.

        A large step's response is rendered in a helper thread while it is saved: the returned
        future (None for a small step, which the caller renders after the commit).
        """
        _require_match(if_match, locked.meta.version)
        optimizer = self._optimizer(locked)
        try:
            optimizer.step(grads)
        except OptimCoreError as error:
            raise core_error(error, "body") from None
        state = optimizer.state_dict_arrays(copy=False)["state"]
        params = optimizer.params
        meta = replace(locked.meta, step=locked.meta.step + 1, version=locked.meta.version + 1, updated_at=_now())
        outcome = StepOutcome(step=meta.step, version=meta.version, params=params)
        record = None
        if idempotency_key is not None:
            record = IdempotencyRecord(
                key=idempotency_key,
                request_hash=request_hash,
                step=meta.step,
                version=meta.version,
                # A large response is not copied: while the session is at this step, its params are it.
                params=pack(params) if _nbytes(params) <= self._response_copy_max_bytes else b"",
            )
        arrays = pack_buffers(params, state)
        if buffers_size(arrays) < OVERLAP_MIN_BYTES:
            if not _finite(params, state):
                raise _overflowed()
            locked.save(meta, arrays, record)
            return outcome, optimizer, None
        # The threads end with their work; the lock is not held for the rendering, which the caller awaits.
        helpers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="step-helper")
        try:
            finite = helpers.submit(_finite, params, state)
            rendering = helpers.submit(render, outcome)
            # Written before the check is known: the slot written is not the committed one until the
            # transaction commits, and a failed check rolls it back.
            locked.save(meta, arrays, record)
            if not finite.result():
                raise _overflowed()
        finally:
            helpers.shutdown(wait=False)
        return outcome, optimizer, rendering

    def _replayed(
        self, locked: LockedSession, record: IdempotencyRecord
    ) -> tuple[StepOutcome, Optimizer[Any, Any] | None]:
        """The first response to a step, again: from its copy, or from the session while no step has
        changed its params since (hyperparameters and state may have changed); and the optimizer
        taken out for it, if any."""
        if record.params:
            return StepOutcome(step=record.step, version=record.version, params=unpack(record.params)[0]), None
        if record.step != locked.meta.step:
            raise IdempotentResponseExpired(
                f"Idempotency-Key {record.key!r} was applied as step {record.step}; the session is at step "
                f"{locked.meta.step} now, and the params that step answered are no longer kept. GET the "
                "session's params for their current values."
            )
        optimizer = self._optimizer(locked)
        return StepOutcome(step=record.step, version=record.version, params=optimizer.params), optimizer

    def _optimizer(self, locked: LockedSession) -> Optimizer[Any, Any]:
        """The held session's optimizer: the cached one when it is at the stored version, else restored
        from the stored arrays. While the session is held, nobody else can change either."""
        cached = self._cache.take(locked.meta.id, locked.meta.version)
        if cached is not None:
            return cached
        return _restore(locked.meta, locked.read_arrays())

    def _stored(self, session_id: str) -> tuple[SessionMeta, bytes]:
        found = self._store.get(session_id, with_arrays=True)
        if found is None or found[1] is None:
            raise SessionNotFound(f"no session {session_id!r}")
        return found[0], found[1]

    def params(self, *, session_id: str) -> tuple[SessionMeta, dict[str, np.ndarray]]:
        _require_well_formed(session_id)
        meta, arrays = self._stored(session_id)
        return meta, unpack(arrays)[0]

    def state_dict(self, *, session_id: str) -> tuple[SessionMeta, dict[str, Any]]:
        _require_well_formed(session_id)
        meta, arrays = self._stored(session_id)
        return meta, _restore(meta, arrays).state_dict_arrays()

    def checkpoint(self, *, session_id: str) -> tuple[SessionMeta, dict[str, Any]]:
        _require_well_formed(session_id)
        meta, arrays = self._stored(session_id)
        optimizer = _restore(meta, arrays)
        return meta, {
            "optimizer": meta.optimizer,
            "dtype": meta.dtype,
            "params": optimizer.params,
            "param_groups": meta.param_groups,
            "state_dict": optimizer.state_dict_arrays(),
            "step": meta.step,
        }

    def load_state_dict(self, *, session_id: str, state_dict: dict[str, Any], if_match: str | None) -> SessionMeta:
        _require_well_formed(session_id)
        converted = state_dict_from_json(state_dict, loc=("body",))
        with self._held(session_id) as locked:
            _require_match(if_match, locked.meta.version)
            optimizer = self._optimizer(locked)
            try:
                optimizer.load_state_dict(converted)  # type: ignore[arg-type]
            except OptimCoreError as error:
                raise core_error(error, "body") from None
            meta = replace(
                locked.meta,
                param_groups=summary_groups(optimizer),
                version=locked.meta.version + 1,
                updated_at=_now(),
            )
            locked.save(meta, _packed(optimizer))
        self._cache.put(session_id, meta.version, optimizer)
        return meta
