"""Each algorithm as torch's single-tensor loop computes it, transliterated line by line into plain numpy.

No blocks, no buffers reused, no bit tricks: what these compute is easy to check against
torch's ``_single_tensor_rprop`` and ``_single_tensor_rmsprop`` by reading. The in-place
kernels of optim_core must agree with them bit for bit (``test_reference.py``). Every
scalar is cast to the tensor's dtype, as torch casts it.
"""

from typing import Any

import numpy as np


def rprop_reference(
    param: np.ndarray, grad: np.ndarray, state: dict[str, Any], *, lr: float, etas: tuple[float, float],
    step_sizes: tuple[float, float], maximize: bool,
) -> None:  # fmt: skip
    """One step; ``param`` and ``state`` (``step``, ``prev``, ``step_size``; empty before the first) change."""
    typed = param.dtype.type
    etaminus, etaplus = typed(etas[0]), typed(etas[1])
    step_size_min, step_size_max = typed(step_sizes[0]), typed(step_sizes[1])
    if not state:
        state.update(step=0, prev=np.zeros_like(param), step_size=np.full_like(param, lr))
    grad = -grad if maximize else grad
    state["step"] += 1
    sign = np.array(np.sign(grad * state["prev"]))  # an array, also for 0-d params
    sign[sign > 0] = etaplus
    sign[sign < 0] = etaminus
    sign[sign == 0] = 1
    state["step_size"] = np.array(np.clip(state["step_size"] * sign, step_size_min, step_size_max))
    grad = np.array(grad)
    grad[sign == etaminus] = 0
    _assign(param, param - np.sign(grad) * state["step_size"])
    state["prev"] = grad


def rmsprop_reference(
    param: np.ndarray, grad: np.ndarray, state: dict[str, Any], *, lr: float, alpha: float, eps: float,
    weight_decay: float, momentum: float, centered: bool, maximize: bool,
) -> None:  # fmt: skip
    """One step; ``param`` and ``state`` (``step``, ``square_avg``, and the optional buffers) change."""
    typed = param.dtype.type
    if not state:
        state.update(step=0, square_avg=np.zeros_like(param))
        if momentum > 0:
            state["momentum_buffer"] = np.zeros_like(param)
        if centered:
            state["grad_avg"] = np.zeros_like(param)
    grad = -grad if maximize else grad
    state["step"] += 1
    if weight_decay != 0:
        grad = grad + param * typed(weight_decay)
    # square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    state["square_avg"] = state["square_avg"] * typed(alpha) + grad * typed(1 - alpha) * grad
    if centered:
        # grad_avg.lerp_(grad, 1 - alpha): torch's lerp formula, by the weight's size.
        weight, grad_avg = typed(1 - alpha), state["grad_avg"]
        if abs(weight) < 0.5:
            state["grad_avg"] = grad_avg + weight * (grad - grad_avg)
        else:
            state["grad_avg"] = grad - (grad - grad_avg) * (typed(1) - weight)
        avg = np.sqrt(state["square_avg"] - state["grad_avg"] * state["grad_avg"])
    else:
        avg = np.sqrt(state["square_avg"])
    avg = avg + typed(eps)
    if momentum > 0:
        state["momentum_buffer"] = state["momentum_buffer"] * typed(momentum) + grad / avg
        _assign(param, param + state["momentum_buffer"] * typed(-lr))
    else:
        _assign(param, param + (grad * typed(-lr)) / avg)
    for key in ("square_avg", "momentum_buffer", "grad_avg"):
        if key in state:
            state[key] = np.asarray(state[key])  # arrays, also for 0-d params
            assert state[key].dtype == param.dtype, f"{key} was computed in {state[key].dtype}"


def _assign(param: np.ndarray, value: Any) -> None:
    """Write ``value`` into ``param``, which must not need a cast: a reference computes in the param's dtype."""
    value = np.asarray(value)
    assert value.dtype == param.dtype, f"computed in {value.dtype}, not {param.dtype}"
    param[...] = value
