"""What the optimizer facade needs to know of an algorithm: one ``AlgorithmSpec`` per algorithm module.

Each algorithm module (``rprop.py``, ``rmsprop.py``, ``sgd.py``, ...) defines its math and exports a
``SPEC``; ``registry.py`` lists them; ``optimizer.Optimizer`` is built from one. Nothing
else in the package, the service or the SDK names an algorithm.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from optim_core.telemetry import StepMeasure


class Hyperparams(Protocol):
    """One param group's hyperparameters, parsed and validated."""

    def to_group(self) -> dict[str, object]:
        """The torch-style group, keys in torch's order."""
        ...


class State(Protocol):
    """One param's state: a ``NamedTuple`` of ``step`` and the state arrays (None where an option is off)."""

    @property
    def step(self) -> int: ...


H = TypeVar("H", bound=Hyperparams)
S = TypeVar("S", bound=State)


def _all_arrays(names: tuple[str, ...]) -> Callable[[Any], frozenset[str]]:
    return lambda _hyperparams: frozenset(names)


def _unchanged(_param: np.ndarray, state: S, _hyperparams: Any) -> S:
    return state


@dataclass(frozen=True)
class AlgorithmSpec(Generic[H, S]):
    name: str
    """The name clients use: ``"rprop"``."""
    torch_name: str
    """The class's name in ``torch.optim``: ``"Rprop"``."""
    defaults: Mapping[str, object]
    """torch's group keys, in torch's order, with its defaults."""
    parse: Callable[[Mapping[str, object]], H]
    """Validate a complete torch-style group (every key of ``defaults``) as torch does, and more."""
    state_type: Callable[..., S]
    """Builds a state from ``step`` and the arrays, by their names."""
    state_arrays: tuple[str, ...]
    """The state's array fields, in torch's state_dict order; also torch's state_dict keys."""
    init: Callable[[np.ndarray, H], S]
    """Fresh state for a param (that has not been stepped yet)."""
    update_in_place: Callable[[np.ndarray, np.ndarray, S, H, StepMeasure | None], S]
    """One step: writes the param and the state's buffers in place, returns the state with ``step``
    advanced. Both belong to the optimizer; the gradient is only read. A measure, when given, is fed
    each block as it is updated (``telemetry.py``)."""
    measures: Callable[[StepMeasure], dict[str, object]] = lambda _measure: {}
    """The algorithm's own entries of a step's telemetry, from what its kernel fed the measure."""
    required_state_arrays: Callable[[H], frozenset[str]] = field(default=None)  # type: ignore[assignment]
    """The state arrays a param of a group with these hyperparameters must have (default: all)."""
    complete_state: Callable[[np.ndarray, S, H], S] = _unchanged
    """The state with whatever the current hyperparameters need and it lacks."""
    extensions: Mapping[str, object] = field(default_factory=dict)
    """Hyperparameters of ours beyond torch's, with their defaults: optional in any group (the default when
    absent), and in the groups this package writes only when not at their default, so that a state_dict
    without them is torch's own and loads into torch."""
    hyperparameter_schemas: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """Each key of ``defaults`` as a JSON Schema of the values ``parse`` accepts for it (``checks.py``
    has one beside each validator); what a schema cannot say, its description does."""
    step_in_state: bool = True
    """Whether torch keeps a ``step`` in each param's state (SGD does not: its state is the momentum
    buffer alone, and a param whose state holds no array has no entry)."""
    state_at_construction: bool = False
    """Whether torch makes every param's state when the optimizer is built, before any step (Adagrad:
    ``step`` 0 and ``sum`` filled with ``initial_accumulator_value``), rather than at its first gradient."""

    def __post_init__(self) -> None:
        if self.required_state_arrays is None:
            object.__setattr__(self, "required_state_arrays", _all_arrays(self.state_arrays))

    @property
    def all_defaults(self) -> Mapping[str, object]:
        """torch's group keys and ours (``extensions``), with their defaults: every hyperparameter a group may hold."""
        return {**self.defaults, **self.extensions}

    def make_state(self, step: int, arrays: Mapping[str, np.ndarray]) -> S:
        """A state from a loaded state_dict's entry: its step, and its arrays (the missing ones None)."""
        return self.state_type(step=step, **{name: arrays.get(name) for name in self.state_arrays})
