"""The param groups a schedule reads and writes: torch-style group dicts, checked before any is changed.

A schedule works on copies of the caller's groups and writes the copies back only when the whole
start or step has succeeded, so that a refused call leaves every group as it was.
"""

import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from optim_core.errors import InvalidHyperparameterError, ScheduleStepError
from optim_core.lr_schedules.arguments import is_finite_real

Group = MutableMapping[str, Any]
"""One torch-style param group: ``lr``, and whatever else its optimizer and schedule keep in it."""


def working_copies(groups: object, *, count: int | None = None) -> list[dict[str, Any]]:
    """Copies of ``groups``, each checked to be a mapping with a finite ``lr``; ``count`` of them when given."""
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not groups:
        raise InvalidHyperparameterError("param_groups must be a non-empty list of groups", loc=("param_groups",))
    if count is not None and len(groups) != count:
        raise InvalidHyperparameterError(
            f"the schedule has {count} param groups, but {len(groups)} were given", loc=("param_groups",)
        )
    copies = []
    for index, group in enumerate(groups):
        if not isinstance(group, MutableMapping):
            raise InvalidHyperparameterError(
                f"param_groups[{index}] must be a dict, got {type(group).__name__}", loc=("param_groups", index)
            )
        copies.append(dict(group))
    require_reals(copies, ("lr",))
    return copies


def require_reals(groups: Sequence[Mapping[str, Any]], keys: Iterable[str], *, present_only: bool = False) -> None:
    """Each group's ``keys`` are finite numbers; with ``present_only``, those of them it has."""
    for index, group in enumerate(groups):
        for key in keys:
            if key not in group:
                if present_only:
                    continue
                raise InvalidHyperparameterError(
                    f"param_groups[{index}] has no {key!r}, which the schedule reads", loc=("param_groups", index, key)
                )
            if not is_finite_real(group[key]):
                raise InvalidHyperparameterError(
                    f"param_groups[{index}][{key!r}] must be a finite number, got {group[key]!r}",
                    loc=("param_groups", index, key),
                )


def require_betas(groups: Sequence[Mapping[str, Any]]) -> None:
    """Each group has ``betas``, a list or tuple of finite numbers whose first the schedule replaces."""
    for index, group in enumerate(groups):
        betas = group.get("betas")
        if not isinstance(betas, (list, tuple)) or not betas or not all(map(is_finite_real, betas)):
            raise InvalidHyperparameterError(
                f"param_groups[{index}]['betas'] must be a non-empty list of finite numbers, got {betas!r}",
                loc=("param_groups", index, "betas"),
            )


def commit(groups: Sequence[Group], copies: Sequence[Mapping[str, Any]], *, what: str) -> None:
    """Write ``copies`` back into ``groups``, after checking that every number ``what`` (the schedule's
    start or step) put in them is finite; torch would carry an overflow on, as inf or nan."""
    for index, (group, copied) in enumerate(zip(groups, copies, strict=True)):
        for key, value in copied.items():
            if key in group and group[key] is value:
                continue
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
                raise ScheduleStepError(
                    f"{what} would set param_groups[{index}][{key!r}] to {value!r}", loc=("param_groups", index, key)
                )
    for group, copied in zip(groups, copies, strict=True):
        group.update(copied)
