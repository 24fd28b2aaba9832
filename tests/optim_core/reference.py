"""Each algorithm as torch's single-tensor loop computes it, transliterated line by line into plain numpy.

No blocks, no buffers reused, no bit tricks: what these compute is easy to check against
torch's ``_single_tensor_rprop``, ``_single_tensor_rmsprop``, ``_single_tensor_sgd``,
``_single_tensor_adam`` (Adam and AdamW) and ``_single_tensor_adagrad`` by reading. The in-place
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


def sgd_reference(
    param: np.ndarray, grad: np.ndarray, state: dict[str, Any], *, lr: float, momentum: float, dampening: float,
    weight_decay: float, nesterov: bool, maximize: bool,
) -> None:  # fmt: skip
    """One step; ``param`` and ``state`` (``step``, and ``momentum_buffer`` once momentum made one) change.
    ``step`` is the test's count: torch keeps none for SGD."""
    typed = param.dtype.type
    state.setdefault("step", 0)
    state["step"] += 1
    grad = grad if not maximize else -grad
    if weight_decay != 0:
        grad = grad + param * typed(weight_decay)
    if momentum != 0:
        old = state.get("momentum_buffer")
        # The first buffer is a copy of the gradient; later ones: buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        buf = np.array(grad, copy=True) if old is None else old * typed(momentum) + grad * typed(1 - dampening)
        state["momentum_buffer"] = np.asarray(buf)
        grad = grad + buf * typed(momentum) if nesterov else buf
    _assign(param, param + grad * typed(-lr))


def adam_reference(
    param: np.ndarray, grad: np.ndarray, state: dict[str, Any], *, lr: float, betas: tuple[float, float],
    eps: float, weight_decay: float, amsgrad: bool, maximize: bool, decoupled_weight_decay: bool = False,
) -> None:  # fmt: skip
    """One step; ``param`` and ``state`` (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) change."""
    typed = param.dtype.type
    beta1, beta2 = betas
    if not state:
        state.update(step=0, exp_avg=np.zeros_like(param), exp_avg_sq=np.zeros_like(param))
        if amsgrad:
            state["max_exp_avg_sq"] = np.zeros_like(param)
    grad = grad if not maximize else -grad
    state["step"] = int(np.float32(state["step"]) + np.float32(1))  # step_t += 1 on a float32 tensor
    if weight_decay != 0:
        if decoupled_weight_decay:
            _assign(param, param * typed(1 - lr * weight_decay))
        else:
            grad = grad + param * typed(weight_decay)
    # exp_avg.lerp_(grad, 1 - beta1), by torch's formula for the weight's size
    weight, exp_avg = typed(1 - beta1), state["exp_avg"]
    if abs(weight) < 0.5:
        state["exp_avg"] = exp_avg + weight * (grad - exp_avg)
    else:
        state["exp_avg"] = grad - (grad - exp_avg) * (typed(1) - weight)
    state["exp_avg_sq"] = state["exp_avg_sq"] * typed(beta2) + grad * typed(1 - beta2) * grad
    step = float(state["step"])
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    if amsgrad:
        state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], state["exp_avg_sq"])
        denom = np.sqrt(state["max_exp_avg_sq"]) / typed(bias_correction2_sqrt) + typed(eps)
    else:
        denom = np.sqrt(state["exp_avg_sq"]) / typed(bias_correction2_sqrt) + typed(eps)
    _assign(param, param + (typed(-step_size) * state["exp_avg"]) / denom)
    _as_arrays(state, param, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))


def adamw_reference(
    param: np.ndarray, grad: np.ndarray, state: dict[str, Any], *, lr: float, betas: tuple[float, float],
    eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
) -> None:  # fmt: skip
    """Adam's step with the weight decay decoupled, as torch's AdamW takes it."""
    adam_reference(
        param, grad, state, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
        maximize=maximize, decoupled_weight_decay=True,
    )  # fmt: skip


def adagrad_reference(
    param: np.ndarray, grad: np.ndarray, state: dict[str, Any], *, lr: float, lr_decay: float,
    weight_decay: float, initial_accumulator_value: float, eps: float, maximize: bool,
) -> None:  # fmt: skip
    """One step; ``param`` and ``state`` (``step``, ``sum``) change."""
    typed = param.dtype.type
    if not state:
        state.update(step=0, sum=np.full_like(param, initial_accumulator_value))
    state["step"] = int(np.float32(state["step"]) + np.float32(1))
    step = float(state["step"])
    grad = grad if not maximize else -grad
    if weight_decay != 0:
        grad = grad + param * typed(weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    state["sum"] = state["sum"] + grad * grad
    std = np.sqrt(state["sum"]) + typed(eps)
    _assign(param, param + (typed(-clr) * grad) / std)
    _as_arrays(state, param, ("sum",))


def _as_arrays(state: dict[str, Any], param: np.ndarray, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in state:
            state[key] = np.asarray(state[key])  # arrays, also for 0-d params
            assert state[key].dtype == param.dtype, f"{key} was computed in {state[key].dtype}"


def _assign(param: np.ndarray, value: Any) -> None:
    """Write ``value`` into ``param``, which must not need a cast: a reference computes in the param's dtype."""
    value = np.asarray(value)
    assert value.dtype == param.dtype, f"computed in {value.dtype}, not {param.dtype}"
    param[...] = value
