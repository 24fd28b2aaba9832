"""A session: one optimizer kept on the service, driven with numpy arrays (the SDK's lower level)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from optim_client.checkpoint import Checkpoint
from optim_client.client import Body, Client, Reply
from optim_client.contributions import CONTRIBUTION_PENDING, Contribution, contribution_key
from optim_client.errors import (
    NotFoundError,
    OptimClientError,
    PreconditionFailedError,
    ResponseExpiredError,
    RoundMovedOnError,
    StepConflictError,
)
from optim_client.history import PAGE_SIZE, metrics_items
from optim_client.losses import loss_value
from optim_client.rounds import round_answer
from optim_client.state_dicts import state_dict_from_wire, state_dict_to_wire
from optim_client.steps import PENDING, StepRequest, step_conflict
from optim_client.torch_support import is_tensor, tensor_to_numpy
from optim_client.values import DTYPES, as_array, dtype_name, plain

ArrayLike = Any
"""A numpy array, a torch tensor, a number, or nested lists of numbers."""


class Session:
    """One optimizer session on the service.

    Create one with ``Session.create`` (or ``Session.restore`` from a checkpoint, or ``Session.open``
    by id), then ``step(grads)`` with a gradient per param name and get the updated params back::

        session = Session.create(client, optimizer="rmsprop", params={"w": np.zeros(3)}, hyperparameters={"lr": 0.1})
        params = session.step({"w": np.ones(3)})  # {"w": array([-1., -1., -1.])}

    Every step carries an Idempotency-Key, so a step the client retries after a lost response is
    applied once, and If-Match with the ETag of the session as this object last saw it, so that a step
    is never applied to a session that changed meanwhile. A step whose outcome stays unknown (the
    call raised, but the service may have applied it) is kept as pending and finished, exactly once,
    before anything else changes the session. Arrays travel as the client's transport says; both give
    the same numbers.

    On a session created with ``aggregation`` (data-parallel training), workers send contributions
    instead of steps: ``contribute(grads, worker=..., based_on_step=...)``.
    """

    def __init__(self, client: Client, summary: Mapping[str, Any], etag: str | None = None) -> None:
        self.client = client
        self.id: str = summary["id"]
        self.summary: dict[str, Any] = dict(summary)
        self.etag = etag
        self.last_metrics: dict[str, Any] | None = None
        """The ``metrics`` of the last step the service answered to this object (None before any, and when
        a replayed answer no longer has them)."""
        self.last_staleness: int | None = None
        self.send_signs = False
        """Send each gradient's signs alone, as int8 (an Rprop session's steps depend on nothing else)."""
        """The ``staleness`` the last contribution to an asynchronous session was applied with (None before any,
        and for a synchronous round)."""
        self._pending: StepRequest | None = None

    # Creating and finding sessions.

    @classmethod
    def create(
        cls,
        client: Client,
        *,
        optimizer: str,
        params: Mapping[str, ArrayLike],
        hyperparameters: Mapping[str, Any] | None = None,
        param_groups: Sequence[Mapping[str, Any]] | None = None,
        dtype: str | None = None,
        state_dict: Mapping[str, Any] | None = None,
        step: int = 0,
        aggregation: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """A new session over ``params`` (name -> initial values).

        ``hyperparameters`` take torch's names and defaults; ``param_groups`` (``[{"params": [names],
        **overrides}]``) put each param in one group. ``dtype`` is "float32" or "float64"; by default
        float64 when every param is a float64 array or tensor, else float32. ``state_dict`` (torch's
        layout) and ``step`` start from a saved state. ``aggregation`` (``{"mode": "sync", "workers": 4}``, or
        ``{"mode": "async", "max_staleness": 2}``; docs/api.md) makes a session that many workers train
        together, each through ``contribute``. The request carries ``idempotency_key`` (a fresh
        uuid4 by default), the same on every retry, so a creation whose answer was lost is answered with
        the session it made, never a second one.
        """
        numpy_dtype = DTYPES[dtype] if dtype is not None else _inferred_dtype(list(params.values()))
        document: dict[str, Any] = {
            "optimizer": optimizer,
            "dtype": dtype_name(numpy_dtype),
            "params": {name: as_array(value, numpy_dtype, what=f"params[{name!r}]") for name, value in params.items()},
            "hyperparameters": plain(dict(hyperparameters or {})),
        }
        # Always explicit: a safetensors file does not keep the order of its tensors, and the order of
        # the params is what the state_dict's indices mean.
        groups = param_groups if param_groups is not None else [{"params": list(params)}]
        document["param_groups"] = plain([dict(group) for group in groups])
        if state_dict is not None:
            document["state_dict"] = state_dict_to_wire(state_dict, numpy_dtype)
        if step:
            document["step"] = step
        if aggregation is not None:
            document["aggregation"] = plain(dict(aggregation))
        return cls._created(client, document, idempotency_key)

    @classmethod
    def restore(cls, client: Client, checkpoint: Checkpoint, *, idempotency_key: str | None = None) -> Session:
        """A new session that continues exactly where the checkpointed one was, step counter included
        (``idempotency_key`` as ``create`` takes it)."""
        return cls._created(client, checkpoint.to_document(), idempotency_key)

    @classmethod
    def open(cls, client: Client, session_id: str) -> Session:
        """The existing session ``session_id``; ``NotFoundError`` if there is none."""
        reply = client.call("GET", f"/v1/sessions/{session_id}")
        return cls(client, reply.document, reply.etag)

    @classmethod
    def _created(cls, client: Client, document: Mapping[str, Any], idempotency_key: str | None) -> Session:
        key = idempotency_key or str(uuid.uuid4())
        try:
            reply = client.call(
                "POST",
                "/v1/sessions",
                document=document,
                arrays_back=True,
                response_root="params",
                headers={"Idempotency-Key": key},
            )
        except OptimClientError as failure:
            if failure.maybe_applied:
                failure.explain(
                    f"A session may have been created: Session.create (or restore) with idempotency_key={key!r} "
                    "and the same arguments returns it while no step has changed it, or makes it if it was not; "
                    "client.sessions() lists the sessions"
                )
            raise
        summary = {key: value for key, value in reply.document.items() if key != "params"}
        return cls(client, summary, reply.etag)

    # What the session is.

    @property
    def url(self) -> str:
        return f"/v1/sessions/{self.id}"

    @property
    def optimizer(self) -> str:
        return str(self.summary["optimizer"])

    @property
    def dtype(self) -> np.dtype[Any]:
        return DTYPES[self.summary["dtype"]]

    @property
    def aggregation(self) -> dict[str, Any] | None:
        """How the session aggregates its workers' contributions (``mode`` and its settings); None for an
        ordinary session, whose every step request is a step."""
        aggregation: dict[str, Any] | None = self.summary.get("aggregation")
        return aggregation

    @property
    def step_count(self) -> int:
        """The session's step counter as of the last call (``refresh()`` asks the service)."""
        return int(self.summary["step"])

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Each group's hyperparameters and param names, as of the last call."""
        groups: list[dict[str, Any]] = self.summary["param_groups"]
        return groups

    @property
    def param_names(self) -> list[str]:
        """Every param's name, in the order of the state_dict's indices."""
        return [name for group in self.param_groups for name in group["params"]]

    def refresh(self) -> dict[str, Any]:
        """The session's summary, fresh from the service."""
        reply = self.client.call("GET", self.url)
        self._remember(reply, reply.document)
        return self.summary

    # Using it.

    @property
    def pending_key(self) -> str | None:
        """The Idempotency-Key of the step whose outcome is unknown (its call raised, but the service may
        have applied it), or None. ``resolve_pending()`` finishes it; so does the next change."""
        return self._pending.key if self._pending else None

    def step(
        self, grads: Mapping[str, ArrayLike], *, loss: object = None, idempotency_key: str | None = None
    ) -> dict[str, np.ndarray]:
        """Apply one step of ``grads`` (a subset of the params is fine: the others are skipped, as torch
        skips params whose grad is None) and return every param's new values; ``last_metrics`` holds the
        step's metrics.

        ``loss`` (a float, an int, a numpy scalar, or a tensor or array with one element) is kept with the
        step's metrics. A loss that is not finite raises ``ValueError`` before anything is sent.

        The step is sent with ``idempotency_key`` (a fresh uuid4 by default), the same on every retry,
        so it is applied exactly once however many attempts it takes, and with If-Match, so it is
        applied only to the session as this object last saw it (else ``StepConflictError``). If a
        step is pending, it is finished first; when this call repeats it (the same grads, or its
        key), that is all it does, and its params are returned. The same grads with another loss are a
        step of their own.
        """
        body = self._step_body(grads, loss)
        pending = self._pending
        if pending is not None:
            finished = self._sent(pending)
            if _repeats(pending, body, idempotency_key):
                return finished
        return self._sent(StepRequest(idempotency_key or str(uuid.uuid4()), body, self.etag, self.step_count))

    def contribute(
        self,
        grads: Mapping[str, ArrayLike],
        *,
        worker: str,
        based_on_step: int,
        weight: float | None = None,
        loss: object = None,
        idempotency_key: str | None = None,
    ) -> dict[str, np.ndarray]:
        """A worker's contribution to an aggregating session: ``grads`` computed on the params of step
        ``based_on_step`` (the ``step`` of the answer, or of ``params()``, the worker last saw), counting
        ``weight`` (by default 1) in its round's weighted mean. Returns every param's values after the step
        it took part in; ``step_count`` is that step, the ``based_on_step`` of the worker's next contribution.

        In a synchronous session this waits until the round closes (following the service's ``202
        Accepted``, for at most ``client.round_timeout`` seconds: ``RoundTimeoutError``, and the
        contribution stays pending). In an asynchronous one it is applied at once, and ``last_staleness``
        says how stale it was. A contribution the session no longer takes (its round closed without it, or
        it is staler than ``max_staleness``) raises ``RoundMovedOnError``: nothing was stored; read
        ``params()`` and compute the gradient again.

        The Idempotency-Key (``idempotency_key``, by default a digest of the body) and the body are the same
        on every retry, and for a worker that sends the same contribution again after a restart: it is
        answered as the first was, and never counted twice. No If-Match is sent: ``based_on_step`` says
        which params the gradient belongs to. A pending step or contribution is finished first, as
        ``step`` does.
        """
        contribution = Contribution(worker, based_on_step, weight)
        body = self._step_body(grads, loss, contribution)
        pending = self._pending
        if pending is not None:
            finished = self._sent(pending)
            if _repeats(pending, body, idempotency_key):
                return finished
        key = idempotency_key or contribution_key(body)
        return self._sent(StepRequest(key, body, None, based_on_step, contribution=True))

    def repeats_pending(
        self,
        grads: Mapping[str, ArrayLike],
        *,
        loss: object = None,
        idempotency_key: str | None = None,
        contribution: Contribution | None = None,
    ) -> bool:
        """Whether ``step(grads, loss=..., idempotency_key=...)`` (with ``contribution``, ``contribute`` with its
        fields) would repeat the pending request (its key, or without one its very body) rather than be
        one of its own."""
        pending = self._pending
        return pending is not None and _repeats(pending, self._step_body(grads, loss, contribution), idempotency_key)

    def _step_body(
        self, grads: Mapping[str, ArrayLike], loss: object, contribution: Contribution | None = None
    ) -> Body:
        """The step's body; the same bytes for the same grads, loss and contribution fields, so that a repeat is
        recognised and its Idempotency-Key replayed."""
        dtype = self.dtype
        arrays = {name: as_array(value, dtype, what=f"grads[{name!r}]") for name, value in grads.items()}
        if self.send_signs:
            arrays = {name: _signs(array, what=f"grads[{name!r}]") for name, array in arrays.items()}
        document: dict[str, Any] = {"grads": arrays}
        if loss is not None:
            document["loss"] = loss_value(loss)
        if contribution is not None:
            document.update(contribution.fields())
        return self.client.encode(document, root="grads")

    def resolve_pending(self) -> dict[str, np.ndarray] | None:
        """Finish the pending step, if any: send it again with its Idempotency-Key and If-Match, so that the
        service answers it if it was applied and applies it if it was not; every param's values after
        it. None when no step is pending. Raises as ``step`` does (and the step stays pending while its
        outcome is still unknown)."""
        if self._pending is None:
            return None
        return self._sent(self._pending)

    def _sent(self, request: StepRequest) -> dict[str, np.ndarray]:
        """``request`` sent (again); what became of it is remembered, and the step's params returned."""
        was_pending = request is self._pending
        try:
            reply = self.client.call(
                "POST",
                f"{self.url}/step",
                body=request.body,
                arrays_back=True,
                response_root="params",
                headers=request.headers,
            )
            if reply.status == 202:
                reply = self._round_closed(reply)
        except PreconditionFailedError as refused:
            self._pending = None
            raise self._conflict(request, refused, in_doubt=refused.maybe_applied or was_pending) from refused
        except ResponseExpiredError as expired:
            self._pending = None
            what = "The contribution was applied" if request.contribution else "The step was applied"
            try:
                self.refresh()
            except OptimClientError:
                expired.explain(f"{what}; refresh() reads where the session is now")
            else:
                expired.explain(f"{what}; this Session now holds the service's state, at step {self.step_count}")
            raise
        except RoundMovedOnError as refused:
            self._pending = None
            refused.explain(
                f"The contribution, computed on the params of step {request.step}, was not stored; the session is at "
                f"step {refused.current_step}: compute the gradient again on its params (params())"
            )
            raise
        except NotFoundError:
            self._pending = None
            raise
        except OptimClientError as failure:
            if failure.maybe_applied or was_pending:
                self._pending = request
                failure.explain(CONTRIBUTION_PENDING if request.contribution else PENDING)
            raise
        self._pending = None
        self._remember(reply, {**self.summary, "step": reply.document["step"]})
        self.last_metrics = reply.document.get("metrics")
        staleness = reply.document.get("staleness")
        self.last_staleness = staleness if isinstance(staleness, int) else None
        return self._arrays(reply.document["params"])

    def _round_closed(self, accepted: Reply) -> Reply:
        """The answer of the round a contribution was stored in (``accepted`` is the 202 that said so). A failure
        while waiting leaves the contribution pending: it is stored, and is applied when its round closes."""
        try:
            return round_answer(self.client, accepted)
        except (ResponseExpiredError, NotFoundError):
            raise
        except OptimClientError as failure:
            failure.maybe_applied = True
            raise

    def _conflict(self, request: StepRequest, refused: PreconditionFailedError, *, in_doubt: bool) -> StepConflictError:
        try:
            self.refresh()
        except OptimClientError as error:
            return step_conflict(request, refused, in_doubt=in_doubt, step=None, etag=None, unread=str(error))
        return step_conflict(request, refused, in_doubt=in_doubt, step=self.step_count, etag=self.etag)

    def params(self) -> dict[str, np.ndarray]:
        """Every param's current values."""
        reply = self.client.call("GET", f"{self.url}/params", arrays_back=True, response_root="params")
        self._remember(reply, {**self.summary, "step": reply.document["step"]})
        return self._arrays(reply.document["params"])

    def metrics(self, since: int = 0, limit: int | None = None, *, page_size: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """The metrics the service keeps of the steps after step ``since``, oldest first: every one, or the
        first ``limit``. Each item is a step's ``metrics`` with its ``step`` and ``time`` (an RFC 3339 string,
        as the service writes it). Read ``page_size`` at a time, following the service's cursor."""
        return list(self.iter_metrics(since, limit=limit, page_size=page_size))

    def iter_metrics(
        self, since: int = 0, *, limit: int | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[dict[str, Any]]:
        """``metrics()``, one item at a time; a page is read when the one before it is used up."""
        return metrics_items(self.client, self.url, since=since, limit=limit, page_size=page_size)

    def update(
        self,
        *,
        hyperparameters: Mapping[str, Any] | None = None,
        param_groups: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Change hyperparameters from the next step on: ``hyperparameters`` for every group, or
        ``param_groups`` with one mapping of changes per group (as editing torch's param_groups). A
        pending step is finished first, with the hyperparameters it was sent under."""
        if (hyperparameters is None) == (param_groups is None):
            raise TypeError("give exactly one of hyperparameters and param_groups")
        self.resolve_pending()
        document = (
            {"hyperparameters": plain(dict(hyperparameters))}
            if hyperparameters is not None
            else {"param_groups": plain([dict(group) for group in param_groups or ()])}
        )
        reply = self.client.call("PATCH", self.url, document=document, json_only=True)
        self._remember(reply, reply.document)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state in torch's layout (int keys, numpy arrays, float steps)."""
        reply = self.client.call("GET", f"{self.url}/state_dict", arrays_back=True)
        self.etag = reply.etag
        return state_dict_from_wire(reply.document, self.dtype)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load optimizer state (torch's layout, with tensors, numpy arrays or lists); params are unchanged.

        The hyperparameters come from the loaded groups, as in torch. A bad state_dict raises
        ``ValidationError`` and changes nothing. A pending step is finished first.
        """
        document = state_dict_to_wire(state_dict, self.dtype)
        self.resolve_pending()
        reply = self.client.call("PUT", f"{self.url}/state_dict", document=document)
        self._remember(reply, reply.document)

    def checkpoint(self) -> Checkpoint:
        """Everything the session holds; ``Session.restore`` continues from it bit for bit."""
        reply = self.client.call("GET", f"{self.url}/checkpoint", arrays_back=True)
        self.etag = reply.etag
        return Checkpoint.from_document(reply.document)

    def delete(self) -> None:
        """Delete the session (a pending step with it); afterwards every call on it raises ``NotFoundError``."""
        self.client.call("DELETE", self.url, done_on_retry=(404,))
        self._pending = None

    def __repr__(self) -> str:
        pending = f", pending_key={self.pending_key!r}" if self._pending else ""
        return (
            f"Session({self.id!r}, optimizer={self.optimizer!r}, step={self.step_count}{pending}, "
            f"client={self.client!r})"
        )

    def _arrays(self, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Arrays from the service, in the session's param order (a safetensors file has an order of its own)."""
        return {name: np.asarray(values[name], dtype=self.dtype) for name in self.param_names if name in values}

    def _remember(self, reply: Reply, summary: Mapping[str, Any]) -> None:
        self.summary = dict(summary)
        self.etag = reply.etag


def _repeats(pending: StepRequest, body: Body, idempotency_key: str | None) -> bool:
    return pending.key == idempotency_key if idempotency_key is not None else pending.body == body


def _inferred_dtype(values: Sequence[object]) -> np.dtype[Any]:
    """float64 when every value is a float64 array or tensor; else float32, the service's default."""
    dtypes = [
        tensor_to_numpy(value).dtype if is_tensor(value) else value.dtype if isinstance(value, np.ndarray) else None
        for value in values
    ]
    # Not ``dtype == float64``: numpy reads None as float64 there.
    every_one_float64 = dtypes and all(dtype is not None and dtype == DTYPES["float64"] for dtype in dtypes)
    return DTYPES["float64"] if every_one_float64 else DTYPES["float32"]


def _signs(array: np.ndarray, *, what: str) -> np.ndarray:
    """``array``'s signs as int8: -1, 0 or 1 (a quarter of float32's bytes in a safetensors body)."""
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} holds NaN or infinite values, which have no sign to send")
    signs: np.ndarray = np.sign(array).astype(np.int8)
    return signs
