"""OneCycleLR's phases, with torch's arithmetic: where each ends, which step falls in which, and the anneals."""

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """torch's ``_SchedulePhase``: where a phase ends, and the group keys it anneals from and to."""

    end_step: float
    start_lr: str
    end_lr: str
    start_momentum: str
    end_momentum: str


def schedule_phases(total_steps: int, pct_start: float, three_phase: bool) -> tuple[Phase, ...]:
    """torch's phases, with its arithmetic: the last ends at the int ``total_steps - 1``."""
    rise = Phase(float(pct_start * total_steps) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum")
    if three_phase:
        return (
            rise,
            Phase(float(2 * pct_start * total_steps) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
            Phase(total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
        )
    return (rise, Phase(total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"))


def phase_of(phases: Sequence[Phase], step_num: int) -> tuple[Phase, float]:
    """The phase torch anneals step ``step_num`` in, and the step that phase starts from."""
    start_step = 0.0
    for index, phase in enumerate(phases):
        if step_num <= phase.end_step or index == len(phases) - 1:
            return phase, start_step
        start_step = phase.end_step
    raise AssertionError("the last phase takes every step")


def empty_phase_reached(phases: Sequence[Phase], total_steps: int) -> int | None:
    """A step in 0..total_steps that falls in a phase with no length, where torch divides by zero."""
    earliest = 0
    for index, phase in enumerate(phases):
        start_step = phases[index - 1].end_step if index else 0.0
        latest = total_steps if index == len(phases) - 1 else min(total_steps, math.floor(phase.end_step))
        if earliest <= latest and phase.end_step - start_step == 0:
            return earliest
        earliest = max(earliest, math.floor(phase.end_step) + 1)
    return None


def annealing_cos(start: float, end: float, pct: float) -> float:
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


def annealing_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start
