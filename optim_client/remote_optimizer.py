"""torch.optim's interface with the optimizer on the service: the base of the SDK's optimizers (optimizers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import numpy as np

from optim_client import torch_support
from optim_client.checkpoint import Checkpoint
from optim_client.client import Client
from optim_client.contributions import Contribution, check_weight, check_worker
from optim_client.errors import ResponseExpiredError, RoundMovedOnError, StepConflictError
from optim_client.history import PAGE_SIZE
from optim_client.losses import loss_value
from optim_client.optimizer_base import OptimizerBase, registered_hooks
from optim_client.params import BoundParams, Param, ParamGroup, bind_params
from optim_client.session import ArrayLike, Session
from optim_client.values import dtype_name, plain, torch_style
from optim_core import NAMES

NOT_HYPERPARAMETERS = ("params", "param_names")


class RemoteOptimizer(OptimizerBase):
    """An optimizer whose state lives in a session on the service; used like a torch.optim optimizer.

    When torch is installed it is a ``torch.optim.Optimizer`` (optimizer_base.py), whose ``step`` goes to the
    service: torch's LR schedulers drive it as they drive torch's own, and step hooks run around each step.

    ``step()`` sends every param's ``.grad`` (params whose grad is None are skipped, as in torch) and
    writes the new values into the tensors in place. ``param_groups`` is a list of dicts as in torch:
    a changed hyperparameter is sent to the service before the next step, so it applies to that
    step exactly as it would in torch. numpy arrays work too, with the gradients passed to
    ``step(grads={name: array})``; the arrays are updated in place.

    The service holds the authoritative params: change them through the optimizer only
    (``step``, ``load_state_dict``, ``restore``), never by writing into the tensors.

    A step whose outcome is unknown (it raised, but the service may have applied it) stays pending on
    the session: the next ``step()`` finishes it first, exactly once, and when that ``step()`` repeats
    it (the same grads) that is all it does. ``resolve_pending()`` finishes it at once.

    Data-parallel training: a session created with ``aggregation`` is trained by many workers, each
    an optimizer made by ``attach(client, session_id, params, worker="rank3")``, whose ``step()`` sends
    a contribution (the grads, the worker, and ``based_on_step``, the step of the params they were
    computed on) and writes the params of the step it took part in into the tensors.
    """

    optimizer_name: ClassVar[str]
    """The name of the optimizer in optim_core's registry, which the service speaks."""
    _by_name: ClassVar[dict[str, type[RemoteOptimizer]]] = {}
    session: Session
    param_groups: list[dict[str, Any]]
    defaults: dict[str, Any]
    worker: str | None
    """The name this optimizer contributes under to an aggregating session; None for an ordinary one."""
    weight: float | None
    """How much each contribution counts unless ``step(weight=...)`` says otherwise (None: the service's 1)."""
    based_on_step: int
    """The step of the params the tensors hold: what the next contribution's gradient is computed on."""
    _synced: list[dict[str, Any]]
    """Each group's hyperparameters as the service holds them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.optimizer_name not in NAMES:
            raise TypeError(f"{cls.__name__}.optimizer_name {cls.optimizer_name!r} is not one of {NAMES}")
        RemoteOptimizer._by_name[cls.optimizer_name] = cls

    @staticmethod
    def of(optimizer_name: str) -> type[RemoteOptimizer]:
        """The class of the remote optimizer ``optimizer_name`` (KeyError if the SDK has none)."""
        return RemoteOptimizer._by_name[optimizer_name]

    def __init__(
        self,
        params: object,
        defaults: Mapping[str, Any],
        *,
        client: Client,
        aggregation: Mapping[str, Any] | None = None,
    ) -> None:
        bound = bind_params(params)
        session = Session.create(
            client,
            optimizer=self.optimizer_name,
            params={param.name: param.values() for param in bound.all},
            hyperparameters=defaults,
            param_groups=[
                {"params": [param.name for param in group.params], **group.options} for group in bound.groups
            ],
            dtype=dtype_name(bound.dtype),
            aggregation=aggregation,
        )
        self.defaults = dict(defaults)
        self._attach(session, bound)

    @classmethod
    def attach(
        cls,
        client: Client,
        session_id: str,
        params: object = None,
        *,
        worker: str | None = None,
        weight: float | None = None,
    ) -> Self:
        """An optimizer on the existing session ``session_id``: a worker joining data-parallel training, or one
        coming back after a restart.

        ``params`` (in any form the constructor takes) are overwritten in place with the session's current
        values, and ``based_on_step`` is their step; named params must have the session's names, unnamed
        ones are matched by position, and shapes and dtype must be the session's (``ValueError`` otherwise,
        before anything is written). Without ``params``, the optimizer gets numpy arrays of its own.
        ``worker`` (1 to 64 characters of ``A-Z a-z 0-9 . _ : -``) is required on an aggregating session
        and refused on an ordinary one; ``weight`` is how much each contribution counts by default.
        """
        if worker is not None:
            check_worker(worker)
        if weight is not None:
            check_weight(weight)
        session = Session.open(client, session_id)
        if session.optimizer != cls.optimizer_name:
            raise ValueError(f"{cls.__name__} cannot attach to session {session_id!r}, a {session.optimizer!r} session")
        if session.aggregation is not None and worker is None:
            raise ValueError(f"session {session_id!r} aggregates its workers' contributions: attach with worker=...")
        if session.aggregation is None and (worker is not None or weight is not None):
            raise ValueError(
                f"session {session_id!r} is an ordinary session, whose every step is a step: "
                "attach without worker and weight"
            )
        values = session.params()
        if params is None:
            params = [
                {"params": {name: values[name].copy() for name in group["params"]}} for group in session.param_groups
            ]
        bound = _bound_like(
            bind_params(params), session.param_groups, session.summary["dtype"], values, whose="the session"
        )
        for param in bound.all:
            param.assign(values[param.name])
        optimizer = cls.__new__(cls)
        optimizer.defaults = _hyperparameters(torch_style(session.param_groups[0]))
        optimizer._attach(session, bound, worker=worker, weight=weight)
        return optimizer

    @classmethod
    def restore(cls, client: Client, checkpoint: Checkpoint, params: object = None) -> Self:
        """An optimizer on a new session that continues exactly where ``checkpoint`` left off.

        ``params`` (in any form the constructor takes) are overwritten in place with the checkpoint's
        values; named params must have the checkpoint's names, unnamed ones are matched by position.
        Without ``params``, the optimizer gets numpy arrays of its own.
        """
        if checkpoint.optimizer != cls.optimizer_name:
            raise ValueError(f"{cls.__name__} cannot restore a {checkpoint.optimizer!r} checkpoint")
        if params is None:
            params = [
                {"params": {name: checkpoint.params[name].copy() for name in group["params"]}}
                for group in checkpoint.param_groups
            ]
        bound = _bound_like(
            bind_params(params), checkpoint.param_groups, checkpoint.dtype, checkpoint.params, whose="the checkpoint"
        )
        session = Session.restore(client, checkpoint)
        for param in bound.all:
            param.assign(checkpoint.params[param.name])
        optimizer = cls.__new__(cls)
        optimizer.defaults = _hyperparameters(torch_style(checkpoint.param_groups[0]))
        optimizer._attach(session, bound)
        return optimizer

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        grads: Mapping[str, ArrayLike] | None = None,
        loss: object = None,
        weight: float | None = None,
    ) -> Any:
        """One optimizer step; returns what ``closure`` (which recomputes the loss) returned, as torch does.

        Without ``grads``, the gradients are the tensors' ``.grad``. When no param has one, nothing is
        sent and nothing changes (torch's behaviour). ``loss`` (a float, an int, a numpy scalar, or a tensor
        with one element, read without its graph) is kept with the step's metrics (``last_metrics``,
        ``metrics()``); a loss that is not finite raises ``ValueError`` before anything is sent. What
        ``closure`` returns is not sent (it need not be a number): to keep it, call it first and pass its
        result as ``loss``.

        An attached worker of an aggregating session sends a contribution instead (``weight``, if given,
        replacing the optimizer's ``weight`` for this one), and writes the params of the step it took part
        in: in a synchronous session, once the round has closed. A contribution the session no longer takes
        raises ``RoundMovedOnError``, the params having been brought to the session's current values first:
        compute the gradient again on them. ``last_staleness`` is what an asynchronous session said of it.
        """
        if loss is not None:
            loss = loss_value(loss)
        contribution = self._contribution(weight)
        result = None
        if closure is not None:
            with torch_support.enable_grad():
                result = closure()
        if grads is None:
            if not self._bound.are_tensors:
                raise TypeError("numpy params carry no gradients; pass them: step(grads={name: array})")
            grads = {param.name: grad for param in self._bound.all if (grad := param.grad()) is not None}
        if grads and self.session.repeats_pending(grads, loss=loss, contribution=contribution):
            # A retry of the step that failed: finished as it was sent, hyperparameters included.
            self.resolve_pending()
            return result
        self.resolve_pending()
        self._push_hyperparameters()
        if not grads:
            return result
        with self._service_values_if_it_moved_on():
            if contribution is None:
                self._assign(self.session.step(grads, loss=loss))
            else:
                # based_on_step as it was before a pending contribution was finished: these grads were
                # computed on the params of that step, whatever the pending one brought.
                self._assign(
                    self.session.contribute(
                        grads,
                        worker=contribution.worker,
                        based_on_step=contribution.based_on_step,
                        weight=contribution.weight,
                        loss=loss,
                    )
                )
        return result

    def _contribution(self, weight: float | None) -> Contribution | None:
        """What makes the next step a contribution, for an attached worker; None for an ordinary session."""
        if self.worker is None:
            if weight is not None:
                raise TypeError("weight= is for a worker of an aggregating session (attach with worker=...)")
            if self.session.aggregation is not None:
                raise ValueError(
                    f"session {self.session.id!r} aggregates its workers' contributions: step through an optimizer "
                    f"made by {type(self).__name__}.attach(client, {self.session.id!r}, params, worker=...)"
                )
            return None
        return Contribution(self.worker, self.based_on_step, weight if weight is not None else self.weight)

    @property
    def last_staleness(self) -> int | None:
        """How stale the last contribution was when an asynchronous session applied it (its step then, minus
        ``based_on_step``); None before any, and in a synchronous session."""
        return self.session.last_staleness

    @property
    def last_metrics(self) -> dict[str, Any] | None:
        """The ``metrics`` the service answered to the last step (``grad_norm``, ``update_norm``, ``param_norm``,
        ``lr``, ``loss``, and the algorithm's own); None before any step."""
        return self.session.last_metrics

    def metrics(self, since: int = 0, limit: int | None = None, *, page_size: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """The metrics the service keeps of the steps after step ``since``, oldest first (``Session.metrics``)."""
        return self.session.metrics(since, limit, page_size=page_size)

    def resolve_pending(self) -> bool:
        """Finish the session's pending step, if any, and write the params it left into the tensors;
        whether a step was pending. Raises as ``step`` does; the step stays pending while its outcome is
        unknown."""
        with self._service_values_if_it_moved_on():
            params = self.session.resolve_pending()
        if params is None:
            return False
        self._assign(params)
        return True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused: a session's param groups are fixed at creation (the constructor's own groups come through
        here, as torch.optim.Optimizer's constructor adds them)."""
        index = len(self.param_groups)
        if index < len(self._bound.groups) and _same_params(param_group["params"], self._bound.groups[index]):
            self.param_groups.append(param_group)
            return
        raise ValueError("param groups cannot be added: a session's groups are fixed at creation")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the tensors' gradients to None (or to zeros), as torch.optim does."""
        for param in self._bound.all:
            param.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The state in torch's layout: tensors when the params are tensors (``torch.optim``'s
        ``load_state_dict`` takes it), numpy arrays otherwise. Hooks registered with torch's
        ``register_state_dict_pre_hook`` and ``register_state_dict_post_hook`` run as in torch."""
        for pre_hook in registered_hooks(self, "_optimizer_state_dict_pre_hooks"):
            pre_hook(self)
        self.resolve_pending()
        self._push_hyperparameters()
        state_dict = self.session.state_dict()
        for group, local in zip(state_dict["param_groups"], self.param_groups, strict=True):
            group.update({key: value for key, value in local.items() if key not in group and key != "params"})
            if not self._bound.named:
                group.pop("param_names", None)
        if self._bound.are_tensors:
            state_dict = torch_support.state_dict_to_torch(state_dict, [param.target for param in self._bound.all])
        for post_hook in registered_hooks(self, "_optimizer_state_dict_post_hooks"):
            if (hooked := post_hook(self, state_dict)) is not None:
                state_dict = hooked
        return state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state_dict in torch's layout (``torch.optim``'s own, or ours); params are unchanged.

        As in torch, the loaded groups' hyperparameters replace the current ones. Group keys the service
        does not know (an LR scheduler's ``initial_lr``) stay here, in ``param_groups``. Hooks registered with
        torch's ``register_load_state_dict_pre_hook`` and ``register_load_state_dict_post_hook`` run as in torch.
        """
        state_dict = dict(state_dict)
        for pre_hook in registered_hooks(self, "_optimizer_load_state_dict_pre_hooks"):
            if (hooked := pre_hook(self, state_dict)) is not None:
                state_dict = hooked
        self.resolve_pending()
        known = {*self._synced[0], *NOT_HYPERPARAMETERS}
        groups = [dict(group) for group in state_dict["param_groups"]]
        extras = [{key: value for key, value in group.items() if key not in known} for group in groups]
        for group in groups:
            for key in list(group):
                if key not in known or (key == "param_names" and not self._bound.named):
                    del group[key]
        self.session.load_state_dict({**state_dict, "param_groups": groups})
        self.param_groups, self._synced = self._groups_from_session(extras)
        for post_hook in registered_hooks(self, "_optimizer_load_state_dict_post_hooks"):
            post_hook(self)

    def checkpoint(self) -> Checkpoint:
        """Everything the session holds; ``restore`` continues from it bit for bit."""
        self.resolve_pending()
        self._push_hyperparameters()
        return self.session.checkpoint()

    def __getstate__(self) -> dict[str, Any]:
        """Everything, as for any object (torch.optim.Optimizer's keeps only the groups and the state, which would
        lose the session)."""
        return dict(self.__dict__)

    def __repr__(self) -> str:
        worker = f", worker={self.worker!r}" if self.worker is not None else ""
        return f"{type(self).__name__}(session={self.session.id!r}, step={self.session.step_count}{worker})"

    def _assign(self, params: Mapping[str, Any]) -> None:
        """Write the params the session just answered into the tensors; they are those of its ``step_count``."""
        for param in self._bound.all:
            param.assign(params[param.name])
        self.based_on_step = self.session.step_count

    @contextmanager
    def _service_values_if_it_moved_on(self) -> Iterator[None]:
        """When a step finds the session elsewhere than expected, the params take the service's values, which
        the next step starts from."""
        try:
            yield
        except (StepConflictError, ResponseExpiredError, RoundMovedOnError) as moved:
            self._assign(self.session.params())
            if isinstance(moved, RoundMovedOnError):
                moved.explain(f"The params now hold the session's values of step {self.based_on_step}")
            raise

    def _attach(
        self, session: Session, bound: BoundParams, *, worker: str | None = None, weight: float | None = None
    ) -> None:
        self.session = session
        self._bound = bound
        self.worker = worker
        self.weight = weight
        self.based_on_step = session.step_count
        groups, self._synced = self._groups_from_session([{} for _ in bound.groups])
        super().__init__(groups, self.defaults)

    def _groups_from_session(self, extras: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Local param groups from the session's, as torch holds them (tensors in ``params``), each with its
        ``extras``; and the hyperparameters they hold as the service has them."""
        groups, synced = [], []
        for group, remote, extra in zip(self._bound.groups, self.session.param_groups, extras, strict=True):
            hyperparameters = _hyperparameters(remote)
            local: dict[str, Any] = {"params": [param.target for param in group.params]}
            if self._bound.named:
                local["param_names"] = [param.name for param in group.params]
            groups.append({**local, **torch_style(hyperparameters), **extra})
            synced.append(hyperparameters)
        return groups, synced

    def _push_hyperparameters(self) -> None:
        """Send the hyperparameters changed in ``param_groups`` since the last call, if any."""
        if len(self.param_groups) != len(self._bound.groups):
            raise ValueError("param groups cannot be added or removed: a session's groups are fixed at creation")
        changes = []
        for index, (group, synced, bound) in enumerate(
            zip(self.param_groups, self._synced, self._bound.groups, strict=True)
        ):
            if not _same_params(group["params"], bound):
                raise ValueError(f"param_groups[{index}]['params'] changed; a session's params are fixed at creation")
            changes.append(
                {key: plain(group[key]) for key in synced if key in group and plain(group[key]) != synced[key]}
            )
        if any(changes):
            self.session.update(param_groups=changes)
            self._synced = [_hyperparameters(remote) for remote in self.session.param_groups]


def _same_params(params: object, group: ParamGroup) -> bool:
    """Whether ``params`` (a param group's) are exactly the tensors or arrays of ``group``, in its order."""
    if not isinstance(params, list | tuple):
        return False
    return [id(value) for value in params] == [id(param.target) for param in group.params]


def _hyperparameters(group: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in group.items() if key not in NOT_HYPERPARAMETERS}


def _bound_like(
    bound: BoundParams,
    param_groups: list[dict[str, Any]],
    dtype: str,
    values: Mapping[str, np.ndarray],
    *,
    whose: str,
) -> BoundParams:
    """``bound``'s params named and grouped as ``param_groups`` (unnamed ones by position), their dtype and
    shapes checked against ``dtype`` and ``values``; the errors speak of them as ``whose``."""
    names = [name for group in param_groups for name in group["params"]]
    params = bound.all
    if len(params) != len(names):
        raise ValueError(f"{whose} has {len(names)} params, {names}; {len(params)} were given")
    if bound.named and [param.name for param in params] != names:
        raise ValueError(f"{whose}'s params are {names}; given {[param.name for param in params]}")
    if dtype_name(bound.dtype) != dtype:
        raise ValueError(f"{whose}'s params are {dtype}; given {bound.dtype}")
    renamed = [Param(name, param.target) for name, param in zip(names, params, strict=True)]
    for param in renamed:
        if param.values().shape != values[param.name].shape:
            raise ValueError(
                f"param {param.name!r} has shape {param.values().shape}; {whose}'s has {values[param.name].shape}"
            )
    groups, start = [], 0
    for group in param_groups:
        groups.append(ParamGroup(renamed[start : start + len(group["params"])], {}))
        start += len(group["params"])
    return BoundParams(groups, bound.named, bound.dtype)
