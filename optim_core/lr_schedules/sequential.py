r"""Schedules one after another: torch's ``SequentialLR``.

``schedulers`` (configs of the other schedules; not SequentialLR itself) take turns at
``milestones``, whole numbers >= 1 that increase, one fewer than the schedules. ``start`` does
what torch's constructors do, in their order: each schedule is built on the groups in turn (each
setting the lrs as its constructor does), the lrs are reset to ``initial_lr``, and only the first
schedule takes its initial step. At milestone :math:`m_i` schedule :math:`i + 1` begins from its
closed form at its epoch 0 (OneCycleLR, which has none, from its step 0), and steps on from there.

>>> from optim_core.lr_schedules import parse_schedule
>>> groups = [{"lr": 1.0}]
>>> schedule = parse_schedule({"name": "SequentialLR", "milestones": [2], "schedulers": [
...     {"name": "ConstantLR", "factor": 0.5, "total_iters": 10},
...     {"name": "ExponentialLR", "gamma": 0.5}]})
>>> schedule.start(groups)
>>> schedule.last_lr
[0.5]
>>> for _ in range(4):
...     schedule.step(groups)
...     print(schedule.last_lr)
[0.5]
[1.0]
[0.5]
[0.25]
"""

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, ClassVar

from optim_core.errors import InvalidStateDictError, Loc
from optim_core.lr_schedules.arguments import Arguments
from optim_core.lr_schedules.groups import Group
from optim_core.lr_schedules.one_cycle import OneCycleLR
from optim_core.lr_schedules.schedule import Counters, LRScheduler, Schedule
from optim_core.lr_schedules.state import StateReader

STATE_KEYS = ("_milestones", "last_epoch", "_last_lr", "_schedulers")


class SequentialLR(Schedule):
    name: ClassVar[str] = "SequentialLR"
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("schedulers", "milestones")

    def __init__(self, *, schedulers: Sequence[LRScheduler], milestones: tuple[int, ...], loc: Loc) -> None:
        super().__init__(loc=loc)
        self._schedulers = list(schedulers)
        self._milestones = milestones
        self.last_epoch = 0
        self._last_lr: list[float] = []

    @classmethod
    def from_arguments(cls, args: Arguments, schedulers: Sequence[LRScheduler]) -> "SequentialLR":
        """The schedule of ``args``, whose ``schedulers`` the caller has parsed."""
        milestones = args.whole_list("milestones", minimum=1)
        if len(milestones) != len(schedulers) - 1:
            raise args.refuse(
                "milestones",
                f"expects one milestone fewer than schedulers: got {len(schedulers)} schedulers and "
                f"{len(milestones)} milestones",
            )
        for index in range(1, len(milestones)):
            if milestones[index] <= milestones[index - 1]:
                raise args.refuse("milestones", f"milestones must increase, got {list(milestones)!r}", index)
        for index, (scheduler, milestone) in enumerate(zip(schedulers, milestones, strict=False)):
            begins = milestones[index - 1] if index else 0
            if isinstance(scheduler, OneCycleLR) and milestone - 1 - begins > scheduler.total_steps:
                raise args.refuse(
                    "milestones",
                    f"milestones[{index}] is {milestone}: the OneCycleLR at schedulers[{index}] would be stepped "
                    f"{milestone - 1 - begins} times, past its {scheduler.total_steps} total steps",
                    index,
                )
        return cls(schedulers=schedulers, milestones=milestones, loc=args.loc)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schedulers": [scheduler.config for scheduler in self._schedulers],
            "milestones": list(self._milestones),
        }

    def _last_lrs(self) -> list[float]:
        return self._last_lr

    def _group_count(self) -> int:
        return len(self._last_lr)

    def _check_groups_to_start(self, groups: Sequence[Group]) -> None:
        for scheduler in self._schedulers:
            scheduler._check_groups_to_start(groups)

    def _check_groups_to_step(self, groups: Sequence[Group]) -> None:
        for scheduler in self._schedulers:
            scheduler._check_groups_to_step(groups)

    def _construct(self, groups: list[dict[str, Any]]) -> None:
        for scheduler in self._schedulers:
            scheduler._construct(groups)
        self.last_epoch = 0
        for group in groups:
            group["lr"] = group["initial_lr"]
        for scheduler in self._schedulers:
            scheduler.last_epoch -= 1
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step(groups)
        self._last_lr = list(first._last_lr)

    def _step(self, groups: list[dict[str, Any]]) -> None:
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            scheduler._update_lr(groups, 0)
        else:
            scheduler._step(groups)
        self._last_lr = list(scheduler._last_lr)

    def _state_dict(self) -> dict[str, Any]:
        return {
            "_milestones": list(self._milestones),
            "last_epoch": self.last_epoch,
            "_last_lr": list(self._last_lr),
            "_schedulers": [scheduler._state_dict() for scheduler in self._schedulers],
        }

    def _load(self, state: object, *, loc: Loc, counters: Counters | None) -> None:
        reader = StateReader(state, keys=STATE_KEYS, loc=loc, schedule=self.name)
        reader.same("_milestones", list(self._milestones))
        last_epoch = reader.whole("last_epoch", minimum=0)
        last_lr = reader.lrs("_last_lr")
        states = reader.raw("_schedulers")
        if not isinstance(states, (list, tuple)) or len(states) != len(self._schedulers):
            raise reader.refuse("_schedulers", f"_schedulers must be a list of {len(self._schedulers)} state_dicts")
        for index, (scheduler, scheduler_state) in enumerate(zip(self._schedulers, states, strict=True)):
            at = (*loc, "_schedulers", index)
            scheduler._load(scheduler_state, loc=at, counters=self._counters_of(index, last_epoch))
            if len(scheduler.base_lrs) != len(last_lr):
                raise InvalidStateDictError(
                    f"base_lrs has {len(scheduler.base_lrs)} values for {len(last_lr)} param groups",
                    loc=(*at, "base_lrs"),
                )
        self.last_epoch, self._last_lr = last_epoch, last_lr

    def _counters_of(self, index: int, last_epoch: int) -> Counters:
        """The ``last_epoch`` and ``_step_count`` of schedule ``index`` after ``last_epoch`` steps of
        the sequence: it begins at its milestone (the first at 0), and stops counting at the next."""
        begins = self._milestones[index - 1] if index else 0
        if last_epoch < begins:
            return -1, 1
        ends = self._milestones[index] - 1 if index < len(self._milestones) else last_epoch
        own_epoch = min(last_epoch, ends) - begins
        return own_epoch, own_epoch + 1
