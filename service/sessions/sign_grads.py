"""Sign-only gradients: an Rprop session accepts int8 gradients holding only -1, 0 and 1.

Rprop reads nothing of a gradient but its sign (the sign of its product with the previous one, and
the sign of the update), so ``sign(g)`` steps exactly as ``g`` does, a quarter of float32's bytes and an
eighth of float64's. The optimizer casts them to the params' dtype like any gradient; the state's
``prev`` then holds signs rather than magnitudes, from which torch's Rprop computes the same next step.
"""

import numpy as np

from service.sessions.errors import InvalidRequest

SIGN_DTYPE = np.dtype(np.int8)
SIGN_OPTIMIZERS = frozenset({"rprop"})
"""The optimizers whose steps depend on their gradients' signs alone."""


def sign_grads_cast(grads: dict[str, np.ndarray], *, optimizer: str, dtype: str) -> dict[str, np.ndarray]:
    """The gradients with any of int8 signs cast (exactly) to the params' dtype; ``InvalidRequest`` unless the
    optimizer reads signs alone and each holds only -1, 0 and 1."""
    if all(grad.dtype != SIGN_DTYPE for grad in grads.values()):
        return grads
    cast = dict(grads)
    for name, grad in grads.items():
        if grad.dtype != SIGN_DTYPE:
            continue
        loc = ("body", "grads", name)
        if optimizer not in SIGN_OPTIMIZERS:
            raise InvalidRequest(
                loc, f"int8 gradients are signs, which only an Rprop session takes; this session is {optimizer}"
            )
        if grad.size and (int(grad.min()) < -1 or int(grad.max()) > 1):
            raise InvalidRequest(loc, f"an int8 gradient holds signs only (-1, 0, 1); {name!r} holds other values")
        cast[name] = grad.astype(dtype)
    return cast
