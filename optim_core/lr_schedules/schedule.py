"""What every schedule does for its caller: start, step, and save and load its state, each whole or not at all.

``Schedule`` holds the public methods and their guarantees; ``LRScheduler`` is torch's class of the
same name, the bookkeeping every schedule but SequentialLR shares (``base_lrs``, ``last_epoch``,
``_step_count``, ``_last_lr``); each schedule's module adds its ``get_lr``, as torch's does.
"""

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from optim_core.errors import InvalidStateDictError, Loc, ScheduleStepError
from optim_core.lr_schedules.groups import Group, commit, require_reals, working_copies
from optim_core.lr_schedules.state import StateReader

Counters = tuple[int, int]
"""``(last_epoch, _step_count)``."""


@contextmanager
def _overflow_refused(what: str, loc: Loc) -> Iterator[None]:
    """A power that overflows (MultiStepLR's ``gamma ** n``) raises in Python, where a product
    would be inf; either way the step is refused."""
    try:
        yield
    except OverflowError as error:
        raise ScheduleStepError(f"{what} overflows: {error}", loc=loc) from None


class Schedule(ABC):
    """A learning-rate schedule over torch-style param groups, with torch 2.13's numbers.

    ``start(groups)`` does what the torch scheduler's constructor does to its optimizer's groups;
    ``step(groups)`` what one ``scheduler.step()`` does, after the optimizer's step. Either
    checks everything first and changes the groups and the schedule only when the whole call has
    succeeded. A schedule restored by ``load_state_dict`` steps on without being started.
    """

    name: ClassVar[str]
    """torch's class name: ``"StepLR"``."""
    ARGUMENTS: ClassVar[tuple[str, ...]]
    """torch's argument names, in torch's order, without ``optimizer`` and ``last_epoch``."""

    def __init__(self, *, loc: Loc) -> None:
        self._loc = loc
        self._started = False

    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The config this schedule was parsed from: ``name`` and every argument, defaults filled in."""

    @property
    def started(self) -> bool:
        """Whether the schedule has been started or has loaded a state."""
        return self._started

    @property
    def last_lr(self) -> list[float]:
        """torch's ``get_last_lr()``: each group's lr as the last start or step set it."""
        self._require_started("has no last_lr")
        return list(self._last_lrs())

    def start(self, groups: Sequence[Group]) -> None:
        """What torch's constructor does: sets ``initial_lr`` (and OneCycleLR's keys) and the step-0 lrs."""
        if self._started:
            raise ScheduleStepError(f"{self.name} has been started already", loc=self._loc)
        copies = working_copies(groups)
        self._check_groups_to_start(copies)
        trial = copy.deepcopy(self)
        with _overflow_refused(f"starting {self.name}", self._loc):
            trial._construct(copies)
        commit(groups, copies, what=f"starting {self.name}")
        self._adopt(trial)

    def step(self, groups: Sequence[Group]) -> None:
        """One ``scheduler.step()``: the next lrs (and OneCycleLR's momentum) into ``groups``."""
        self._require_started("cannot step")
        copies = working_copies(groups, count=self._group_count())
        self._check_groups_to_step(copies)
        trial = copy.deepcopy(self)
        with _overflow_refused(f"{self.name}'s step", self._loc):
            trial._step(copies)
        commit(groups, copies, what=f"{self.name}'s step")
        self._adopt(trial)

    def state_dict(self) -> dict[str, Any]:
        """torch's ``scheduler.state_dict()``: its keys, in its order, with its values (copies)."""
        self._require_started("has no state")
        return self._state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from ``state_dict`` (ours or torch's): it must have been saved by a schedule of
        this config; nothing changes if it is refused. The groups are not touched."""
        trial = copy.deepcopy(self)
        trial._load(state_dict, loc=(), counters=None)
        self._adopt(trial)

    def _adopt(self, trial: "Schedule") -> None:
        trial._started = True
        vars(self).update(vars(trial))

    def _require_started(self, what: str) -> None:
        if not self._started:
            raise ScheduleStepError(
                f"{self.name} {what}: start it on the param groups, or load a state_dict, first", loc=self._loc
            )

    def _check_groups_to_start(self, groups: Sequence[Group]) -> None:
        """Refuse groups the constructor could not work with, before any is changed."""
        require_reals(groups, ("initial_lr",), present_only=True)

    def _check_groups_to_step(self, groups: Sequence[Group]) -> None:
        """Refuse groups a step could not work with, before any is changed (each has a finite ``lr``
        already; most schedules read nothing else)."""
        return

    @abstractmethod
    def _last_lrs(self) -> list[float]: ...

    @abstractmethod
    def _group_count(self) -> int: ...

    @abstractmethod
    def _construct(self, groups: list[dict[str, Any]]) -> None:
        """torch's constructor, on checked copies of the groups."""

    @abstractmethod
    def _step(self, groups: list[dict[str, Any]]) -> None:
        """torch's ``step()``, on checked copies of the groups."""

    @abstractmethod
    def _state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load(self, state: object, *, loc: Loc, counters: Counters | None) -> None:
        """Check ``state`` whole, then take it. ``counters`` are the ``last_epoch`` and ``_step_count``
        a SequentialLR's state implies for this schedule within it; ``None`` for one that stands alone."""


class LRScheduler(Schedule):
    """torch's ``LRScheduler``: the epoch and step counts, ``base_lrs`` and the last lrs.

    Subclasses give torch's ``get_lr`` (the recursive, "chainable" form torch steps with) and,
    where torch has one, ``_get_closed_form_lr``, which SequentialLR uses at a milestone.
    """

    def __init__(self, *, loc: Loc) -> None:
        super().__init__(loc=loc)
        self.base_lrs: list[float] = []
        self.last_epoch = -1
        self._step_count = 0
        self._is_initial = False
        self._last_lr: list[float] = []

    @abstractmethod
    def _hyperparameters(self) -> dict[str, Any]:
        """The entries torch's state_dict has before ``base_lrs``: the settings, by its attribute names."""

    @abstractmethod
    def _get_lr(self, groups: list[dict[str, Any]]) -> list[float]: ...

    def _get_closed_form_lr(self) -> list[float] | None:
        """The lrs at ``last_epoch`` from ``base_lrs``, or None where torch has no closed form."""
        return None

    def _last_lrs(self) -> list[float]:
        return self._last_lr

    def _group_count(self) -> int:
        return len(self.base_lrs)

    def _construct(self, groups: list[dict[str, Any]]) -> None:
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in groups]
        self.last_epoch = -1
        self._initial_step(groups)

    def _initial_step(self, groups: list[dict[str, Any]]) -> None:
        self._step_count = 0
        self._is_initial = True
        self._step(groups)
        self._is_initial = False

    def _step(self, groups: list[dict[str, Any]]) -> None:
        self._step_count += 1
        self._update_lr(groups, None)

    def _update_lr(self, groups: list[dict[str, Any]], epoch: int | None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self._get_lr(groups)
        else:
            self.last_epoch = epoch
            closed_form = self._get_closed_form_lr()
            values = self._get_lr(groups) if closed_form is None else closed_form
        for group, lr in zip(groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]

    def _state_dict(self) -> dict[str, Any]:
        return {
            **self._hyperparameters(),
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "_is_initial": False,
            "_get_lr_called_within_step": False,
            "_last_lr": list(self._last_lr),
        }

    def _load(self, state: object, *, loc: Loc, counters: Counters | None) -> None:
        hyperparameters = self._hyperparameters()
        reader = StateReader(state, keys=[*hyperparameters, *self._state_dict_keys()], loc=loc, schedule=self.name)
        self._load_hyperparameters(reader, hyperparameters)
        base_lrs = reader.lrs("base_lrs")
        last_lr = reader.lrs("_last_lr", count=len(base_lrs))
        last_epoch = reader.whole("last_epoch", minimum=-1)
        step_count = reader.whole("_step_count", minimum=0)
        reader.false("_is_initial")
        reader.false("_get_lr_called_within_step")
        if counters is None and (last_epoch < 0 or step_count != last_epoch + 1):
            raise InvalidStateDictError(
                f"last_epoch {last_epoch} and _step_count {step_count} do not go together: a {self.name} "
                "started and stepped k times has last_epoch k and _step_count k + 1",
                loc=(*loc, "_step_count"),
            )
        if counters is not None and (last_epoch, step_count) != counters:
            raise InvalidStateDictError(
                f"last_epoch {last_epoch} and _step_count {step_count} do not go together with the "
                f"SequentialLR's: at its last_epoch this {self.name} has {counters[0]} and {counters[1]}",
                loc=(*loc, "_step_count"),
            )
        self.base_lrs, self._last_lr = base_lrs, last_lr
        self.last_epoch, self._step_count = last_epoch, step_count

    def _state_dict_keys(self) -> tuple[str, ...]:
        return ("base_lrs", "last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr")

    def _load_hyperparameters(self, reader: StateReader, hyperparameters: Mapping[str, Any]) -> None:
        """Check the state's settings against ours (OneCycleLR takes the state's ``use_beta1``)."""
        for key, value in hyperparameters.items():
            reader.same(key, value)
