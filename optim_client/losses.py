"""A step's loss as the service takes it: one finite float, from whatever number the caller computed."""

from __future__ import annotations

import math
import numbers

import numpy as np

from optim_client.torch_support import is_tensor

KINDS = "a float, an int, a numpy scalar, or a tensor or array with one element"


def loss_value(loss: object) -> float:
    """``loss`` as a Python float; raised here, before anything is sent.

    A tensor is read with ``.detach().item()`` (torch is not imported for this). Anything but a real number
    is a ``TypeError``; more than one element, or a value that is not finite (NaN, infinity, an int too
    large for a float), is a ``ValueError``.
    """
    value: object = loss
    if is_tensor(loss):
        if loss.numel() != 1:
            raise ValueError(f"loss must have one element; the tensor has shape {tuple(loss.shape)}")
        value = loss.detach().item()
    elif isinstance(loss, np.ndarray | np.generic):
        if loss.size != 1:
            raise ValueError(f"loss must have one element; the array has shape {loss.shape}")
        value = loss.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"loss must be a real number ({KINDS}), not {type(loss).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"loss {value} is too large for a float") from None
    if not math.isfinite(number):
        raise ValueError(f"loss is {number}; the service takes a finite loss only")
    return number
