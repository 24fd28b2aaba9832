"""Combining many workers' gradients into one step's: the weighted mean of a synchronous round, and the
scaling of a stale gradient. Pure numpy; the order of every sum is fixed, so a run can be replayed exactly.

The weighted mean of a round, per param, over the contributions that hold it::

    mean = (w_1 * g_1 + w_2 * g_2 + ... + w_k * g_k) / (w_1 + ... + w_k)

in float64, one addition at a time, the contributions in ascending order of their worker id, then cast
to the params' dtype. For example::

    >>> import numpy as np
    >>> weighted_mean([("a", 1.0, {"w": np.float32([1, 2])}), ("b", 3.0, {"w": np.float32([3, 6])})],
    ...               {"w": np.dtype(np.float32)})["w"]
    array([2.5, 5. ], dtype=float32)
"""

from collections.abc import Mapping, Sequence

import numpy as np

Contribution = tuple[str, float, Mapping[str, np.ndarray]]
"""A worker's id, its weight, and its gradients by param name."""


def weighted_mean(contributions: Sequence[Contribution], dtypes: Mapping[str, np.dtype]) -> dict[str, np.ndarray]:
    """The weighted mean of the contributions' gradients, per param, cast to ``dtypes[name]``; a param no
    contribution holds is left out. The contributions are summed in ascending order of worker id,
    whatever order they are given in."""
    totals: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for _, weight, grads in sorted(contributions, key=lambda contribution: contribution[0]):
        for name, grad in grads.items():
            weighted = np.asarray(grad, dtype=np.float64) * weight
            if name in totals:
                totals[name] += weighted
                weights[name] += weight
            else:
                totals[name], weights[name] = weighted, weight
    return {name: (totals[name] / weights[name]).astype(dtypes[name], copy=False) for name in totals}


def staleness_scaled(grads: Mapping[str, np.ndarray], staleness: int) -> dict[str, np.ndarray]:
    """``grads`` times ``1 / (1 + staleness)``, in float64, cast back to each gradient's dtype."""
    factor = 1.0 / (1.0 + staleness)
    return {
        name: (np.asarray(grad, dtype=np.float64) * factor).astype(grad.dtype, copy=False)
        for name, grad in grads.items()
    }
