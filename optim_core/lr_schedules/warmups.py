r"""Warm-ups: a factor on the lr for the first ``total_iters`` epochs, constant or changing linearly.

Each step multiplies the group's current lr (torch's recursive form), so a change made to it
between steps carries on. With :math:`\eta_e` the lr after ``e`` steps and :math:`T` = ``total_iters``:

- ``ConstantLR``: :math:`\eta_0 = f\,\eta`, :math:`\eta_T = \eta_{T-1} \cdot (1 / f)`, unchanged
  otherwise. Defaults: ``factor=1/3``, ``total_iters=5``; ``0 < factor <= 1``.
- ``LinearLR``: :math:`\eta_0 = s\,\eta`, and for :math:`1 \le e \le T`
  :math:`\eta_e = \eta_{e-1}\left(1 + \frac{f - s}{T s + (e - 1)(f - s)}\right)`, with
  :math:`s` = ``start_factor`` in (0, 1] and :math:`f` = ``end_factor`` in [0, 1]; unchanged after.
  Defaults: ``start_factor=1/3``, ``end_factor=1.0``, ``total_iters=5``.

>>> from optim_core.lr_schedules import parse_schedule
>>> groups = [{"lr": 0.5}]
>>> schedule = parse_schedule({"name": "ConstantLR", "factor": 0.5, "total_iters": 2})
>>> schedule.start(groups)
>>> schedule.last_lr
[0.25]
>>> schedule.step(groups); schedule.step(groups)
>>> groups
[{'lr': 0.5, 'initial_lr': 0.5}]
"""

import math
from typing import Any, ClassVar, Self

from optim_core.errors import Loc
from optim_core.lr_schedules.arguments import Arguments
from optim_core.lr_schedules.schedule import LRScheduler

DEFAULT_FACTOR = 1.0 / 3
DEFAULT_TOTAL_ITERS = 5


def _inverse_is_finite(factor: float) -> bool:
    """At ``total_iters`` ConstantLR multiplies by ``1 / factor``: a factor so small that this
    overflows would leave inf (or nan) lrs, where torch accepts it."""
    return 0 < factor <= 1 and math.isfinite(1.0 / factor)


class ConstantLR(LRScheduler):
    name: ClassVar[str] = "ConstantLR"
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("factor", "total_iters")

    def __init__(self, *, factor: float, total_iters: int, loc: Loc) -> None:
        super().__init__(loc=loc)
        self.factor = factor
        self.total_iters = total_iters

    @classmethod
    def from_arguments(cls, args: Arguments) -> Self:
        return cls(
            factor=args.real(
                "factor",
                default=DEFAULT_FACTOR,
                rule="a number in (0, 1] whose inverse is finite",
                holds=_inverse_is_finite,
            ),
            total_iters=args.whole("total_iters", minimum=1, default=DEFAULT_TOTAL_ITERS),
            loc=args.loc,
        )

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "factor": self.factor, "total_iters": self.total_iters}

    def _hyperparameters(self) -> dict[str, Any]:
        return {"factor": self.factor, "total_iters": self.total_iters}

    def _get_lr(self, groups: list[dict[str, Any]]) -> list[float]:
        if self.last_epoch == 0:
            return [group["lr"] * self.factor for group in groups]
        if self.last_epoch != self.total_iters:
            return [group["lr"] for group in groups]
        return [group["lr"] * (1.0 / self.factor) for group in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [
            base_lr * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
            for base_lr in self.base_lrs
        ]


class LinearLR(LRScheduler):
    name: ClassVar[str] = "LinearLR"
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("start_factor", "end_factor", "total_iters")

    def __init__(self, *, start_factor: float, end_factor: float, total_iters: int, loc: Loc) -> None:
        super().__init__(loc=loc)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters

    @classmethod
    def from_arguments(cls, args: Arguments) -> Self:
        return cls(
            start_factor=args.real(
                "start_factor", default=DEFAULT_FACTOR, rule="a number in (0, 1]", holds=lambda f: 0 < f <= 1
            ),
            end_factor=args.real("end_factor", default=1.0, rule="a number in [0, 1]", holds=lambda f: 0 <= f <= 1),
            total_iters=args.whole("total_iters", minimum=1, default=DEFAULT_TOTAL_ITERS),
            loc=args.loc,
        )

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start_factor": self.start_factor,
            "end_factor": self.end_factor,
            "total_iters": self.total_iters,
        }

    def _hyperparameters(self) -> dict[str, Any]:
        return {"start_factor": self.start_factor, "end_factor": self.end_factor, "total_iters": self.total_iters}

    def _get_lr(self, groups: list[dict[str, Any]]) -> list[float]:
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return [group["lr"] for group in groups]
        return [
            group["lr"]
            * (
                1.0
                + (self.end_factor - self.start_factor)
                / (self.total_iters * self.start_factor + (self.last_epoch - 1) * (self.end_factor - self.start_factor))
            )
            for group in groups
        ]

    def _get_closed_form_lr(self) -> list[float]:
        return [
            base_lr
            * (
                self.start_factor
                + (self.end_factor - self.start_factor) * min(self.total_iters, self.last_epoch) / self.total_iters
            )
            for base_lr in self.base_lrs
        ]
