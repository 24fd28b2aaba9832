"""A schedule's config, read argument by argument: each checked at least as strictly as torch checks it.

Every refusal is an ``InvalidHyperparameterError`` whose message names the schedule, the argument and
the value, located at the config's ``loc`` and the argument's name: ``("lr_scheduler", "T_max")``.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from optim_core.errors import InvalidHyperparameterError, Loc

T = TypeVar("T")
LARGEST_WHOLE = 2**53 - 1
"""The largest whole argument (a count of steps, a milestone): the largest integer every float, and so
every JSON reader, holds exactly."""
REQUIRED: object = object()
"""The default of an argument torch requires."""


def is_real(value: object) -> bool:
    """An ``int`` or ``float`` (numpy's float64 included, as a float), and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_real(value: object) -> bool:
    """``is_real`` and finite; an int too large for a float is not."""
    if not is_real(value):
        return False
    try:
        return math.isfinite(value)  # type: ignore[arg-type]
    except OverflowError:
        return False


def as_whole(value: object) -> int | None:
    """``value`` as an int when it is a whole number: an int (not a bool), or a float with no fraction
    (``3.0``, as JSON Schema counts integers); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


class Arguments:
    """The arguments of one schedule's config, by torch's names (``name`` excepted), at ``loc``."""

    def __init__(self, config: Mapping[str, object], *, names: Sequence[str], loc: Loc) -> None:
        self.schedule = str(config["name"])
        self.loc = loc
        for key in config:
            if key != "name" and key not in names:
                raise InvalidHyperparameterError(
                    f"{self.schedule} takes no argument {key!r}; its arguments are {', '.join(names)}",
                    loc=(*loc, key) if isinstance(key, str) else loc,
                )
        self._config = config

    def given(self, key: str) -> bool:
        """Whether the config gives ``key`` a value other than null."""
        return self._config.get(key) is not None

    def value(self, key: str, default: object = REQUIRED) -> object:
        """The value given for ``key``, or ``default``; a missing required argument is refused."""
        if key in self._config:
            return self._config[key]
        if default is REQUIRED:
            raise InvalidHyperparameterError(f"{self.schedule} requires the argument {key!r}", loc=(*self.loc, key))
        return default

    def refuse(self, key: str, message: str, *index: int) -> InvalidHyperparameterError:
        """The error for ``key`` (or its element at ``index``): ``message`` after the schedule's name."""
        return InvalidHyperparameterError(f"{self.schedule} {message}", loc=(*self.loc, key, *index))

    def whole(self, key: str, *, minimum: int, default: object = REQUIRED) -> int:
        """A whole number (``as_whole``) from ``minimum`` to ``LARGEST_WHOLE``, as an int."""
        value = self.value(key, default)
        whole = as_whole(value)
        if whole is None or not minimum <= whole <= LARGEST_WHOLE:
            raise self.refuse(key, f"{key} must be a whole number from {minimum} to {LARGEST_WHOLE}, got {value!r}")
        return whole

    def real(
        self,
        key: str,
        *,
        default: object = REQUIRED,
        rule: str = "a finite number",
        holds: Callable[[float], bool] = lambda _number: True,
    ) -> float:
        """A finite number (an int or float, not a bool) for which ``holds`` is true; ``rule`` says which."""
        return _real(self, key, self.value(key, default), rule, holds)

    def reals(
        self,
        key: str,
        *,
        default: object = REQUIRED,
        rule: str,
        holds: Callable[[float], bool],
    ) -> float | tuple[float, ...]:
        """One number as ``real`` reads it, or a non-empty list of them (one per param group)."""
        value = self.value(key, default)
        if isinstance(value, (list, tuple)):
            if not value:
                raise self.refuse(key, f"{key} must be a number or a non-empty list of numbers, got {value!r}")
            return tuple(_real(self, key, item, rule, holds, index) for index, item in enumerate(value))
        return _real(self, key, value, rule, holds)

    def flag(self, key: str, *, default: bool) -> bool:
        value = self.value(key, default)
        if not isinstance(value, bool):
            raise self.refuse(key, f"{key} must be a bool, got {value!r}")
        return value

    def choice(self, key: str, options: Sequence[str], *, default: str) -> str:
        value = self.value(key, default)
        if not isinstance(value, str) or value not in options:
            raise self.refuse(key, f"{key} must be one of {', '.join(map(repr, options))}, got {value!r}")
        return value

    def whole_list(self, key: str, *, minimum: int) -> tuple[int, ...]:
        """A list of whole numbers as ``whole`` reads them, in the order given."""
        value = self.value(key)
        if not isinstance(value, (list, tuple)):
            raise self.refuse(key, f"{key} must be a list of whole numbers, got {value!r}")
        wholes = []
        for index, item in enumerate(value):
            whole = as_whole(item)
            if whole is None or not minimum <= whole <= LARGEST_WHOLE:
                raise self.refuse(
                    key, f"{key}[{index}] must be a whole number from {minimum} to {LARGEST_WHOLE}, got {item!r}", index
                )
            wholes.append(whole)
        return tuple(wholes)


def _real(
    arguments: Arguments,
    key: str,
    value: object,
    rule: str,
    holds: Callable[[float], bool],
    *index: int,
) -> float:
    shown = f"{key}[{index[0]}]" if index else key
    if not is_finite_real(value) or not holds(float(value)):  # type: ignore[arg-type]
        raise arguments.refuse(key, f"{shown} must be {rule}, got {value!r}", *index)
    return float(value)  # type: ignore[arg-type]
