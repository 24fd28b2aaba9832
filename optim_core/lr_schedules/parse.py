"""Configs into schedules: ``{"name": <torch class name>, **torch's arguments}``, checked whole."""

from collections.abc import Mapping
from typing import Protocol

from optim_core.errors import InvalidHyperparameterError, Loc
from optim_core.lr_schedules.arguments import Arguments
from optim_core.lr_schedules.cosine import CosineAnnealingLR
from optim_core.lr_schedules.decays import ExponentialLR, MultiStepLR, StepLR
from optim_core.lr_schedules.one_cycle import OneCycleLR
from optim_core.lr_schedules.schedule import LRScheduler, Schedule
from optim_core.lr_schedules.sequential import SequentialLR
from optim_core.lr_schedules.warmups import ConstantLR, LinearLR


class _Parses(Protocol):
    name: str
    ARGUMENTS: tuple[str, ...]

    def from_arguments(self, args: Arguments) -> LRScheduler: ...


SINGLE_SCHEDULES: Mapping[str, _Parses] = {
    schedule.name: schedule
    for schedule in (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, ConstantLR, OneCycleLR)
}
"""The schedules a SequentialLR may run, by torch's class name."""
NAMES: tuple[str, ...] = (*SINGLE_SCHEDULES, SequentialLR.name)
"""Every schedule, by torch's class name."""


def parse_schedule(config: Mapping[str, object], *, loc: Loc = ("lr_scheduler",)) -> Schedule:
    """The schedule ``config`` describes, not yet started; every refusal is an
    ``InvalidHyperparameterError`` located at ``loc`` and the argument: ``("lr_scheduler", "T_max")``."""
    name = _name(config, loc, NAMES)
    if name != SequentialLR.name:
        return _parse_single(config, loc)
    args = Arguments(config, names=SequentialLR.ARGUMENTS, loc=loc)
    configs = args.value("schedulers")
    if not isinstance(configs, (list, tuple)) or not configs:
        raise args.refuse("schedulers", f"schedulers must be a non-empty list of schedule configs, got {configs!r}")
    schedulers = [_parse_single(child, (*loc, "schedulers", index)) for index, child in enumerate(configs)]
    return SequentialLR.from_arguments(args, schedulers)


def _parse_single(config: object, loc: Loc) -> LRScheduler:
    name = _name(config, loc, tuple(SINGLE_SCHEDULES))
    assert isinstance(config, Mapping)
    schedule = SINGLE_SCHEDULES[name]
    return schedule.from_arguments(Arguments(config, names=schedule.ARGUMENTS, loc=loc))


def _name(config: object, loc: Loc, names: tuple[str, ...]) -> str:
    if not isinstance(config, Mapping):
        raise InvalidHyperparameterError(
            f"a schedule's config must be a dict with its 'name', got {type(config).__name__}", loc=loc
        )
    name = config.get("name")
    if not isinstance(name, str) or name not in names:
        raise InvalidHyperparameterError(
            f"a schedule's name must be one of {', '.join(names)}, got {name!r}", loc=(*loc, "name")
        )
    return name
