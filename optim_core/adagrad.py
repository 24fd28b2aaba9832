r"""Adagrad, as torch computes it: its math, an in-place kernel, its spec, and the torch-shaped ``Adagrad``.

With :math:`g_t` the gradient (negated under ``maximize``, then plus ``weight_decay`` times the
parameter) and :math:`\eta` the ``lr_decay``:

.. math::

    \tilde\gamma_t = \frac{\gamma}{1 + (t - 1) \eta}, \quad s_t = s_{t-1} + g_t^2, \quad
    \theta_t = \theta_{t-1} - \tilde\gamma_t \frac{g_t}{\sqrt{s_t} + \epsilon}

The sum starts at ``initial_accumulator_value``, and as in torch every param has its state
(``step`` 0 and that sum) from the moment the optimizer is built. The decayed learning rate is a
Python float (float64) from torch's float32 step counter (``step_counts.py``); every other scalar
is cast to the params' dtype. Defaults: ``lr=0.01, lr_decay=0, weight_decay=0,
initial_accumulator_value=0, eps=1e-10``.

>>> import numpy as np
>>> param = np.array([1.0])
>>> state = adagrad_init(param, initial_accumulator_value=0.0)
>>> state = adagrad_update_in_place(param, np.array([2.0]), state, lr=0.1, lr_decay=0.0,
...                                 weight_decay=0.0, eps=1e-10, maximize=False)
>>> round(float(param[0]), 6), state.sum.tolist(), state.step
(0.9, [4.0], 1)
"""

from collections.abc import Mapping, Sequence
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
    optional_flag,
    optional_flag_schema,
)
from optim_core.chunks import chunk_bounds, scratch
from optim_core.optimizer import Optimizer, ParamGroupSpec, Params
from optim_core.spec import AlgorithmSpec
from optim_core.step_counts import next_step
from optim_core.telemetry import StepMeasure

DEFAULTS: Mapping[str, object] = {
    "lr": 1e-2,
    "lr_decay": 0.0,
    "eps": 1e-10,
    "weight_decay": 0.0,
    "initial_accumulator_value": 0.0,
    "foreach": None,
    "maximize": False,
    "differentiable": False,
    "fused": None,
}
"""torch's group keys for Adagrad, in torch's order, with its defaults."""

HYPERPARAMETER_SCHEMAS: Mapping[str, Mapping[str, object]] = {
    "lr": number_at_least_zero_schema("the learning rate"),
    "lr_decay": number_at_least_zero_schema("step t uses lr / (1 + (t - 1) * lr_decay)"),
    "eps": number_at_least_zero_schema("added to the denominator, outside the square root"),
    "weight_decay": number_at_least_zero_schema("L2 penalty"),
    "initial_accumulator_value": number_at_least_zero_schema(
        "the sum of squared gradients every param starts from, as the optimizer is built: the optimizer's "
        "value, for every group (as in torch, a group's own is kept but not used)"
    ),
    "foreach": optional_flag_schema(IMPLEMENTATION_FLAG),
    "maximize": flag_schema("maximize the objective rather than minimize it"),
    "differentiable": flag_schema(IMPLEMENTATION_FLAG),
    "fused": optional_flag_schema(FUSED_DESCRIPTION),
}
"""What ``AdagradHyperparams.from_group`` accepts for each key, as JSON Schema."""


@dataclass(frozen=True)
class AdagradHyperparams:
    lr: float
    lr_decay: float
    eps: float
    weight_decay: float
    initial_accumulator_value: float
    foreach: bool | None
    maximize: bool
    differentiable: bool
    fused: bool | None

    @classmethod
    def from_group(cls, group: Mapping[str, object]) -> "AdagradHyperparams":
        """Validate a torch-style group (all of ``DEFAULTS``' keys) as torch does, and more."""
        hyperparams = cls(
            lr=number_at_least_zero(group, "lr", "Invalid learning rate"),
            lr_decay=number_at_least_zero(group, "lr_decay", "Invalid lr_decay value"),
            eps=number_at_least_zero(group, "eps", "Invalid epsilon value"),
            weight_decay=number_at_least_zero(group, "weight_decay", "Invalid weight_decay value"),
            initial_accumulator_value=number_at_least_zero(
                group, "initial_accumulator_value", "Invalid initial_accumulator_value value"
            ),
            foreach=optional_flag(group, "foreach"),
            maximize=flag(group, "maximize"),
            differentiable=flag(group, "differentiable"),
            fused=optional_flag(group, "fused"),
        )
        fused_compatible(
            fused=hyperparams.fused, foreach=hyperparams.foreach, differentiable=hyperparams.differentiable
        )
        return hyperparams

    def to_group(self) -> dict[str, object]:
        """The torch-style group, keys in torch's order."""
        return {
            "lr": self.lr,
            "lr_decay": self.lr_decay,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "initial_accumulator_value": self.initial_accumulator_value,
            "foreach": self.foreach,
            "maximize": self.maximize,
            "differentiable": self.differentiable,
            "fused": self.fused,
        }


class AdagradState(NamedTuple):
    """Per-parameter state: the step count and the sum of squared gradients."""

    step: int
    sum: np.ndarray


STATE_ARRAYS = ("sum",)
"""The state's array fields, which are also torch's state_dict keys."""


def adagrad_init(param: np.ndarray, *, initial_accumulator_value: float) -> AdagradState:
    """Fresh state for ``param``: no steps, the sum filled with ``initial_accumulator_value`` (in its dtype)."""
    return AdagradState(step=0, sum=np.full_like(param, initial_accumulator_value, order="C"))


@np.errstate(all="ignore")  # like torch: overflow gives inf or NaN, not warnings
def adagrad_update_in_place(
    param: np.ndarray,
    grad: np.ndarray,
    state: AdagradState,
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    measure: StepMeasure | None = None,
) -> AdagradState:
    """One Adagrad step, in place: writes ``param`` and ``state.sum``.

    ``param`` and the sum must be C-contiguous arrays of one float dtype, owned by the caller's
    optimizer; ``grad`` has the same shape and dtype and is only read. Returns the state with
    ``step`` advanced as torch's float32 counter advances.
    """
    step = next_step(state.step)
    dtype = param.dtype
    typed = dtype.type
    # torch computes the decayed rate in Python floats, from the step as a float.
    clr = lr / (1 + (float(step) - 1) * lr_decay)
    decay, eps_, minus_clr = typed(weight_decay), typed(eps), typed(-clr)

    flat_param, flat_grad, flat_sum = param.reshape(-1), grad.reshape(-1), state.sum.reshape(-1)
    size = flat_param.size
    grad_work, work = scratch(size, dtype), scratch(size, dtype)
    for start, stop in chunk_bounds(size):
        n = stop - start
        g, p, total = flat_grad[start:stop], flat_param[start:stop], flat_sum[start:stop]
        own_grad, tmp = grad_work[:n], work[:n]
        if measure is not None:
            measure.before(p, g)
        if maximize:
            g = np.negative(g, out=own_grad)
        if weight_decay != 0:
            # grad.add(param, alpha=weight_decay)
            np.multiply(p, decay, out=tmp)
            g = np.add(g, tmp, out=own_grad)
        # state_sum.addcmul_(grad, grad, value=1)
        np.multiply(g, g, out=tmp)
        np.add(total, tmp, out=total)
        # std = state_sum.sqrt().add_(eps)
        np.sqrt(total, out=tmp)
        np.add(tmp, eps_, out=tmp)
        # param.addcdiv_(grad, std, value=-clr): (value * grad) / std
        np.multiply(g, minus_clr, out=own_grad)
        np.divide(own_grad, tmp, out=tmp)
        np.add(p, tmp, out=p)
        if measure is not None:
            measure.after(p)
    return AdagradState(step=step, sum=state.sum)


SPEC: AlgorithmSpec[AdagradHyperparams, AdagradState] = AlgorithmSpec(
    name="adagrad",
    torch_name="Adagrad",
    defaults=DEFAULTS,
    hyperparameter_schemas=HYPERPARAMETER_SCHEMAS,
    parse=AdagradHyperparams.from_group,
    state_type=AdagradState,
    state_arrays=STATE_ARRAYS,
    init=lambda param, hyperparams: adagrad_init(
        param, initial_accumulator_value=hyperparams.initial_accumulator_value
    ),
    update_in_place=lambda param, grad, state, hyperparams, measure: adagrad_update_in_place(
        param,
        grad,
        state,
        lr=hyperparams.lr,
        lr_decay=hyperparams.lr_decay,
        weight_decay=hyperparams.weight_decay,
        eps=hyperparams.eps,
        maximize=hyperparams.maximize,
        measure=measure,
    ),
    state_at_construction=True,
)


class Adagrad(Optimizer[AdagradHyperparams, AdagradState]):
    """Adagrad with torch's semantics and signature.

    >>> import numpy as np
    >>> opt = Adagrad({"w": np.array([1.0])}, lr=0.1)
    >>> opt.state_dict()["state"]
    {'0': {'step': 0.0, 'sum': [0.0]}}
    >>> opt.step({"w": np.array([2.0])})
    >>> round(float(opt.params["w"][0]), 6)
    0.9
    """

    def __init__(
        self,
        params: Params | Sequence[ParamGroupSpec],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        hyperparameters = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(SPEC, params, hyperparameters)
