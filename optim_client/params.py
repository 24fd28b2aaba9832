"""The user's params, torch tensors or numpy arrays, bound to the names the service knows them by.

The forms torch.optim takes are accepted: ``model.named_parameters()`` (names kept),
``model.parameters()`` (named "0", "1", ... by position), a list of param-group dicts with
per-group hyperparameters, and, for numpy, a dict of name -> array.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from optim_client import torch_support
from optim_client.torch_support import is_tensor
from optim_client.values import DTYPES


@dataclass(frozen=True)
class Param:
    """One param: its name on the service and the user's tensor or array, which the SDK writes in place."""

    name: str
    target: Any

    def values(self) -> np.ndarray:
        if is_tensor(self.target):
            return torch_support.tensor_to_numpy(self.target)
        values: np.ndarray = self.target
        return values

    def grad(self) -> np.ndarray | None:
        """The tensor's ``.grad`` (None when it has none); numpy arrays carry no grad."""
        return torch_support.grad_of(self.target) if is_tensor(self.target) else None

    def assign(self, values: np.ndarray) -> None:
        if is_tensor(self.target):
            torch_support.copy_into(self.target, values)
        else:
            np.copyto(self.target, values)

    def zero_grad(self, *, set_to_none: bool) -> None:
        if is_tensor(self.target):
            torch_support.zero_grad(self.target, set_to_none=set_to_none)


@dataclass(frozen=True)
class ParamGroup:
    params: list[Param]
    options: dict[str, Any]
    """Hyperparameters that override the optimizer's defaults for this group."""


@dataclass(frozen=True)
class BoundParams:
    groups: list[ParamGroup]
    named: bool
    """Whether the user named the params (torch's state_dict has ``param_names`` only then)."""
    dtype: np.dtype[Any]

    @property
    def all(self) -> list[Param]:
        """Every param, in the order of the state_dict's indices."""
        return [param for group in self.groups for param in group.params]

    @property
    def are_tensors(self) -> bool:
        return is_tensor(self.groups[0].params[0].target)


def bind_params(params: object) -> BoundParams:
    """The params in any form torch.optim takes (or a dict of numpy arrays), checked and named."""
    if isinstance(params, Mapping):
        specs: list[tuple[object, dict[str, Any]]] = [(params, {})]
    elif is_tensor(params) or isinstance(params, np.ndarray) or not isinstance(params, Iterable):
        raise TypeError(
            "params should be an iterable of tensors, of (name, tensor) pairs or of dicts, "
            f"or a dict of name -> array; got {type(params).__name__}"
        )
    else:
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        if all(isinstance(item, Mapping) for item in items):
            specs = [(item["params"], {key: value for key, value in item.items() if key != "params"}) for item in items]
        else:
            specs = [(items, {})]
    entries_by_group = [_entries(raw) for raw, _ in specs]
    flat = [entry for entries in entries_by_group for entry in entries]
    named = _check_naming(flat)
    names = [name if name is not None else str(index) for index, (name, _) in enumerate(flat)]
    _check_values([value for _, value in flat], names)
    groups, start = [], 0
    for entries, (_, options) in zip(entries_by_group, specs, strict=True):
        members = [Param(names[start + offset], value) for offset, (_, value) in enumerate(entries)]
        options.pop("param_names", None)
        groups.append(ParamGroup(members, options))
        start += len(entries)
    return BoundParams(groups, named, _common_dtype(groups))


def _entries(raw: object) -> list[tuple[str | None, Any]]:
    """(name or None, value) for each param of one group."""
    if isinstance(raw, Mapping):
        return [(str(name), value) for name, value in raw.items()]
    if is_tensor(raw) or isinstance(raw, np.ndarray):
        return [(None, raw)]
    if not isinstance(raw, Iterable):
        raise TypeError(f"a param group's params should be an iterable or a dict, not {type(raw).__name__}")
    return [
        (item[0], item[1]) if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) else (None, item)
        for item in raw
    ]


def _check_naming(entries: list[tuple[str | None, Any]]) -> bool:
    named = [name is not None for name, _ in entries]
    if any(named) and not all(named):
        raise ValueError("all params must be (name, tensor) pairs, or none of them")
    seen: set[str] = set()
    for name, _ in entries:
        if name is not None and name in seen:
            raise ValueError(f"param name {name!r} appears more than once")
        if name is not None:
            seen.add(name)
    return bool(named) and all(named)


def _check_values(values: list[Any], names: list[str]) -> None:
    if len({id(value) for value in values}) != len(values):
        raise ValueError("some parameters appear in more than one parameter group")
    kinds = {is_tensor(value) for value in values}
    if len(kinds) > 1:
        raise ValueError("params must be all torch tensors or all numpy arrays")
    for name, value in zip(names, values, strict=True):
        if is_tensor(value):
            if not value.is_leaf:
                raise ValueError(f"can't optimize a non-leaf Tensor (param {name!r})")
        elif isinstance(value, np.ndarray):
            if not value.flags.writeable:
                raise ValueError(f"param {name!r} is a read-only array; the optimizer writes its updates into it")
        else:
            raise TypeError(f"param {name!r} is a {type(value).__name__}; give torch tensors or numpy arrays")


def _common_dtype(groups: list[ParamGroup]) -> np.dtype[Any]:
    dtypes = {param.name: _dtype_of(param) for group in groups for param in group.params}
    first = next(iter(dtypes))
    for name, dtype in dtypes.items():
        if dtype != dtypes[first]:
            raise ValueError(
                f"every param must have the session's one dtype: {first!r} is {dtypes[first]}, {name!r} is {dtype}"
            )
    return dtypes[first]


def _dtype_of(param: Param) -> np.dtype[Any]:
    try:
        dtype = param.values().dtype
    except ValueError as error:
        raise ValueError(f"param {param.name!r}: {error}") from None
    if dtype not in DTYPES.values():
        raise ValueError(f"param {param.name!r} is {dtype}; the service holds float32 or float64")
    return dtype
