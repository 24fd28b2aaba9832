"""Small torch models and data, and a training step that works for torch.optim and the remote optimizers alike."""

from __future__ import annotations

import copy
from typing import Any

import torch

from tests import optimizers


def tolerances(optimizer: str, dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` within which a remote optimizer follows torch.optim (tests/optimizers.py)."""
    return optimizers.tolerances(optimizer, str(dtype).removeprefix("torch."))


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(dtype)


def twin(model: torch.nn.Module) -> Any:
    """An independent copy holding the same values (for the run with torch.optim)."""
    return copy.deepcopy(model)


def batches(count: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, generator=generator, dtype=dtype), torch.randn(8, 2, generator=generator, dtype=dtype))
        for _ in range(count)
    ]


def train_step(model: torch.nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.item())


def assert_same_params(
    actual: torch.nn.Module, expected: torch.nn.Module, rtol: float = 0.0, atol: float = 0.0
) -> None:
    """Equal bit for bit when both tolerances are 0, else within them."""
    for (name, got), (_, want) in zip(actual.named_parameters(), expected.named_parameters(), strict=True):
        if rtol == atol == 0.0:
            assert got.dtype == want.dtype
            assert torch.equal(got, want), f"{name}: {got} != {want} (max diff {(got - want).abs().max()})"
        else:

            def message(text: str, param: str = name) -> str:
                return f"{param}: {text}"

            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=message)
