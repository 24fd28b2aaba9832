"""The reduction of a synchronous round and the weighting of a stale asynchronous step, as docs/api.md
states them, in plain numpy (the tests in-process use it too, without torch)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Contribution:
    worker: str
    weight: float
    grads: Mapping[str, np.ndarray]


def weighted_mean(contributions: Iterable[Contribution], params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``sum(w_i * g_i for i sorted by worker) / sum(w_i)`` per param, in float64, cast to the params' dtype."""
    ordered = sorted(contributions, key=lambda contribution: contribution.worker)
    mean = {}
    for name, param in params.items():
        holders = [contribution for contribution in ordered if name in contribution.grads]
        if not holders:
            continue
        total = np.zeros(param.shape, dtype=np.float64)
        total_weight = 0.0
        for contribution in holders:
            grad = np.asarray(contribution.grads[name]).astype(param.dtype).astype(np.float64)
            total = total + np.float64(contribution.weight) * grad
            total_weight += contribution.weight
        mean[name] = (total / total_weight).astype(param.dtype)
    return mean


def inverse_staleness_weighted(grads: Mapping[str, np.ndarray], staleness: int) -> dict[str, np.ndarray]:
    """An asynchronous step's gradient under ``"staleness_weighting": "inverse"``: times 1/(1+staleness) in float64."""
    factor = 1.0 / (1.0 + staleness)
    return {name: (grad.astype(np.float64) * factor).astype(grad.dtype) for name, grad in grads.items()}
