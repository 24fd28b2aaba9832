"""Clipping by global norm against torch.nn.utils.clip_grad_norm_, live."""

import math

import numpy as np
import pytest
import torch

from optim_core.clipping import checked_clipping, clip_grad_norm
from optim_core.errors import InvalidHyperparameterError


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(5))
def test_the_clipped_gradients_and_the_total_norm_are_torchs(norm_type: float, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grads: dict[str, np.ndarray] = {
        f"p{i}": (rng.standard_normal(rng.integers(1, 500)) * rng.uniform(0.01, 10)).astype(dtype) for i in range(3)
    }
    grads["scalar"] = np.asarray(rng.standard_normal(), dtype=dtype)
    max_norm = float(rng.uniform(0.1, 20))
    tensors = [
        torch.nn.Parameter(torch.zeros(value.shape, dtype=torch.from_numpy(value).dtype)) for value in grads.values()
    ]
    for tensor, value in zip(tensors, grads.values(), strict=True):
        tensor.grad = torch.from_numpy(value.copy())
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type)
    clipped, our_total, _ = clip_grad_norm(grads, max_norm=max_norm, norm_type=norm_type)
    # Each norm is rounded once from float64 here; torch sums in the dtype itself: a few units of roundoff apart.
    bound = 16 * float(np.finfo(dtype).eps)
    assert float(our_total) == pytest.approx(float(total), rel=bound)
    for tensor, (name, value) in zip(tensors, clipped.items(), strict=True):
        assert value.dtype == dtype
        assert tensor.grad is not None
        expected = tensor.grad.numpy()
        largest = max(float(np.abs(expected).max()), float(np.finfo(dtype).tiny))
        assert np.abs(value - expected).max() <= bound * largest, name
    assert all(not np.shares_memory(clipped[name], grads[name]) for name in grads)


def test_gradients_within_the_norm_are_left_as_they_are() -> None:
    grads = {"w": np.array([0.3, 0.4], dtype=np.float32)}
    clipped, total, coef = clip_grad_norm(grads, max_norm=1.0, norm_type=2.0)
    assert float(coef) == 1.0
    assert clipped["w"].tolist() == grads["w"].tolist()
    assert float(total) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("max_norm", "norm_type", "field"),
    [
        (-1.0, 2.0, "max_norm"),
        (math.nan, 2.0, "max_norm"),
        (True, 2.0, "max_norm"),
        (1.0, 0.0, "norm_type"),
        (1.0, -2.0, "norm_type"),
        (1.0, "two", "norm_type"),
        (1.0, math.nan, "norm_type"),
    ],
)
def test_bad_settings_name_the_field(max_norm: object, norm_type: object, field: str) -> None:
    with pytest.raises(InvalidHyperparameterError, match=field) as raised:
        checked_clipping(max_norm, norm_type)
    assert raised.value.loc == ("clip_grad_norm", field)
