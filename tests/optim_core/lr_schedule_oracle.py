"""torch.optim.lr_scheduler as the reference for optim_core's schedules.

Builds a torch optimizer whose groups hold the same lrs (and momentum or betas) as a list of
optim_core group dicts, and the torch scheduler a config describes, from the config as it was
given (so that torch fills in its own defaults); steps both; and compares them value for value,
with types and the signs of zeros.

Importing this module needs torch; test modules import it only after skipping without torch.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

OptimizerKind = Literal["SGD", "Adam", "Rprop"]
"""SGD groups keep a ``momentum``, Adam groups ``betas``, Rprop groups neither."""


def torch_optimizer(kind: OptimizerKind, groups: Sequence[Mapping[str, Any]]) -> torch.optim.Optimizer:
    """A torch optimizer with one small param per group and each group's lr, momentum or betas."""
    torch_groups = [
        {"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))], **dict(group)} for group in groups
    ]
    optimizers: dict[OptimizerKind, type[torch.optim.SGD] | type[torch.optim.Adam] | type[torch.optim.Rprop]] = {
        "SGD": torch.optim.SGD,
        "Adam": torch.optim.Adam,
        "Rprop": torch.optim.Rprop,
    }
    return optimizers[kind](torch_groups, foreach=False)


def torch_scheduler(config: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> Any:
    """torch's scheduler for ``config`` (``{"name": ..., **arguments}``), on ``optimizer``."""
    arguments = {key: value for key, value in config.items() if key != "name"}
    schedulers = arguments.get("schedulers")
    if config["name"] == "SequentialLR" and isinstance(schedulers, list):
        # Configs become schedulers; anything else goes to torch as it is, for torch to judge.
        arguments["schedulers"] = [
            torch_scheduler(child, optimizer) if isinstance(child, dict) and "name" in child else child
            for child in schedulers
        ]
    return getattr(torch.optim.lr_scheduler, config["name"])(optimizer, **arguments)


def step_torch(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """An optimizer step (no param has a gradient, so nothing moves) and then a scheduler step, in
    the order torch asks for."""
    optimizer.step()
    scheduler.step()


def set_lrs(optimizer: torch.optim.Optimizer, groups: Sequence[dict[str, Any]], lrs: Sequence[float]) -> None:
    """A user's change to each group's lr between steps, made on both sides."""
    for torch_group, group, lr in zip(optimizer.param_groups, groups, lrs, strict=True):
        torch_group["lr"] = group["lr"] = lr


def assert_identical(ours: Any, theirs: Any, what: str) -> None:
    """Equal, with the same types throughout (a Counter is a Counter), dict keys in the same
    order, and floats equal bit for bit: the same sign of zero, nan where torch has nan."""
    assert type(ours) is type(theirs), f"{what}: {type(ours).__name__} {ours!r} != {type(theirs).__name__} {theirs!r}"
    if isinstance(ours, dict):
        assert list(ours) == list(theirs), f"{what}: keys {list(ours)} != {list(theirs)}"
        for key in ours:
            assert_identical(ours[key], theirs[key], f"{what}[{key!r}]")
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), f"{what}: length {len(ours)} != {len(theirs)}"
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_identical(mine, other, f"{what}[{index}]")
    elif isinstance(ours, float):
        same = ours == theirs and math.copysign(1.0, ours) == math.copysign(1.0, theirs)
        assert same or (math.isnan(ours) and math.isnan(theirs)), f"{what}: {ours!r} != {theirs!r}"
    else:
        assert ours == theirs, f"{what}: {ours!r} != {theirs!r}"


def assert_groups_agree(groups: Sequence[Mapping[str, Any]], optimizer: torch.optim.Optimizer, what: str) -> None:
    """Every key of our groups (lr, initial_lr, OneCycleLR's, momentum or betas) holds torch's value."""
    assert len(groups) == len(optimizer.param_groups)
    for index, (group, torch_group) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        for key, value in group.items():
            assert_identical(value, torch_group[key], f"{what}: param_groups[{index}][{key!r}]")


def torch_group_values(optimizer: torch.optim.Optimizer, keys: Sequence[str]) -> list[dict[str, Any]]:
    """torch's groups, cut down to ``keys`` (those our groups hold)."""
    return [{key: group[key] for key in keys if key in group} for group in optimizer.param_groups]
