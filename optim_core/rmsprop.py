r"""RMSprop, as torch computes it: its math, an in-place kernel, its spec, and the torch-shaped ``RMSprop``.

With :math:`g_t` the gradient (negated under ``maximize``, then plus
``weight_decay`` times the parameter):

.. math::

    v_t = \alpha v_{t-1} + (1 - \alpha) g_t^2

    \bar g_t = \operatorname{lerp}(\bar g_{t-1}, g_t, 1 - \alpha)
    \text{ and } \tilde v_t = \sqrt{v_t - \bar g_t^2} \text{ if centered, else } \tilde v_t = \sqrt{v_t}

    b_t = \mu b_{t-1} + g_t / (\tilde v_t + \epsilon), \quad \theta_t = \theta_{t-1} - \gamma b_t
    \text{ if } \mu > 0, \text{ else } \theta_t = \theta_{t-1} - \gamma g_t / (\tilde v_t + \epsilon)

``eps`` is added outside the square root. Defaults: ``lr=0.01, alpha=0.99,
eps=1e-8, weight_decay=0, momentum=0, centered=False``.

>>> import numpy as np
>>> param = np.array([1.0])
>>> state = rmsprop_init(param, momentum=0.0, centered=False)
>>> state = rmsprop_update_in_place(param, np.array([2.0]), state, lr=0.01, alpha=0.99,
...                                 eps=1e-8, weight_decay=0.0, momentum=0.0,
...                                 centered=False, maximize=False)
>>> round(float(param[0]), 6), state.step
(0.9, 1)
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from optim_core.checks import (
    IMPLEMENTATION_FLAG,
    flag,
    flag_schema,
    number_at_least_zero,
    number_at_least_zero_schema,
    optional_flag,
    optional_flag_schema,
)
from optim_core.chunks import chunk_bounds, scratch
from optim_core.optimizer import Optimizer, ParamGroupSpec, Params
from optim_core.spec import AlgorithmSpec
from optim_core.telemetry import StepMeasure

DEFAULTS: Mapping[str, object] = {
    "lr": 1e-2,
    "momentum": 0.0,
    "alpha": 0.99,
    "eps": 1e-8,
    "centered": False,
    "weight_decay": 0.0,
    "capturable": False,
    "foreach": None,
    "maximize": False,
    "differentiable": False,
}
"""torch's group keys for RMSprop, in torch's order, with its defaults."""
EXTENSIONS: Mapping[str, object] = {"eps_in_sqrt": False}
"""Ours: ``eps_in_sqrt`` puts eps inside the square root, ``g / sqrt(v + eps)``, as Keras, TF1 and older
Lucid define RMSprop (torch, the default, puts it outside). In a group only when true."""

HYPERPARAMETER_SCHEMAS: Mapping[str, Mapping[str, object]] = {
    "lr": number_at_least_zero_schema("the learning rate"),
    "momentum": number_at_least_zero_schema("the momentum factor; 0 keeps no momentum buffer"),
    "alpha": number_at_least_zero_schema("the smoothing constant of the average of squared gradients"),
    "eps": number_at_least_zero_schema("added to the denominator, outside the square root"),
    "centered": flag_schema("normalize by an estimate of the gradient's variance"),
    "weight_decay": number_at_least_zero_schema("L2 penalty"),
    "capturable": flag_schema(IMPLEMENTATION_FLAG),
    "foreach": optional_flag_schema(IMPLEMENTATION_FLAG),
    "maximize": flag_schema("maximize the objective rather than minimize it"),
    "differentiable": flag_schema(IMPLEMENTATION_FLAG),
    "eps_in_sqrt": flag_schema(
        "not torch's: put eps inside the square root, g / sqrt(v + eps) (Keras, TF1, older Lucid); false by default"
    ),
}
"""What ``RMSpropHyperparams.from_group`` accepts for each key, as JSON Schema."""


@dataclass(frozen=True)
class RMSpropHyperparams:
    lr: float
    momentum: float
    alpha: float
    eps: float
    centered: bool
    weight_decay: float
    capturable: bool
    foreach: bool | None
    maximize: bool
    differentiable: bool
    eps_in_sqrt: bool = False

    @classmethod
    def from_group(cls, group: Mapping[str, object]) -> "RMSpropHyperparams":
        """Validate a torch-style group (all of ``DEFAULTS``' keys, and ``EXTENSIONS``' if it has them) as torch
        does, and more."""
        return cls(
            lr=number_at_least_zero(group, "lr", "Invalid learning rate"),
            eps=number_at_least_zero(group, "eps", "Invalid epsilon value"),
            momentum=number_at_least_zero(group, "momentum", "Invalid momentum value"),
            weight_decay=number_at_least_zero(group, "weight_decay", "Invalid weight_decay value"),
            alpha=number_at_least_zero(group, "alpha", "Invalid alpha value"),
            centered=flag(group, "centered"),
            capturable=flag(group, "capturable"),
            foreach=optional_flag(group, "foreach"),
            maximize=flag(group, "maximize"),
            differentiable=flag(group, "differentiable"),
            eps_in_sqrt=flag({**EXTENSIONS, **group}, "eps_in_sqrt"),
        )

    def to_group(self) -> dict[str, object]:
        """The torch-style group, keys in torch's order."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "alpha": self.alpha,
            "eps": self.eps,
            "centered": self.centered,
            "weight_decay": self.weight_decay,
            "capturable": self.capturable,
            "foreach": self.foreach,
            "maximize": self.maximize,
            "differentiable": self.differentiable,
            **({"eps_in_sqrt": True} if self.eps_in_sqrt else {}),
        }


class RMSpropState(NamedTuple):
    """Per-parameter state. The optional buffers exist only while their option is on."""

    step: int
    square_avg: np.ndarray
    momentum_buffer: np.ndarray | None
    grad_avg: np.ndarray | None


STATE_ARRAYS = ("square_avg", "momentum_buffer", "grad_avg")
"""The state's array fields, which are also torch's state_dict keys."""


def rmsprop_init(param: np.ndarray, *, momentum: float, centered: bool) -> RMSpropState:
    """Fresh state for ``param``: zero averages, and the buffers its options need."""
    return RMSpropState(
        step=0,
        square_avg=np.zeros_like(param, order="C"),
        momentum_buffer=np.zeros_like(param, order="C") if momentum > 0 else None,
        grad_avg=np.zeros_like(param, order="C") if centered else None,
    )


def rmsprop_complete(param: np.ndarray, state: RMSpropState, *, momentum: float, centered: bool) -> RMSpropState:
    """``state`` with zero buffers added for options switched on after it was made.

    torch fails on such a step; a zero buffer is what the option would have
    started from on a first step, and what a torch optimizer loading the
    completed state continues from.
    """
    if momentum > 0 and state.momentum_buffer is None:
        state = state._replace(momentum_buffer=np.zeros_like(param, order="C"))
    if centered and state.grad_avg is None:
        state = state._replace(grad_avg=np.zeros_like(param, order="C"))
    return state


@np.errstate(all="ignore")  # like torch: overflow gives inf or NaN, not warnings
def rmsprop_update_in_place(
    param: np.ndarray,
    grad: np.ndarray,
    state: RMSpropState,
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    measure: StepMeasure | None = None,
    eps_in_sqrt: bool = False,
) -> RMSpropState:
    """One RMSprop step, in place: writes ``param`` and the state's buffers.

    ``param`` and the state buffers must be C-contiguous arrays of one float
    dtype, owned by the caller's optimizer; ``grad`` has the same shape and dtype
    and is only read. Buffers that an option needs but the state lacks start
    from zeros (see ``rmsprop_complete``). Returns the state with ``step`` advanced.
    """
    state = rmsprop_complete(param, state, momentum=momentum, centered=centered)

    dtype = param.dtype
    typed = dtype.type
    # torch casts each scalar to the tensor's dtype before using it.
    alpha_, one_minus_alpha, eps_ = typed(alpha), typed(1 - alpha), typed(eps)
    decay, momentum_, minus_lr = typed(weight_decay), typed(momentum), typed(-lr)
    # torch's lerp uses a + w (b - a) for |w| < 0.5 and b - (b - a)(1 - w) otherwise.
    lerp_from_start = abs(one_minus_alpha) < 0.5
    lerp_back_weight = typed(1) - one_minus_alpha

    flat_param, flat_grad = param.reshape(-1), grad.reshape(-1)
    flat_square_avg = state.square_avg.reshape(-1)
    flat_buffer = None if momentum <= 0 or state.momentum_buffer is None else state.momentum_buffer.reshape(-1)
    flat_grad_avg = None if not centered or state.grad_avg is None else state.grad_avg.reshape(-1)
    size = flat_param.size
    grad_work, avg_work = scratch(size, dtype), scratch(size, dtype)
    for start, stop in chunk_bounds(size):
        n = stop - start
        g = flat_grad[start:stop]
        p, square_avg = flat_param[start:stop], flat_square_avg[start:stop]
        own_grad, avg = grad_work[:n], avg_work[:n]
        if measure is not None:
            measure.before(p, g)
        if maximize:
            g = np.negative(g, out=own_grad)
        if weight_decay != 0:
            np.multiply(p, decay, out=avg)
            g = np.add(g, avg, out=own_grad)
        np.multiply(square_avg, alpha_, out=square_avg)
        np.multiply(g, one_minus_alpha, out=avg)
        np.multiply(avg, g, out=avg)
        np.add(square_avg, avg, out=square_avg)
        if flat_grad_avg is not None:
            grad_avg = flat_grad_avg[start:stop]
            np.subtract(g, grad_avg, out=avg)
            if lerp_from_start:
                np.multiply(avg, one_minus_alpha, out=avg)
                np.add(grad_avg, avg, out=grad_avg)
            else:
                np.multiply(avg, lerp_back_weight, out=avg)
                np.subtract(g, avg, out=grad_avg)
            np.multiply(grad_avg, grad_avg, out=avg)
            variance = np.subtract(square_avg, avg, out=avg)
        else:
            variance = square_avg
        if eps_in_sqrt:
            np.add(variance, eps_, out=avg)
            np.sqrt(avg, out=avg)
        else:
            np.sqrt(variance, out=avg)
            np.add(avg, eps_, out=avg)
        if measure is not None:
            measure.spread(avg, numerator=lr)
        if flat_buffer is not None:
            buffer = flat_buffer[start:stop]
            np.multiply(buffer, momentum_, out=buffer)
            np.divide(g, avg, out=avg)
            np.add(buffer, avg, out=buffer)
            np.multiply(buffer, minus_lr, out=avg)
        else:
            # torch's addcdiv computes (value * t1) / t2.
            np.multiply(g, minus_lr, out=own_grad)
            np.divide(own_grad, avg, out=avg)
        np.add(p, avg, out=p)
        if measure is not None:
            measure.after(p)
    return state._replace(step=state.step + 1)


def _required_state_arrays(hyperparams: RMSpropHyperparams) -> frozenset[str]:
    required = {"square_avg"}
    if hyperparams.momentum > 0:
        required.add("momentum_buffer")
    if hyperparams.centered:
        required.add("grad_avg")
    return frozenset(required)


def _measures(measure: StepMeasure) -> dict[str, object]:
    """``effective_lr``: the min, median and max over the stepped elements of ``lr / (sqrt(v) + eps)``, the
    denominator as the step used it (``sqrt(v - g_avg^2) + eps`` when centered), in the params' dtype."""
    spread = measure.spread_summary()
    return {"effective_lr": spread.to_dict() if spread is not None else None}


SPEC: AlgorithmSpec[RMSpropHyperparams, RMSpropState] = AlgorithmSpec(
    name="rmsprop",
    torch_name="RMSprop",
    defaults=DEFAULTS,
    extensions=EXTENSIONS,
    hyperparameter_schemas=HYPERPARAMETER_SCHEMAS,
    parse=RMSpropHyperparams.from_group,
    state_type=RMSpropState,
    state_arrays=STATE_ARRAYS,
    init=lambda param, hyperparams: rmsprop_init(param, momentum=hyperparams.momentum, centered=hyperparams.centered),
    update_in_place=lambda param, grad, state, hyperparams, measure: rmsprop_update_in_place(
        param,
        grad,
        state,
        lr=hyperparams.lr,
        alpha=hyperparams.alpha,
        eps=hyperparams.eps,
        weight_decay=hyperparams.weight_decay,
        momentum=hyperparams.momentum,
        centered=hyperparams.centered,
        maximize=hyperparams.maximize,
        measure=measure,
        eps_in_sqrt=hyperparams.eps_in_sqrt,
    ),
    measures=_measures,
    required_state_arrays=_required_state_arrays,
    complete_state=lambda param, state, hyperparams: rmsprop_complete(
        param, state, momentum=hyperparams.momentum, centered=hyperparams.centered
    ),
)


class RMSprop(Optimizer[RMSpropHyperparams, RMSpropState]):
    """RMSprop with torch's semantics (eps outside the square root), and torch's signature.

    >>> import numpy as np
    >>> opt = RMSprop({"w": np.array([1.0])}, lr=0.01)
    >>> opt.step({"w": np.array([2.0])})
    >>> round(float(opt.params["w"][0]), 6)
    0.9
    """

    def __init__(
        self,
        params: Params | Sequence[ParamGroupSpec],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        capturable: bool = False,
        eps_in_sqrt: bool = False,
    ) -> None:
        hyperparameters = {
            "eps_in_sqrt": eps_in_sqrt,
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        super().__init__(SPEC, params, hyperparameters)
