"""A schedule's state_dict, read entry by entry: torch's keys exactly, each value checked.

Every refusal is an ``InvalidStateDictError`` located at the entry: ``("last_epoch",)``, or
``("_schedulers", 1, "gamma")`` inside a SequentialLR's.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from optim_core.errors import InvalidStateDictError, Loc
from optim_core.lr_schedules.arguments import is_finite_real, is_real


class StateReader:
    """The entries of a state_dict that must have exactly ``keys``, at ``loc``."""

    def __init__(self, state: object, *, keys: Sequence[str], loc: Loc, schedule: str) -> None:
        if not isinstance(state, Mapping):
            raise InvalidStateDictError(f"a {schedule} state_dict must be a dict, got {type(state).__name__}", loc=loc)
        for key in state:
            if key not in keys:
                raise InvalidStateDictError(
                    f"a {schedule} state_dict has no entry {key!r}", loc=(*loc, key) if isinstance(key, str) else loc
                )
        for key in keys:
            if key not in state:
                raise InvalidStateDictError(f"the {schedule} state_dict lacks {key!r}", loc=(*loc, key))
        self._state = state
        self.loc = loc
        self.schedule = schedule

    def refuse(self, key: str, message: str) -> InvalidStateDictError:
        return InvalidStateDictError(message, loc=(*self.loc, key))

    def raw(self, key: str) -> Any:
        return self._state[key]

    def whole(self, key: str, *, minimum: int) -> int:
        value = self._state[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.refuse(key, f"{key} must be a whole number >= {minimum}, got {value!r}")
        return value

    def false(self, key: str) -> None:
        """torch's flags that are set only while it computes, hence False in every saved state."""
        if self._state[key] is not False:
            raise self.refuse(key, f"{key} must be False, got {self._state[key]!r}")

    def flag(self, key: str) -> bool:
        value = self._state[key]
        if not isinstance(value, bool):
            raise self.refuse(key, f"{key} must be a bool, got {value!r}")
        return value

    def lrs(self, key: str, *, count: int | None = None) -> list[float]:
        """A copy of a list of finite numbers, one per param group: ``count`` of them when given."""
        value = self._state[key]
        if not isinstance(value, (list, tuple)) or not value or not all(map(is_finite_real, value)):
            raise self.refuse(key, f"{key} must be a non-empty list of finite numbers, got {value!r}")
        if count is not None and len(value) != count:
            raise self.refuse(key, f"{key} has {len(value)} values for {count} param groups")
        return list(value)

    def same(self, key: str, ours: object) -> None:
        """The entry is the schedule's own setting (``ours``): a state_dict resumes the schedule it
        was saved from, and torch would silently adopt another's."""
        theirs = self._state[key]
        if not matches(theirs, ours):
            raise self.refuse(key, f"the state_dict's {key} is {theirs!r}, but this {self.schedule}'s is {ours!r}")


def matches(theirs: object, ours: object) -> bool:
    """Equal, with numbers for numbers (an int for a float of its value), bools for bools, and
    dicts (keyed by ints or strings, as ours are), lists and tuples of matching entries."""
    if isinstance(ours, bool) or ours is None or isinstance(ours, str):
        return type(theirs) is type(ours) and theirs == ours
    if is_real(ours):
        return is_real(theirs) and theirs == ours
    if isinstance(ours, Mapping):
        return (
            isinstance(theirs, Mapping)
            and len(theirs) == len(ours)
            and all(type(key) in (int, str) for key in theirs)
            and all(key in theirs and matches(theirs[key], value) for key, value in ours.items())
        )
    if isinstance(ours, (list, tuple)):
        return isinstance(theirs, (list, tuple)) and len(theirs) == len(ours) and all(map(matches, theirs, ours))
    raise TypeError(f"no rule to match a {type(ours).__name__}")
