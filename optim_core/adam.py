r"""Adam, as torch computes it: its math, an in-place kernel, its spec, and the torch-shaped ``Adam``.

With :math:`g_t` the gradient (negated under ``maximize``; plus ``weight_decay`` times the
parameter, unless the decay is decoupled, in which case the parameter is first multiplied by
:math:`1 - \gamma \lambda`):

.. math::

    m_t = \operatorname{lerp}(m_{t-1}, g_t, 1 - \beta_1), \quad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2

    \hat v_t = \max(\hat v_{t-1}, v_t) \text{ with amsgrad, else } \hat v_t = v_t

    \theta_t = \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \cdot
        \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

``eps`` is added after the bias correction of the square root. The bias corrections and the step
size are Python floats (float64), from torch's float32 step counter (``step_counts.py``); every
other scalar is cast to the params' dtype. Defaults: ``lr=0.001, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0, amsgrad=False, decoupled_weight_decay=False``. AdamW (``adamw.py``) is this
algorithm with the decay decoupled.

>>> import numpy as np
>>> param = np.array([1.0])
>>> state = adam_init(param, amsgrad=False)
>>> state = adam_update_in_place(param, np.array([2.0]), state, lr=0.1, beta1=0.9, beta2=0.999,
...                              eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
...                              decoupled_weight_decay=False)
>>> round(float(param[0]), 6), state.step
(0.9, 1)
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from optim_core.checks import (
    FUSED_DESCRIPTION,
    IMPLEMENTATION_FLAG,
    flag,
    flag_schema,
    fused_compatible,
    number_at_least_zero,
    number_at_least_zero_schema,
    number_pair,
    number_pair_schema,
    optional_flag,
    optional_flag_schema,
)
from optim_core.chunks import chunk_bounds, scratch
from optim_core.errors import InvalidHyperparameterError
from optim_core.optimizer import Optimizer, ParamGroupSpec, Params
from optim_core.spec import AlgorithmSpec
from optim_core.step_counts import next_step
from optim_core.telemetry import StepMeasure

DEFAULTS: Mapping[str, object] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": False,
}
"""torch's group keys for Adam, in torch's order, with its defaults."""

BETAS_SCHEMA = number_pair_schema(
    {"minimum": 0, "exclusiveMaximum": 1},
    {"minimum": 0, "exclusiveMaximum": 1},
    "(beta1, beta2): the decay rates of the averages of the gradient and of its square, each in [0, 1)",
)
HYPERPARAMETER_SCHEMAS: Mapping[str, Mapping[str, object]] = {
    "lr": number_at_least_zero_schema("the learning rate"),
    "betas": BETAS_SCHEMA,
    "eps": number_at_least_zero_schema("added to the denominator, after the square root's bias correction"),
    "weight_decay": number_at_least_zero_schema("L2 penalty, or the decoupled decay's factor"),
    "amsgrad": flag_schema("normalize by the largest average of squared gradients so far (AMSGrad)"),
    "maximize": flag_schema("maximize the objective rather than minimize it"),
    "foreach": optional_flag_schema(IMPLEMENTATION_FLAG),
    "capturable": flag_schema(IMPLEMENTATION_FLAG),
    "differentiable": flag_schema(IMPLEMENTATION_FLAG),
    "fused": optional_flag_schema(FUSED_DESCRIPTION),
    "decoupled_weight_decay": flag_schema("decay the params directly (AdamW) rather than through the gradient"),
}
"""What ``AdamHyperparams.from_group`` accepts for each key, as JSON Schema."""


@dataclass(frozen=True)
class AdamHyperparams:
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    foreach: bool | None
    capturable: bool
    differentiable: bool
    fused: bool | None
    decoupled_weight_decay: bool

    @classmethod
    def from_group(cls, group: Mapping[str, object]) -> "AdamHyperparams":
        """Validate a torch-style group (all of ``DEFAULTS``' keys) as torch does, and more.

        torch refuses betas that are ints; JSON does not tell ``0`` from ``0.0``, so they are taken as floats.
        """
        lr = number_at_least_zero(group, "lr", "Invalid learning rate")
        eps = number_at_least_zero(group, "eps", "Invalid epsilon value")
        beta1, beta2 = number_pair(group, "betas", "Invalid beta parameters")
        for index, beta in enumerate((beta1, beta2)):
            if not 0.0 <= beta < 1.0:
                raise InvalidHyperparameterError(f"Invalid beta parameter at index {index}: {beta}", loc=("betas",))
        hyperparams = cls(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=number_at_least_zero(group, "weight_decay", "Invalid weight_decay value"),
            amsgrad=flag(group, "amsgrad"),
            maximize=flag(group, "maximize"),
            foreach=optional_flag(group, "foreach"),
            capturable=flag(group, "capturable"),
            differentiable=flag(group, "differentiable"),
            fused=optional_flag(group, "fused"),
            decoupled_weight_decay=flag(group, "decoupled_weight_decay"),
        )
        fused_compatible(
            fused=hyperparams.fused, foreach=hyperparams.foreach, differentiable=hyperparams.differentiable
        )
        return hyperparams

    def to_group(self) -> dict[str, object]:
        """The torch-style group, keys in torch's order."""
        return {
            "lr": self.lr,
            "betas": [self.beta1, self.beta2],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "amsgrad": self.amsgrad,
            "maximize": self.maximize,
            "foreach": self.foreach,
            "capturable": self.capturable,
            "differentiable": self.differentiable,
            "fused": self.fused,
            "decoupled_weight_decay": self.decoupled_weight_decay,
        }


class AdamState(NamedTuple):
    """Per-parameter state; ``max_exp_avg_sq`` exists only while amsgrad is on."""

    step: int
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    max_exp_avg_sq: np.ndarray | None


STATE_ARRAYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
"""The state's array fields, which are also torch's state_dict keys."""


def adam_init(param: np.ndarray, *, amsgrad: bool) -> AdamState:
    """Fresh state for ``param``: zero averages (and a zero maximum with amsgrad)."""
    return AdamState(
        step=0,
        exp_avg=np.zeros_like(param, order="C"),
        exp_avg_sq=np.zeros_like(param, order="C"),
        max_exp_avg_sq=np.zeros_like(param, order="C") if amsgrad else None,
    )


def adam_complete(param: np.ndarray, state: AdamState, *, amsgrad: bool) -> AdamState:
    """``state`` with a zero ``max_exp_avg_sq`` when amsgrad was switched on after it was made.

    torch fails on such a step; zero is what the maximum would have started from on a first
    step, and what a torch optimizer loading the completed state continues from.
    """
    if amsgrad and state.max_exp_avg_sq is None:
        return state._replace(max_exp_avg_sq=np.zeros_like(param, order="C"))
    return state


@np.errstate(all="ignore")  # like torch: overflow gives inf or NaN, not warnings
def adam_update_in_place(
    param: np.ndarray,
    grad: np.ndarray,
    state: AdamState,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    measure: StepMeasure | None = None,
) -> AdamState:
    """One Adam step, in place: writes ``param`` and the state's buffers.

    ``param`` and the state buffers must be C-contiguous arrays of one float dtype, owned by the
    caller's optimizer; ``grad`` has the same shape and dtype and is only read. A missing
    ``max_exp_avg_sq`` starts from zeros (see ``adam_complete``). Returns the state with ``step``
    advanced as torch's float32 counter advances.
    """
    state = adam_complete(param, state, amsgrad=amsgrad)
    step = next_step(state.step)

    dtype = param.dtype
    typed = dtype.type
    # torch computes these in Python floats, from the step as a float.
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    # ... and casts each scalar to the tensor's dtype where it meets a tensor.
    decay, shrink = typed(weight_decay), typed(1 - lr * weight_decay)
    weight, beta2_, one_minus_beta2 = typed(1 - beta1), typed(beta2), typed(1 - beta2)
    root_divisor, eps_, minus_step_size = typed(bias_correction2_sqrt), typed(eps), typed(-step_size)
    # torch's lerp uses a + w (b - a) for |w| < 0.5 and b - (b - a)(1 - w) otherwise.
    lerp_from_start = abs(weight) < 0.5
    lerp_back_weight = typed(1) - weight

    flat_param, flat_grad = param.reshape(-1), grad.reshape(-1)
    flat_exp_avg, flat_exp_avg_sq = state.exp_avg.reshape(-1), state.exp_avg_sq.reshape(-1)
    flat_max = state.max_exp_avg_sq.reshape(-1) if amsgrad and state.max_exp_avg_sq is not None else None
    size = flat_param.size
    grad_work, work = scratch(size, dtype), scratch(size, dtype)
    for start, stop in chunk_bounds(size):
        n = stop - start
        g, p = flat_grad[start:stop], flat_param[start:stop]
        exp_avg, exp_avg_sq = flat_exp_avg[start:stop], flat_exp_avg_sq[start:stop]
        own_grad, tmp = grad_work[:n], work[:n]
        if measure is not None:
            measure.before(p, g)
        if maximize:
            g = np.negative(g, out=own_grad)
        if weight_decay != 0:
            if decoupled_weight_decay:
                # param.mul_(1 - lr * weight_decay)
                np.multiply(p, shrink, out=p)
            else:
                # grad.add(param, alpha=weight_decay)
                np.multiply(p, decay, out=tmp)
                g = np.add(g, tmp, out=own_grad)
        # exp_avg.lerp_(grad, 1 - beta1)
        np.subtract(g, exp_avg, out=tmp)
        if lerp_from_start:
            np.multiply(tmp, weight, out=tmp)
            np.add(exp_avg, tmp, out=exp_avg)
        else:
            np.multiply(tmp, lerp_back_weight, out=tmp)
            np.subtract(g, tmp, out=exp_avg)
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2): (value * grad) * grad
        np.multiply(exp_avg_sq, beta2_, out=exp_avg_sq)
        np.multiply(g, one_minus_beta2, out=tmp)
        np.multiply(tmp, g, out=tmp)
        np.add(exp_avg_sq, tmp, out=exp_avg_sq)
        if flat_max is not None:
            largest = flat_max[start:stop]
            np.maximum(largest, exp_avg_sq, out=largest)
            np.sqrt(largest, out=tmp)
        else:
            np.sqrt(exp_avg_sq, out=tmp)
        # denom = (sqrt / bias_correction2_sqrt).add_(eps)
        np.divide(tmp, root_divisor, out=tmp)
        np.add(tmp, eps_, out=tmp)
        # param.addcdiv_(exp_avg, denom, value=-step_size): (value * exp_avg) / denom
        np.multiply(exp_avg, minus_step_size, out=own_grad)
        np.divide(own_grad, tmp, out=tmp)
        np.add(p, tmp, out=p)
        if measure is not None:
            measure.after(p)
    return state._replace(step=step)


def _required_state_arrays(hyperparams: AdamHyperparams) -> frozenset[str]:
    return frozenset({"exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if hyperparams.amsgrad else ())})


def _update(
    param: np.ndarray, grad: np.ndarray, state: AdamState, hyperparams: AdamHyperparams, measure: StepMeasure | None
) -> AdamState:
    return adam_update_in_place(
        param,
        grad,
        state,
        lr=hyperparams.lr,
        beta1=hyperparams.beta1,
        beta2=hyperparams.beta2,
        eps=hyperparams.eps,
        weight_decay=hyperparams.weight_decay,
        amsgrad=hyperparams.amsgrad,
        maximize=hyperparams.maximize,
        decoupled_weight_decay=hyperparams.decoupled_weight_decay,
        measure=measure,
    )


def adam_spec(
    *,
    name: str,
    torch_name: str,
    defaults: Mapping[str, object],
    schemas: Mapping[str, Mapping[str, object]],
    parse: Callable[[Mapping[str, object]], AdamHyperparams],
) -> AlgorithmSpec[AdamHyperparams, AdamState]:
    """The spec of Adam's algorithm under a name, with its defaults and its parser (AdamW's differ)."""
    return AlgorithmSpec(
        name=name,
        torch_name=torch_name,
        defaults=defaults,
        hyperparameter_schemas=schemas,
        parse=parse,
        state_type=AdamState,
        state_arrays=STATE_ARRAYS,
        init=lambda param, hyperparams: adam_init(param, amsgrad=hyperparams.amsgrad),
        update_in_place=_update,
        required_state_arrays=_required_state_arrays,
        complete_state=lambda param, state, hyperparams: adam_complete(param, state, amsgrad=hyperparams.amsgrad),
    )


SPEC = adam_spec(
    name="adam", torch_name="Adam", defaults=DEFAULTS, schemas=HYPERPARAMETER_SCHEMAS, parse=AdamHyperparams.from_group
)


class Adam(Optimizer[AdamHyperparams, AdamState]):
    """Adam (and AMSGrad) with torch's semantics and signature.

    >>> import numpy as np
    >>> opt = Adam({"w": np.array([1.0])}, lr=0.1)
    >>> opt.step({"w": np.array([2.0])})
    >>> round(float(opt.params["w"][0]), 6)
    0.9
    """

    def __init__(
        self,
        params: Params | Sequence[ParamGroupSpec],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        hyperparameters = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(SPEC, params, hyperparameters)
