r"""Cosine annealing without restarts: torch's ``CosineAnnealingLR``, in the recursive form it steps with.

With :math:`\eta_e` the lr after ``e`` steps, :math:`\eta_{min}` = ``eta_min`` and :math:`T` = ``T_max``,

.. math::
    \eta_e = \eta_{min} + (\eta_{e-1} - \eta_{min})
        \frac{1 + \cos(\pi e / T)}{1 + \cos(\pi (e - 1) / T)},

except where the denominator vanishes (:math:`e - 1 - T` a multiple of :math:`2T`), where
:math:`\eta_e = \eta_{e-1} + (\eta_{base} - \eta_{min})(1 - \cos(\pi / T)) / 2`. Left alone, this
follows the closed form :math:`\eta_{min} + (\eta_{base} - \eta_{min})(1 + \cos(\pi e / T)) / 2`
(up to rounding, which the recursion accumulates as torch's does), and it rises again after
``T_max`` steps. Defaults: ``eta_min=0.0``; ``T_max`` is required, a whole number >= 1.

>>> from optim_core.lr_schedules import parse_schedule
>>> groups = [{"lr": 1.0}]
>>> schedule = parse_schedule({"name": "CosineAnnealingLR", "T_max": 2})
>>> schedule.start(groups)
>>> for _ in range(4):
...     schedule.step(groups)
...     print([round(lr, 12) for lr in schedule.last_lr])
[0.5]
[0.0]
[0.5]
[1.0]
"""

import math
from typing import Any, ClassVar, Self

from optim_core.errors import Loc
from optim_core.lr_schedules.arguments import Arguments
from optim_core.lr_schedules.schedule import LRScheduler


class CosineAnnealingLR(LRScheduler):
    name: ClassVar[str] = "CosineAnnealingLR"
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("T_max", "eta_min")

    def __init__(self, *, T_max: int, eta_min: float, loc: Loc) -> None:  # noqa: N803 (torch's name)
        super().__init__(loc=loc)
        self.T_max = T_max
        self.eta_min = eta_min

    @classmethod
    def from_arguments(cls, args: Arguments) -> Self:
        return cls(
            T_max=args.whole("T_max", minimum=1),
            eta_min=args.real("eta_min", default=0.0, rule="a finite number >= 0", holds=lambda eta: eta >= 0),
            loc=args.loc,
        )

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "T_max": self.T_max, "eta_min": self.eta_min}

    def _hyperparameters(self) -> dict[str, Any]:
        return {"T_max": self.T_max, "eta_min": self.eta_min}

    def _get_lr(self, groups: list[dict[str, Any]]) -> list[float]:
        # torch's branch for `_step_count == 1 and last_epoch > 0` (a scheduler built with a
        # last_epoch) is left out: no state this schedule accepts reaches it.
        if self._is_initial:
            return [group["lr"] for group in groups]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [
                group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                for base_lr, group in zip(self.base_lrs, groups, strict=True)
            ]
        return [
            (1 + math.cos(math.pi * self.last_epoch / self.T_max))
            / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
            * (group["lr"] - self.eta_min)
            + self.eta_min
            for group in groups
        ]

    def _get_closed_form_lr(self) -> list[float]:
        return [
            self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
            for base_lr in self.base_lrs
        ]
