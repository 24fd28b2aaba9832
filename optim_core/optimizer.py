"""The stateful optimizer, built from an algorithm's spec: param groups, per-parameter state, torch's state_dict.

The arithmetic lives in each algorithm's in-place kernel (``rprop.py``, ``rmsprop.py``);
this module keeps the books around it: which parameters exist, their groups and
hyperparameters, their state, and the torch-layout ``state_dict`` that saves and
restores it all. Every public method validates its whole input before it changes anything.
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeGuard

import numpy as np

from optim_core.checks import all_finite, is_number
from optim_core.errors import (
    InvalidGradientError,
    InvalidHyperparameterError,
    InvalidParameterError,
    InvalidStateDictError,
    Loc,
    OptimCoreError,
)
from optim_core.spec import AlgorithmSpec, H, S
from optim_core.telemetry import StepMeasure, StepTelemetry

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_INDEX_DIGITS = 19
"""A state_dict's state key, when a string, is a param index of at most this many decimal digits."""
SHOWN_KEY_CHARS = 40

Params = Mapping[str, np.ndarray]
ParamGroupSpec = Mapping[str, Any]
"""A group as given to a constructor: ``{"params": {name: array}, **hyperparameters}``."""


def _identical(first: object, second: object) -> bool:
    """Equal, with the same types throughout: ``1``, ``1.0`` and ``True`` are equal in Python, and
    parse differently; so are ``0.0`` and ``-0.0``, which torch's state_dict tells apart."""
    if type(first) is not type(second):
        return False
    if isinstance(first, dict):
        assert isinstance(second, dict)
        return first.keys() == second.keys() and all(_identical(value, second[key]) for key, value in first.items())
    if isinstance(first, (list, tuple)):
        assert isinstance(second, (list, tuple))
        return len(first) == len(second) and all(map(_identical, first, second))
    if isinstance(first, (float, np.floating)):
        assert isinstance(second, (float, np.floating))
        return bool(first == second) and math.copysign(1.0, first) == math.copysign(1.0, second)
    return bool(first == second)


_IMMUTABLE_LEAVES = (bool, int, float, str, type(None), np.generic)


def _copied(value: Any) -> Any:
    """A copy of nested dicts, lists and tuples, which callers may change in place, whose leaves are
    immutable scalars; ``_UNCOPIABLE`` if it holds anything else (an ``array.array``, a deque)."""
    if type(value) is dict:
        items = {key: _copied(item) for key, item in value.items()}
        return _UNCOPIABLE if _UNCOPIABLE in items.values() else items
    if type(value) in (list, tuple):
        copied = [_copied(item) for item in value]
        if any(item is _UNCOPIABLE for item in copied):
            return _UNCOPIABLE
        return copied if type(value) is list else tuple(copied)
    return value if isinstance(value, _IMMUTABLE_LEAVES) else _UNCOPIABLE


_UNCOPIABLE = object()
"""What ``_copied`` returns for values it cannot copy whole: groups holding them are parsed on every use."""


@contextmanager
def _located(*prefix: str | int, as_type: type[OptimCoreError] | None = None) -> Iterator[None]:
    """Re-raise core errors with ``prefix`` in front of their ``loc``."""
    try:
        yield
    except OptimCoreError as error:
        raise (as_type or type(error))(error.message, loc=(*prefix, *error.loc)) from None


class Optimizer(Generic[H, S]):
    """An optimizer of the algorithm ``spec`` describes, over named params in torch-style groups.

    ``params`` is ``{name: array}`` or a list of groups ``{"params": {name: array}, **overrides}``;
    ``hyperparameters`` fill in what a group does not override, and torch's defaults the rest.
    The algorithms' own classes (``Rprop``, ``RMSprop``) take torch's keyword arguments instead.

    >>> import numpy as np
    >>> from optim_core.registry import ALGORITHMS
    >>> opt = Optimizer(ALGORITHMS["rprop"], {"w": np.array([1.0, 2.0])}, {"lr": 0.1})
    >>> opt.step({"w": np.array([1.0, -1.0])})
    >>> opt.params["w"].tolist()
    [0.9, 2.1]
    """

    def __init__(
        self,
        spec: AlgorithmSpec[H, S],
        params: Params | Sequence[ParamGroupSpec],
        hyperparameters: Mapping[str, object] | None = None,
    ) -> None:
        self.spec = spec
        hyperparameters = {**spec.all_defaults, **(hyperparameters or {})}
        for key in hyperparameters:
            if key not in spec.all_defaults:
                raise InvalidHyperparameterError(f"unknown hyperparameter {key!r}", loc=(key,))
        with _located():
            construction_hyperparams = self._parse_hyperparams(hyperparameters)
        group_specs = _group_specs(params)
        self._params: dict[str, np.ndarray] = {}
        self._group_names: list[list[str]] = []
        self.param_groups: list[dict[str, Any]] = []
        """torch-style groups: hyperparameters and ``params`` (names). Editable between steps."""
        for index, group_spec in enumerate(group_specs):
            overrides = {key: value for key, value in group_spec.items() if key != "params"}
            for key in overrides:
                if key not in self.spec.all_defaults:
                    raise InvalidHyperparameterError(
                        f"unknown hyperparameter {key!r} in param_groups[{index}]",
                        loc=("param_groups", index, key),
                    )
            with _located("param_groups", index):
                hyperparams = self._parse_hyperparams({**hyperparameters, **overrides})
            names = self._adopt_params(group_spec["params"], index)
            self._group_names.append(names)
            self.param_groups.append({**hyperparams.to_group(), "params": list(names)})
        self._state: dict[str, S] = {}
        if spec.state_at_construction:
            # From the constructor's hyperparameters, not the groups' own, as torch makes it.
            for name, param in self._params.items():
                self._state[name] = self._init_state(param, construction_hyperparams)
        self._last_parsed: tuple[list[dict[str, Any]], list[H]] | None = None
        """The groups as last parsed (a copy), and what they parsed to."""

    @property
    def defaults(self) -> Mapping[str, object]:
        """torch's group keys, in torch's order, with its defaults."""
        return self.spec.defaults

    @property
    def state_arrays(self) -> tuple[str, ...]:
        """State arrays in torch's key order."""
        return self.spec.state_arrays

    # The algorithm, from the spec.

    def _parse_hyperparams(self, group: Mapping[str, object]) -> H:
        return self.spec.parse(group)

    def _init_state(self, param: np.ndarray, hyperparams: H) -> S:
        return self.spec.init(param, hyperparams)

    def _update(self, param: np.ndarray, grad: np.ndarray, state: S, hyperparams: H, measure: StepMeasure | None) -> S:
        return self.spec.update_in_place(param, grad, state, hyperparams, measure)

    def _make_state(self, step: int, arrays: Mapping[str, np.ndarray]) -> S:
        return self.spec.make_state(step, arrays)

    def _required_state_arrays(self, hyperparams: H) -> frozenset[str]:
        """The state arrays a param of a group with ``hyperparams`` must have."""
        return self.spec.required_state_arrays(hyperparams)

    def _completed_state(self, param: np.ndarray, state: S, hyperparams: H) -> S:
        """``state`` with whatever the current ``hyperparams`` need and it lacks."""
        return self.spec.complete_state(param, state, hyperparams)

    # The public API.

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current parameter values, as read-only views of the optimizer's own arrays."""
        return {name: _read_only(value) for name, value in self._params.items()}

    def step(self, grads: Mapping[str, Any]) -> None:
        """Apply one step. Params absent from ``grads`` are skipped, like torch's ``grad=None``."""
        self._step(grads, measured=False)

    def measured_step(self, grads: Mapping[str, Any]) -> StepTelemetry:
        """``step``, measuring it as it runs: the norms, each group's lr, the algorithm's own measures."""
        telemetry = self._step(grads, measured=True)
        assert telemetry is not None
        return telemetry

    def _step(self, grads: Mapping[str, Any], *, measured: bool) -> StepTelemetry | None:
        hyperparams = self._validated_groups()
        prepared = self._prepared_grads(grads)
        measure = StepMeasure(sum(grad.size for grad in prepared.values())) if measured else None
        for names, group_hyperparams in zip(self._group_names, hyperparams, strict=True):
            for name in names:
                grad = prepared.get(name)
                if grad is None:
                    continue
                param = self._params[name]
                state = self._state.get(name)
                if state is None:
                    state = self._init_state(param, group_hyperparams)
                self._state[name] = self._update(param, grad, state, group_hyperparams, measure)
        if measure is None:
            return None
        lrs = [float(group["lr"]) for group in self.param_groups]
        return measure.telemetry(lrs, self.spec.measures(measure))

    def state_dict(self) -> dict[str, Any]:
        """The state in torch's layout, with arrays as nested lists: ``json.dumps`` takes it."""
        lists: dict[str, Any] = _to_lists(self.state_dict_arrays())
        return lists

    def state_dict_arrays(self, *, copy: bool = True) -> dict[str, Any]:
        """The same layout as ``state_dict``, holding copies of the arrays instead of lists.

        With ``copy=False`` it holds read-only views of the optimizer's own arrays instead,
        which the next ``step`` or ``load_state_dict`` changes: read them before that.
        """
        hyperparams = self._validated_groups()
        indices = {name: index for index, name in enumerate(self._ordered_names())}
        groups = [
            {**group_hyperparams.to_group(), "params": [indices[name] for name in names], "param_names": list(names)}
            for names, group_hyperparams in zip(self._group_names, hyperparams, strict=True)
        ]
        hyperparams_by_name = {
            name: group_hyperparams
            for names, group_hyperparams in zip(self._group_names, hyperparams, strict=True)
            for name in names
        }
        state: dict[str, dict[str, Any]] = {}
        for name in self._ordered_names():
            param_state = self._state.get(name)
            if param_state is None:
                continue
            param_state = self._completed_state(self._params[name], param_state, hyperparams_by_name[name])
            entry: dict[str, Any] = {"step": float(param_state.step)} if self.spec.step_in_state else {}
            for key in self.state_arrays:
                array = getattr(param_state, key)
                if array is not None:
                    entry[key] = array.copy() if copy else _read_only(array)
            if entry:
                state[str(indices[name])] = entry
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the hyperparameters and state with those of ``state_dict`` (torch layout).

        Arrays may be nested lists or numpy arrays; state keys may be strings or ints.
        Stricter than torch: every key, size and shape is checked, and a failed
        load leaves the optimizer as it was.
        """
        with _located(as_type=InvalidStateDictError):
            _require_keys(state_dict, required={"state", "param_groups"}, allowed={"state", "param_groups"}, loc=())
            groups, names_by_id, hyperparams_by_name = self._loaded_groups(state_dict["param_groups"])
            states = self._loaded_states(state_dict["state"], names_by_id, hyperparams_by_name)
        self.param_groups = groups
        self._state = states

    # Helpers.

    def _ordered_names(self) -> Iterator[str]:
        for names in self._group_names:
            yield from names

    def _adopt_params(self, params: object, group_index: int) -> list[str]:
        if not isinstance(params, Mapping):
            raise InvalidParameterError(
                f"param_groups[{group_index}]['params'] must map names to arrays, got {type(params).__name__}",
                loc=("param_groups", group_index, "params"),
            )
        names = []
        for name, value in params.items():
            loc: Loc = ("params", name) if isinstance(name, str) else ("params",)
            if not isinstance(name, str) or not name:
                raise InvalidParameterError(f"param names must be non-empty strings, got {name!r}", loc=loc)
            if name in self._params:
                raise InvalidParameterError(f"param {name!r} appears in more than one parameter group", loc=loc)
            if not isinstance(value, np.ndarray):
                raise InvalidParameterError(
                    f"param {name!r} must be a numpy array, got {type(value).__name__}", loc=loc
                )
            if value.dtype not in SUPPORTED_DTYPES:
                raise InvalidParameterError(
                    f"param {name!r} has dtype {value.dtype}; only float32 and float64 are supported", loc=loc
                )
            self._params[name] = np.array(value, order="C", copy=True)
            names.append(name)
        return names

    def _validated_groups(self) -> list[H]:
        """Parse the live groups, which users may have edited since the last step.

        Groups identical to those last parsed are not parsed again: a small step spends
        more time parsing them than computing.
        """
        if self._last_parsed is not None and _identical(self._last_parsed[0], self.param_groups):
            return self._last_parsed[1]
        parsed = []
        for index, (group, names) in enumerate(zip(self.param_groups, self._group_names, strict=True)):
            _require_keys(
                group,
                required={*self.defaults, "params"},
                allowed={*self.spec.all_defaults, "params"},
                loc=("param_groups", index),
            )
            if list(group["params"]) != names:
                raise InvalidHyperparameterError(
                    f"param_groups[{index}]['params'] cannot change; it must stay {names}",
                    loc=("param_groups", index, "params"),
                )
            with _located("param_groups", index):
                parsed.append(self._parse_hyperparams(group))
        copied = _copied(self.param_groups)
        self._last_parsed = None if copied is _UNCOPIABLE else (copied, parsed)
        return parsed

    def _prepared_grads(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The gradients as C-contiguous arrays of their param's dtype, all checked."""
        if not isinstance(grads, Mapping):
            raise InvalidGradientError(
                f"grads must map param names to arrays, got {type(grads).__name__}", loc=("grads",)
            )
        if not grads:
            raise InvalidGradientError("grads is empty; a step needs at least one gradient", loc=("grads",))
        prepared = {}
        for name, value in grads.items():
            loc: Loc = ("grads", name) if isinstance(name, str) else ("grads",)
            param = self._params.get(name) if isinstance(name, str) else None
            if param is None:
                raise InvalidGradientError(f"grads names unknown param {name!r}", loc=loc)
            prepared[name] = _checked_array(
                value, like=param, what=f"grad for {name!r}", loc=loc, error=InvalidGradientError
            )
        return prepared

    def _loaded_groups(self, saved_groups: object) -> tuple[list[dict[str, Any]], dict[int, str], dict[str, H]]:
        if not _is_list(saved_groups):
            raise InvalidStateDictError("param_groups must be a list", loc=("param_groups",))
        if len(saved_groups) != len(self._group_names):
            raise InvalidStateDictError(
                "loaded state dict has a different number of parameter groups", loc=("param_groups",)
            )
        groups, names_by_id, hyperparams_by_name = [], {}, {}
        for index, (saved, names) in enumerate(zip(saved_groups, self._group_names, strict=True)):
            loc: Loc = ("param_groups", index)
            _require_keys(
                saved,
                required={*self.defaults, "params"},
                allowed={*self.spec.all_defaults, "params", "param_names"},
                loc=loc,
            )
            ids = saved["params"]
            if not _is_list(ids) or not all(_is_whole_number(i) for i in ids):
                raise InvalidStateDictError("params must be a list of integer indices", loc=(*loc, "params"))
            ids = [int(i) for i in ids]
            if len(ids) != len(names):
                raise InvalidStateDictError(
                    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group",
                    loc=(*loc, "params"),
                )
            if "param_names" in saved:
                _check_param_names(saved["param_names"], names, loc=(*loc, "param_names"))
            for param_id, name in zip(ids, names, strict=True):
                if param_id in names_by_id:
                    raise InvalidStateDictError(f"param index {param_id} is listed twice", loc=(*loc, "params"))
                names_by_id[param_id] = name
            filled = {**self.spec.all_defaults, **{key: value for key, value in saved.items() if key != "param_names"}}
            with _located(*loc):
                hyperparams = self._parse_hyperparams(filled)
            groups.append({**hyperparams.to_group(), "params": list(names)})
            hyperparams_by_name.update(dict.fromkeys(names, hyperparams))
        return groups, names_by_id, hyperparams_by_name

    def _loaded_states(
        self, saved_state: object, names_by_id: Mapping[int, str], hyperparams_by_name: Mapping[str, H]
    ) -> dict[str, S]:
        if not isinstance(saved_state, Mapping):
            raise InvalidStateDictError("state must map param indices to their state", loc=("state",))
        states: dict[str, S] = {}
        for key, entry in saved_state.items():
            loc: Loc = ("state", _shown(key))
            param_id = _param_index(key, loc)
            name = names_by_id.get(param_id) if param_id is not None else None
            if name is None:
                raise InvalidStateDictError(
                    f"state has key {loc[1]!r}, which names no param of the param_groups", loc=loc
                )
            counter = {"step"} if self.spec.step_in_state else set()
            _require_keys(
                entry,
                required={*counter, *self._required_state_arrays(hyperparams_by_name[name])},
                allowed={*counter, *self.state_arrays},
                loc=loc,
            )
            step = entry.get("step", 0)
            if not is_number(step) or not math.isfinite(step) or step < 0 or step != int(step):
                raise InvalidStateDictError(f"step must be a whole number >= 0, got {step!r}", loc=(*loc, "step"))
            arrays = {
                array_key: _checked_array(
                    entry[array_key],
                    like=self._params[name],
                    what=f"state {array_key!r} of param {name!r}",
                    loc=(*loc, array_key),
                    error=InvalidStateDictError,
                    copy=True,
                )
                for array_key in self.state_arrays
                if array_key in entry
            }
            states[name] = self._make_state(int(step), arrays)
        return states


def _group_specs(params: object) -> list[ParamGroupSpec]:
    if isinstance(params, Mapping):
        specs: list[ParamGroupSpec] = [{"params": params}]
    elif _is_list(params) and all(isinstance(spec, Mapping) and "params" in spec for spec in params):
        specs = list(params)
    else:
        raise InvalidParameterError(
            "params must be a dict of name -> array, or a list of groups {'params': {...}, ...}", loc=("params",)
        )
    if not specs or all(isinstance(spec["params"], Mapping) and not spec["params"] for spec in specs):
        raise InvalidParameterError("optimizer got an empty parameter list", loc=("params",))
    return specs


def _is_list(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _is_whole_number(value: object) -> bool:
    """An int, or a float with no fractional part (JSON has one kind of number: 3.0 is the integer 3)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _param_index(key: object, loc: Loc) -> int | None:
    """A state key as a param index: an int, or its decimal digits (at most ``MAX_INDEX_DIGITS``: Python
    refuses to read more than 4300 digits as an int, and no index needs 20)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if not isinstance(key, str) or not (key.isascii() and key.isdecimal()):
        return None
    if len(key) > MAX_INDEX_DIGITS:
        raise InvalidStateDictError(
            f"state key {loc[-1]!r} has {len(key)} digits; a param index has at most {MAX_INDEX_DIGITS}", loc=loc
        )
    return int(key)


def _shown(key: object) -> str:
    """A state key as an error names it: long ones cut short."""
    text = str(key) if isinstance(key, str | int) and not isinstance(key, bool) else repr(key)
    return text if len(text) <= SHOWN_KEY_CHARS else f"{text[:SHOWN_KEY_CHARS]}…"


def _check_param_names(param_names: object, names: list[str], *, loc: Loc) -> None:
    """A saved group's ``param_names`` is, as in torch, a list of the names of its params: this group's."""
    if not _is_list(param_names) or not all(isinstance(name, str) for name in param_names):
        raise InvalidStateDictError(
            f"param_names must be a list of the group's param names (strings), got {_described(param_names)}",
            loc=loc,
        )
    if list(param_names) != names:
        raise InvalidStateDictError(
            f"param_names {list(param_names)!r} do not match this optimizer's {names!r}", loc=loc
        )


def _described(value: object) -> str:
    if _is_list(value):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a list holding {', '.join(kinds)}"
    return type(value).__name__


def _require_keys(mapping: object, *, required: set[str], allowed: set[str], loc: Loc) -> None:
    if not isinstance(mapping, Mapping):
        raise InvalidStateDictError(f"expected an object, got {type(mapping).__name__}", loc=loc)
    unknown = sorted(str(key) for key in mapping if key not in allowed)
    if unknown:
        raise InvalidStateDictError(f"unknown key {unknown[0]!r}", loc=(*loc, unknown[0]))
    missing = sorted(required - set(mapping))
    if missing:
        raise InvalidStateDictError(f"missing key {missing[0]!r}", loc=(*loc, missing[0]))


def _checked_array(
    value: object, *, like: np.ndarray, what: str, loc: Loc, error: type[OptimCoreError], copy: bool = False
) -> np.ndarray:
    """``value`` as a finite C-contiguous array of ``like``'s dtype and shape; a new one if ``copy``."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise error(f"{what} is not a rectangular array of numbers: {exc}", loc=loc) from None
    if array.dtype.kind != "f":
        raise error(f"{what} must hold floats, got dtype {array.dtype}", loc=loc)
    if array.shape != like.shape:
        raise error(f"{what} has shape {list(array.shape)}, expected {list(like.shape)}", loc=loc)
    with np.errstate(over="ignore"):
        # Values beyond the range of like's dtype become infinite here, and are refused below.
        array = np.array(array, dtype=like.dtype, order="C", copy=True if copy else None)
    if not all_finite(array):
        raise error(f"{what} holds NaN or infinite values (or values beyond {like.dtype}'s range)", loc=loc)
    return array


def _to_lists(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _to_lists(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_lists(item) for item in value]
    return value


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
