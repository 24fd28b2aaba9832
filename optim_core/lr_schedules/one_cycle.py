r"""The 1cycle policy: torch's ``OneCycleLR``, which sets each lr (and momentum) from the step number alone.

The lr rises from ``initial_lr = max_lr / div_factor`` to ``max_lr`` over the first
``pct_start * total_steps - 1`` steps, then falls to ``min_lr = initial_lr / final_div_factor`` at
step ``total_steps - 1``; with ``three_phase`` it falls back to ``initial_lr`` symmetrically first,
then to ``min_lr``. Within a phase from step :math:`a` to :math:`b`, at step :math:`e`, with
:math:`p = (e - a) / (b - a)`, the anneal from :math:`u` to :math:`v` is
:math:`v + (u - v)(1 + \cos \pi p) / 2` (``anneal_strategy="cos"``) or :math:`(v - u) p + u`
(``"linear"``). ``total_steps`` steps may be taken after ``start``, as in torch; the last is one past the
last phase's end, where a linear anneal overshoots (to an lr below ``min_lr``, even below zero,
as torch's does). One more step is refused.

With ``cycle_momentum`` (the default) the momentum runs the other way, between ``max_momentum``
and ``base_momentum``: in ``group["momentum"]`` when every group has one (SGD, RMSprop), or in
the first of ``group["betas"]`` when every group has those (Adam); groups that have neither need
``cycle_momentum=False``. ``max_lr``, ``base_momentum`` and ``max_momentum`` are a number or one
per group. ``start`` writes ``initial_lr``, ``max_lr``, ``min_lr`` (and ``max_momentum``,
``base_momentum``) into the groups, as torch does, and each step reads them from there.

Defaults: ``pct_start=0.3``, ``anneal_strategy="cos"``, ``cycle_momentum=True``,
``base_momentum=0.85``, ``max_momentum=0.95``, ``div_factor=25.0``, ``final_div_factor=1e4``,
``three_phase=False``; ``max_lr`` and either ``total_steps`` or ``epochs`` and
``steps_per_epoch`` are required.

>>> from optim_core.lr_schedules import parse_schedule
>>> groups = [{"lr": 0.1, "momentum": 0.9}]
>>> schedule = parse_schedule({"name": "OneCycleLR", "max_lr": 1.0, "total_steps": 4, "pct_start": 0.5,
...                            "anneal_strategy": "linear", "div_factor": 4.0, "final_div_factor": 2.5})
>>> schedule.start(groups)
>>> for _ in range(3):
...     schedule.step(groups)
...     print(groups[0]["lr"], groups[0]["momentum"])
1.0 0.85
0.55 0.8999999999999999
0.09999999999999998 0.95
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Self

from optim_core.errors import InvalidHyperparameterError, InvalidStateDictError, Loc, ScheduleStepError
from optim_core.lr_schedules.arguments import LARGEST_WHOLE, Arguments
from optim_core.lr_schedules.groups import Group, require_betas, require_reals
from optim_core.lr_schedules.one_cycle_phases import (
    annealing_cos,
    annealing_linear,
    empty_phase_reached,
    phase_of,
    schedule_phases,
)
from optim_core.lr_schedules.schedule import LRScheduler
from optim_core.lr_schedules.state import StateReader

ANNEAL_STRATEGIES = ("cos", "linear")
LR_KEYS = ("initial_lr", "max_lr", "min_lr")
MOMENTUM_KEYS = ("max_momentum", "base_momentum")


def _per_group(value: float | tuple[float, ...], count: int, key: str, loc: Loc) -> list[float]:
    """torch's ``_format_param``: one value for every group, or one given per group."""
    if isinstance(value, tuple):
        if len(value) != count:
            raise InvalidHyperparameterError(
                f"OneCycleLR {key} must have the same length as param_groups: "
                f"{key} has {len(value)} values, param_groups has {count}",
                loc=(*loc, key),
            )
        return list(value)
    return [value] * count


def _positive(number: float) -> bool:
    return number > 0


def _momentum(number: float) -> bool:
    return 0 <= number < 1


def _fraction(number: float) -> bool:
    return 0 < number < 1


POSITIVE = "a finite number > 0"
MOMENTUM = "a number in [0, 1)"


@dataclass(frozen=True)
class OneCycleSettings:
    """The config's arguments, parsed; per-group values as tuples."""

    max_lr: float | tuple[float, ...]
    total_steps: int | None
    epochs: int | None
    steps_per_epoch: int | None
    pct_start: float
    anneal_strategy: str
    cycle_momentum: bool
    base_momentum: float | tuple[float, ...]
    max_momentum: float | tuple[float, ...]
    div_factor: float
    final_div_factor: float
    three_phase: bool


class OneCycleLR(LRScheduler):
    name: ClassVar[str] = "OneCycleLR"
    ARGUMENTS: ClassVar[tuple[str, ...]] = tuple(field.name for field in fields(OneCycleSettings))

    def __init__(self, *, settings: OneCycleSettings, loc: Loc) -> None:
        super().__init__(loc=loc)
        self.settings = settings
        self.total_steps = settings.total_steps or (settings.epochs or 0) * (settings.steps_per_epoch or 0)
        self._phases = schedule_phases(self.total_steps, settings.pct_start, settings.three_phase)
        self.cycle_momentum = settings.cycle_momentum
        self.use_beta1 = False
        """Whether momentum is the first of ``betas``; set by ``start``, or by the state loaded."""

    @classmethod
    def from_arguments(cls, args: Arguments) -> Self:
        if args.given("total_steps"):
            if args.given("epochs") or args.given("steps_per_epoch"):
                raise args.refuse("total_steps", "takes total_steps, or epochs and steps_per_epoch, not both")
            total_steps: int | None = args.whole("total_steps", minimum=1)
            epochs = steps_per_epoch = None
        elif args.given("epochs") and args.given("steps_per_epoch"):
            total_steps = None
            epochs = args.whole("epochs", minimum=1)
            steps_per_epoch = args.whole("steps_per_epoch", minimum=1)
            if epochs * steps_per_epoch > LARGEST_WHOLE:
                raise args.refuse(
                    "epochs",
                    f"epochs * steps_per_epoch must be at most {LARGEST_WHOLE}, got {epochs * steps_per_epoch}",
                )
        else:
            raise args.refuse("total_steps", "requires total_steps, or epochs and steps_per_epoch")
        settings = OneCycleSettings(
            max_lr=args.reals("max_lr", rule=POSITIVE, holds=_positive),
            total_steps=total_steps,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=args.real("pct_start", default=0.3, rule="a number in (0, 1)", holds=_fraction),
            anneal_strategy=args.choice("anneal_strategy", ANNEAL_STRATEGIES, default="cos"),
            cycle_momentum=args.flag("cycle_momentum", default=True),
            base_momentum=args.reals("base_momentum", default=0.85, rule=MOMENTUM, holds=_momentum),
            max_momentum=args.reals("max_momentum", default=0.95, rule=MOMENTUM, holds=_momentum),
            div_factor=args.real("div_factor", default=25.0, rule=POSITIVE, holds=_positive),
            final_div_factor=args.real("final_div_factor", default=1e4, rule=POSITIVE, holds=_positive),
            three_phase=args.flag("three_phase", default=False),
        )
        schedule = cls(settings=settings, loc=args.loc)
        step = empty_phase_reached(schedule._phases, schedule.total_steps)
        if step is not None:
            raise args.refuse(
                "pct_start",
                f"pct_start {settings.pct_start!r} with {schedule.total_steps} total steps leaves a phase of no "
                f"length at step {step}, where torch divides by zero",
            )
        return schedule

    @property
    def config(self) -> dict[str, Any]:
        values = {field.name: getattr(self.settings, field.name) for field in fields(OneCycleSettings)}
        return {"name": self.name, **{key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}}

    def _hyperparameters(self) -> dict[str, Any]:
        hyperparameters = {
            "total_steps": self.total_steps,
            "_schedule_phases": [asdict(phase) for phase in self._phases],
            "_anneal_func_type": self.settings.anneal_strategy,
            "cycle_momentum": self.cycle_momentum,
        }
        return {**hyperparameters, "use_beta1": self.use_beta1} if self.cycle_momentum else hyperparameters

    def _load_hyperparameters(self, reader: StateReader, hyperparameters: Mapping[str, Any]) -> None:
        for key, value in hyperparameters.items():
            if key == "use_beta1":
                self.use_beta1 = reader.flag(key)
            else:
                reader.same(key, value)

    def _load(self, state: object, *, loc: Loc, counters: tuple[int, int] | None) -> None:
        super()._load(state, loc=loc, counters=counters)
        if self.last_epoch > self.total_steps:
            raise InvalidStateDictError(
                f"last_epoch {self.last_epoch} is past total_steps {self.total_steps}", loc=(*loc, "last_epoch")
            )

    def _check_groups_to_start(self, groups: Sequence[Group]) -> None:
        super()._check_groups_to_start(groups)
        for key in ("max_lr", "base_momentum", "max_momentum"):
            _per_group(getattr(self.settings, key), len(groups), key, self._loc)
        if self.cycle_momentum:
            self._momentum_in_betas(groups)

    def _momentum_in_betas(self, groups: Sequence[Group]) -> bool:
        """Whether the groups keep their momentum in ``betas`` (all of them) or ``momentum`` (all of them)."""
        in_betas = "betas" in groups[0]
        key = "betas" if in_betas else "momentum"
        for index, group in enumerate(groups):
            if key not in group:
                raise InvalidHyperparameterError(
                    f"OneCycleLR with cycle_momentum needs every param group to have 'momentum', or every "
                    f"group to have 'betas'; param_groups[{index}] has no {key!r}: set cycle_momentum to false",
                    loc=(*self._loc, "cycle_momentum"),
                )
        if in_betas:
            require_betas(groups)
        return in_betas

    def _check_groups_to_step(self, groups: Sequence[Group]) -> None:
        require_reals(groups, LR_KEYS)
        if self.cycle_momentum:
            require_reals(groups, MOMENTUM_KEYS)
            if self.use_beta1:
                require_betas(groups)
            else:
                require_reals(groups, ("momentum",))

    def _construct(self, groups: list[dict[str, Any]]) -> None:
        count = len(groups)
        max_lrs = _per_group(self.settings.max_lr, count, "max_lr", self._loc)
        for index, group in enumerate(groups):
            group["initial_lr"] = max_lrs[index] / self.settings.div_factor
            group["max_lr"] = max_lrs[index]
            group["min_lr"] = group["initial_lr"] / self.settings.final_div_factor
        if self.cycle_momentum:
            self.use_beta1 = self._momentum_in_betas(groups)
            max_momentums = _per_group(self.settings.max_momentum, count, "max_momentum", self._loc)
            base_momentums = _per_group(self.settings.base_momentum, count, "base_momentum", self._loc)
            for m_momentum, b_momentum, group in zip(max_momentums, base_momentums, groups, strict=True):
                if self.use_beta1:
                    group["betas"] = (m_momentum, *group["betas"][1:])
                else:
                    group["momentum"] = m_momentum
                group["max_momentum"] = m_momentum
                group["base_momentum"] = b_momentum
        super()._construct(groups)

    def _get_lr(self, groups: list[dict[str, Any]]) -> list[float]:
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ScheduleStepError(
                f"Tried to step {step_num} times. The specified number of total steps is {self.total_steps}",
                loc=(*self._loc, "total_steps"),
            )
        anneal = annealing_cos if self.settings.anneal_strategy == "cos" else annealing_linear
        lrs = []
        for group in groups:
            phase, start_step = phase_of(self._phases, step_num)
            pct = (step_num - start_step) / (phase.end_step - start_step)
            lrs.append(anneal(group[phase.start_lr], group[phase.end_lr], pct))
            if self.cycle_momentum:
                computed_momentum = anneal(group[phase.start_momentum], group[phase.end_momentum], pct)
                if self.use_beta1:
                    group["betas"] = (computed_momentum, *group["betas"][1:])
                else:
                    group["momentum"] = computed_momentum
        return lrs
