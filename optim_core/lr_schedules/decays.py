r"""Schedules that multiply the lr by ``gamma``: every epoch, every ``step_size`` epochs, or at milestones.

Each step multiplies the group's current lr, so a change made to it between steps carries on, as
in torch. With :math:`\eta_e` the lr after ``e`` steps:

- ``StepLR``: :math:`\eta_e = \gamma\,\eta_{e-1}` when ``e`` is a multiple of ``step_size``,
  else :math:`\eta_{e-1}`. Defaults: ``gamma=0.1``.
- ``MultiStepLR``: :math:`\eta_e = \gamma^{n}\,\eta_{e-1}` where ``e`` appears ``n`` times in
  ``milestones`` (in any order; a milestone may repeat). Defaults: ``gamma=0.1``.
- ``ExponentialLR``: :math:`\eta_e = \gamma\,\eta_{e-1}`.

>>> from optim_core.lr_schedules import parse_schedule
>>> groups = [{"lr": 1.0}]
>>> schedule = parse_schedule({"name": "StepLR", "step_size": 2, "gamma": 0.5})
>>> schedule.start(groups)
>>> for _ in range(4):
...     schedule.step(groups)
...     print(schedule.last_lr)
[1.0]
[0.5]
[0.5]
[0.25]
"""

from bisect import bisect_right
from collections import Counter
from typing import Any, ClassVar, Self

from optim_core.errors import Loc
from optim_core.lr_schedules.arguments import Arguments
from optim_core.lr_schedules.schedule import LRScheduler

DEFAULT_GAMMA = 0.1
GAMMA_RULE = "a finite number > 0"


def _positive(number: float) -> bool:
    return number > 0


class StepLR(LRScheduler):
    name: ClassVar[str] = "StepLR"
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("step_size", "gamma")

    def __init__(self, *, step_size: int, gamma: float, loc: Loc) -> None:
        super().__init__(loc=loc)
        self.step_size = step_size
        self.gamma = gamma

    @classmethod
    def from_arguments(cls, args: Arguments) -> Self:
        return cls(
            step_size=args.whole("step_size", minimum=1),
            gamma=args.real("gamma", default=DEFAULT_GAMMA, rule=GAMMA_RULE, holds=_positive),
            loc=args.loc,
        )

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "step_size": self.step_size, "gamma": self.gamma}

    def _hyperparameters(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}

    def _get_lr(self, groups: list[dict[str, Any]]) -> list[float]:
        if (self.last_epoch == 0) or (self.last_epoch % self.step_size != 0):
            return [group["lr"] for group in groups]
        return [group["lr"] * self.gamma for group in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    name: ClassVar[str] = "MultiStepLR"
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("milestones", "gamma")

    def __init__(self, *, milestones: tuple[int, ...], gamma: float, loc: Loc) -> None:
        super().__init__(loc=loc)
        self.milestones = milestones
        self._counts = Counter(milestones)
        self.gamma = gamma

    @classmethod
    def from_arguments(cls, args: Arguments) -> Self:
        # torch counts the milestones (a Counter), so their order is free, as it is there.
        return cls(
            milestones=args.whole_list("milestones", minimum=0),
            gamma=args.real("gamma", default=DEFAULT_GAMMA, rule=GAMMA_RULE, holds=_positive),
            loc=args.loc,
        )

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "milestones": list(self.milestones), "gamma": self.gamma}

    def _hyperparameters(self) -> dict[str, Any]:
        # torch keeps a Counter: a milestone given n times decays by gamma ** n.
        return {"milestones": Counter(self.milestones), "gamma": self.gamma}

    def _get_lr(self, groups: list[dict[str, Any]]) -> list[float]:
        if self.last_epoch not in self._counts:
            return [group["lr"] for group in groups]
        return [group["lr"] * self.gamma ** self._counts[self.last_epoch] for group in groups]

    def _get_closed_form_lr(self) -> list[float]:
        milestones = sorted(self._counts.elements())
        return [base_lr * self.gamma ** bisect_right(milestones, self.last_epoch) for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    name: ClassVar[str] = "ExponentialLR"
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("gamma",)

    def __init__(self, *, gamma: float, loc: Loc) -> None:
        super().__init__(loc=loc)
        self.gamma = gamma

    @classmethod
    def from_arguments(cls, args: Arguments) -> Self:
        return cls(gamma=args.real("gamma", rule=GAMMA_RULE, holds=_positive), loc=args.loc)

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "gamma": self.gamma}

    def _hyperparameters(self) -> dict[str, Any]:
        return {"gamma": self.gamma}

    def _get_lr(self, groups: list[dict[str, Any]]) -> list[float]:
        # In the constructor's step torch keeps the lrs, so that a schedule resumed from a checkpoint
        # does not decay them twice.
        if self._is_initial:
            return [group["lr"] for group in groups]
        return [group["lr"] * self.gamma for group in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma**self.last_epoch for base_lr in self.base_lrs]
