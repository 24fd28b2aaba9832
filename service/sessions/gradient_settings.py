"""A session's gradient settings, applied to every step's gradients before the optimizer sees them:
``clip_grad_norm`` (``{"max_norm": x, "norm_type": 2.0}``, as ``torch.nn.utils.clip_grad_norm_``) and
``nonfinite`` ("reject": a non-finite gradient is refused, 422; "skip": the step is answered, unchanged
and not applied, as torch's ``GradScaler`` skips it)."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from optim_core import OptimCoreError
from optim_core.checks import all_finite
from optim_core.clipping import checked_clipping, clip_grad_norm
from service.sessions.errors import InvalidRequest
from service.sessions.optimizers import core_error

NONFINITE_POLICIES = ("reject", "skip")


def checked_clip_grad_norm(settings: object, *, loc: tuple[str, ...] = ("body",)) -> dict[str, Any] | None:
    """``clip_grad_norm`` as a create or PATCH body gives it, complete (``norm_type`` 2.0 by default), or None."""
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise InvalidRequest(
            (*loc, "clip_grad_norm"), "clip_grad_norm must be an object {max_norm, norm_type}, or null"
        )
    for key in settings:
        if key not in ("max_norm", "norm_type"):
            raise InvalidRequest((*loc, "clip_grad_norm", key), f"unknown field {key!r}: max_norm, norm_type")
    if "max_norm" not in settings:
        raise InvalidRequest((*loc, "clip_grad_norm", "max_norm"), "clip_grad_norm needs max_norm")
    try:
        max_norm, norm_type = checked_clipping(settings["max_norm"], settings.get("norm_type", 2.0))
    except OptimCoreError as error:
        raise core_error(error, *loc) from None
    return {"max_norm": max_norm, "norm_type": "inf" if norm_type == float("inf") else norm_type}


def checked_nonfinite(policy: object, *, loc: tuple[str, ...] = ("body",)) -> str:
    if policy not in NONFINITE_POLICIES:
        raise InvalidRequest((*loc, "nonfinite"), f"nonfinite must be 'reject' or 'skip', not {policy!r}")
    assert isinstance(policy, str)
    return policy


@dataclass(frozen=True)
class PreparedGrads:
    """A step's gradients once the session's settings have had their say."""

    grads: Mapping[str, np.ndarray]
    skipped: bool = False
    clip: dict[str, Any] | None = None
    """What clipping measured: ``total_norm`` before it, and the ``coef`` the gradients were multiplied by."""


def prepared_grads(
    grads: Mapping[str, np.ndarray],
    *,
    dtype: str,
    clip_settings: dict[str, Any] | None,
    nonfinite: str,
    shapes: Mapping[str, list[int]] | None = None,
) -> PreparedGrads:
    """The gradients to step with: unchanged when the session has neither setting; else cast to the params'
    dtype, checked for non-finite values ("skip": ``skipped``), and clipped."""
    if clip_settings is None and nonfinite == "reject":
        return PreparedGrads(grads)
    if shapes is not None and any(
        name not in shapes or list(grad.shape) != shapes[name] for name, grad in grads.items()
    ):
        return PreparedGrads(grads)  # the optimizer refuses them, naming the param: a skip would hide that
    with np.errstate(over="ignore", invalid="ignore"):
        casted = {name: np.asarray(grad, dtype=dtype) for name, grad in grads.items()}
    if not all(all_finite(grad) for grad in casted.values()):
        # "reject": the optimizer refuses them, naming the param.
        return PreparedGrads(grads, skipped=nonfinite == "skip")
    if clip_settings is None:
        return PreparedGrads(casted)
    norm_type = float(clip_settings["norm_type"])
    clipped, total, coef = clip_grad_norm(casted, max_norm=clip_settings["max_norm"], norm_type=norm_type)
    return PreparedGrads(clipped, clip={"total_norm": float(total), "coef": float(coef)})
