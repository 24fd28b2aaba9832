"""The model the workers train (8 -> 16 -> 1, tanh), the data the test makes, and one gradient, in torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

INPUTS, HIDDEN, OUTPUTS = 8, 16, 1


def make_model(dtype: torch.dtype, seed: int = 0) -> torch.nn.Sequential:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = torch.nn.Sequential(
            torch.nn.Linear(INPUTS, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, OUTPUTS)
        ).to(dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def initial_params(dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The model's params at initialisation, by torch's names, in its order."""
    model = make_model(torch_dtype(dtype), seed)
    return {name: param.detach().numpy().copy() for name, param in model.named_parameters()}


def torch_dtype(dtype: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    return dtypes[dtype]


def write_shard(path: Path, *, examples: int, seed: int, dtype: str) -> None:
    """A worker's data: inputs, and targets of a fixed teacher function with some noise."""
    rng = np.random.default_rng(seed)
    teacher = np.random.default_rng(12345).standard_normal((INPUTS, OUTPUTS))
    inputs = rng.standard_normal((examples, INPUTS))
    targets = np.sin(inputs @ teacher) + 0.1 * rng.standard_normal((examples, OUTPUTS))
    np.savez(path, inputs=inputs.astype(dtype), targets=targets.astype(dtype))


class Shard:
    """A worker's examples, taken ``batch_size`` at a time; batch ``k`` is the same whenever it is asked for."""

    def __init__(self, path: Path, batch_size: int) -> None:
        with np.load(path) as data:
            self.inputs = torch.from_numpy(data["inputs"])
            self.targets = torch.from_numpy(data["targets"])
        self.batch_size = batch_size
        self.batches = len(self.inputs) // batch_size
        assert self.batches > 0, f"a shard of {len(self.inputs)} examples holds no batch of {batch_size}"

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = (index % self.batches) * self.batch_size
        return self.inputs[start : start + self.batch_size], self.targets[start : start + self.batch_size]


def gradients(
    model: torch.nn.Module, params: dict[str, np.ndarray], batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[dict[str, np.ndarray], float]:
    """The gradients of the mean squared error at ``params`` on ``batch``, by param name, and the loss."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.from_numpy(params[name]))
    model.zero_grad(set_to_none=True)
    inputs, targets = batch
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        grads[name] = param.grad.detach().numpy().copy()
    return grads, float(loss.item())
