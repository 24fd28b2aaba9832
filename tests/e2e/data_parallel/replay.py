"""What a data-parallel session must hold, computed from the workers' journals alone.

A synchronous round applies one step to the weighted mean of its contributions, reduced as the API
states it (docs/api.md, "The reduction"): each gradient cast to the params' dtype, then per param in
float64, from zero, ``+ weight * grad`` one contribution at a time in ascending order of ``worker``,
divided by the total weight, cast back. The step itself is torch.optim's (the parity oracle), and
optim_core's too, which the server runs, so that RMSprop is checked bit for bit as well as within
torch's rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tests.optimizers import core_optimizer, tolerances, torch_name


class TorchReplay:
    """torch.optim's optimizer over copies of the initial params, stepped with given gradients."""

    def __init__(self, optimizer: str, hyperparameters: Mapping[str, Any], initial: Mapping[str, np.ndarray]) -> None:
        self.tensors = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in initial.items()}
        optimizer_class = getattr(torch.optim, torch_name(optimizer))
        self.optimizer = optimizer_class(list(self.tensors.values()), **hyperparameters)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        for name, tensor in self.tensors.items():
            tensor.grad = torch.from_numpy(grads[name].copy()) if name in grads else None
        self.optimizer.step()

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {name: tensor.detach().numpy().copy() for name, tensor in self.tensors.items()}


class CoreReplay:
    """optim_core's optimizer, which the server runs: with the same gradients, the same bits."""

    def __init__(self, optimizer: str, hyperparameters: Mapping[str, Any], initial: Mapping[str, np.ndarray]) -> None:
        copies = {name: value.copy() for name, value in initial.items()}
        self.optimizer = core_optimizer(optimizer, copies, hyperparameters)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        self.optimizer.step(dict(grads))

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {name: np.array(value) for name, value in self.optimizer.params.items()}


class Replay:
    """Both replays in step, and the comparison of what the server answered with them."""

    def __init__(
        self, optimizer: str, hyperparameters: Mapping[str, Any], initial: Mapping[str, np.ndarray], dtype: str
    ) -> None:
        self.optimizer = optimizer
        self.dtype = dtype
        self.torch = TorchReplay(optimizer, hyperparameters, initial)
        self.core = CoreReplay(optimizer, hyperparameters, initial)
        self.steps = 0

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        self.torch.step(grads)
        self.core.step(grads)
        self.steps += 1

    def assert_holds(self, actual: Mapping[str, np.ndarray], where: str) -> None:
        """``actual`` equals torch's params (bit for bit, or within the optimizer's rounding) and optim_core's bits."""
        expected = self.torch.params
        assert sorted(actual) == sorted(expected), f"{where}: params {sorted(actual)}, expected {sorted(expected)}"
        rtol, atol = tolerances(self.optimizer, self.dtype)
        for name, value in expected.items():
            got = np.asarray(actual[name])
            assert got.dtype == value.dtype, f"{where}, {name!r}: dtype {got.dtype}, expected {value.dtype}"
            if rtol == atol == 0.0:
                assert_same_bits(got, value, f"{where}, {name!r} against torch.optim.{torch_name(self.optimizer)}")
            else:
                np.testing.assert_allclose(
                    got, value, rtol=rtol, atol=atol, err_msg=f"{where}, {name!r} against torch.optim"
                )
        for name, value in self.core.params.items():
            assert_same_bits(np.asarray(actual[name]), value, f"{where}, {name!r} against optim_core")


def assert_same_bits(actual: np.ndarray, expected: np.ndarray, where: str) -> None:
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape}, expected {expected.shape}"
    if actual.tobytes() != expected.tobytes():
        differ = np.flatnonzero(actual.reshape(-1) != expected.reshape(-1))
        first = int(differ[0]) if differ.size else 0
        raise AssertionError(
            f"{where}: {differ.size} of {expected.size} elements differ; the first at flat index {first}: "
            f"{actual.reshape(-1)[first]!r}, expected {expected.reshape(-1)[first]!r}"
        )
