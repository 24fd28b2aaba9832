"""Gradient clipping by global norm, as ``torch.nn.utils.clip_grad_norm_`` does it before ``optimizer.step()``.

Over all the gradients together::

    total_norm = ‖(‖g_1‖_p, ‖g_2‖_p, ...)‖_p          (p = norm_type; for "inf", the largest |g|)
    coef = min(1, max_norm / (total_norm + 1e-6))
    g_i ← g_i · coef

``total_norm``, ``coef`` and the products are in the gradients' dtype, as torch computes them; each
gradient's own norm is taken in float64 and rounded once to that dtype (torch sums in the dtype itself,
so a float32 norm may differ from torch's in its last bit). For example::

    >>> import numpy as np
    >>> clipped, total, coef = clip_grad_norm({"w": np.float32([3.0, 4.0])}, max_norm=1.0, norm_type=2.0)
    >>> float(total), [round(float(value), 6) for value in clipped["w"]]
    (5.0, [0.6, 0.8])
"""

import math
from collections.abc import Mapping

import numpy as np

from optim_core.errors import InvalidHyperparameterError

EPSILON = 1e-6
"""torch's: added to the total norm before dividing by it."""


def checked_clipping(max_norm: object, norm_type: object) -> tuple[float, float]:
    """``max_norm`` and ``norm_type`` (a positive number, or "inf"), validated; ``InvalidHyperparameterError``."""
    if (
        isinstance(max_norm, bool)
        or not isinstance(max_norm, int | float)
        or not math.isfinite(max_norm)
        or max_norm < 0
    ):
        raise InvalidHyperparameterError(
            f"Invalid max_norm: {max_norm!r} (a finite number >= 0)", loc=("clip_grad_norm", "max_norm")
        )
    if norm_type == "inf":
        return float(max_norm), math.inf
    if (
        isinstance(norm_type, bool)
        or not isinstance(norm_type, int | float)
        or not (norm_type > 0)
        or not (math.isfinite(norm_type) or norm_type == math.inf)
    ):
        raise InvalidHyperparameterError(
            f"Invalid norm_type: {norm_type!r} (a number > 0, or 'inf')", loc=("clip_grad_norm", "norm_type")
        )
    return float(max_norm), float(norm_type)


@np.errstate(over="ignore", invalid="ignore")  # as torch's: a p-th power past the range makes the norm infinite
def _norm(values: np.ndarray, norm_type: float) -> float:
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return 0.0
    if norm_type == math.inf:
        return float(np.max(np.abs(flat)))
    return float(np.linalg.norm(flat, ord=norm_type))


def clip_grad_norm(
    grads: Mapping[str, np.ndarray], *, max_norm: float, norm_type: float
) -> tuple[dict[str, np.ndarray], np.floating, np.floating]:
    """The gradients scaled to a total norm of at most ``max_norm`` (new arrays; the inputs are not changed),
    the total norm before clipping, and the factor they were multiplied by, both in the gradients' dtype."""
    if not grads:
        return {}, np.float64(0.0), np.float64(1.0)
    dtype = np.result_type(*grads.values())
    norms = np.array([_norm(grad, norm_type) for grad in grads.values()], dtype=dtype)
    total = dtype.type(_norm(norms, norm_type))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        coef = dtype.type(max_norm) / (total + dtype.type(EPSILON))
    coef = min(coef, dtype.type(1.0))
    return {name: np.multiply(grad, coef, dtype=dtype) for name, grad in grads.items()}, total, coef
