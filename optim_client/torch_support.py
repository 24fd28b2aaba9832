"""Everything that touches torch, which stays optional.

torch is never imported here unless the caller has imported it already: a value can only be a
tensor when torch is loaded, so ``sys.modules`` answers "is this a tensor?" without importing it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

if TYPE_CHECKING:
    import torch


def is_tensor(value: object) -> TypeGuard[torch.Tensor]:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as a numpy array (a view when it is on the CPU; treat it as read-only)."""
    import torch

    if tensor.is_sparse:
        raise ValueError("sparse tensors are not supported; the service takes dense arrays")
    if tensor.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"tensor dtype {tensor.dtype} is not supported; the service holds float32 or float64")
    return tensor.detach().cpu().numpy()


def copy_into(tensor: torch.Tensor, values: np.ndarray) -> None:
    """Write ``values`` into ``tensor`` in place, outside autograd, as torch.optim's updates do."""
    import torch

    source = torch.from_numpy(values if values.flags.writeable else values.copy())
    with torch.no_grad():
        tensor.copy_(source)


def grad_of(tensor: torch.Tensor) -> np.ndarray | None:
    grad = tensor.grad
    return None if grad is None else tensor_to_numpy(grad)


def zero_grad(tensor: torch.Tensor, *, set_to_none: bool) -> None:
    """torch.optim.Optimizer.zero_grad for one param."""
    if tensor.grad is None:
        return
    if set_to_none:
        tensor.grad = None
        return
    if tensor.grad.grad_fn is not None:
        tensor.grad.detach_()
    else:
        tensor.grad.requires_grad_(False)
    tensor.grad.zero_()


def enable_grad() -> contextlib.AbstractContextManager[Any]:
    """torch.enable_grad() when torch is loaded (a closure computing a loss needs it), else nothing."""
    if "torch" not in sys.modules:
        return contextlib.nullcontext()
    import torch

    return torch.enable_grad()


def state_dict_to_torch(state_dict: Mapping[str, Any], params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """A torch-layout state_dict holding numpy arrays, with tensors instead, as torch.optim's own has them.

    State arrays take their param's dtype and device; ``step`` is a scalar tensor of torch's scalar dtype.
    """
    import torch

    step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    state: dict[int, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        param = params[index]
        state[index] = {
            key: torch.tensor(value, dtype=step_dtype)
            if key == "step"
            else torch.from_numpy(np.array(value, copy=True)).to(dtype=param.dtype, device=param.device)
            for key, value in entry.items()
        }
    return {"state": state, "param_groups": state_dict["param_groups"]}
