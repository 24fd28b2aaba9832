"""The base class of the remote optimizers: ``torch.optim.Optimizer`` when torch is installed, so that whatever
takes a torch optimizer takes them (torch's LR schedulers, step hooks, ``isinstance`` checks); without torch, a
stand-in with the same constructor.

Either way the constructor is given the param groups and the defaults, and builds ``param_groups`` by calling
``add_param_group`` once for each group, which the remote optimizer answers. torch's per-param ``state`` stays
empty: the state is on the service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

__all__ = ["OptimizerBase", "StandInOptimizer", "registered_hooks"]


class StandInOptimizer:
    """What the remote optimizers take from ``torch.optim.Optimizer`` when torch is not installed."""

    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]

    def __init__(self, params: Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self.param_groups = []
        for group in params:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise NotImplementedError


if TYPE_CHECKING:
    from torch.optim import Optimizer as OptimizerBase
else:
    try:
        from torch.optim import Optimizer as OptimizerBase
    except ImportError:
        OptimizerBase = StandInOptimizer


def registered_hooks(optimizer: object, registry: str) -> list[Callable[..., Any]]:
    """The hooks in one of ``torch.optim.Optimizer``'s registries (``_optimizer_state_dict_pre_hooks``, ...), in
    the order torch calls them; none without torch."""
    hooks: dict[int, Callable[..., Any]] = getattr(optimizer, registry, {})
    return list(hooks.values())
