r"""SGD, as torch computes it: its math, an in-place kernel, its spec, and the torch-shaped ``SGD``.

With :math:`g_t` the gradient (negated under ``maximize``, then plus
``weight_decay`` times the parameter), momentum :math:`\mu` and dampening :math:`\tau`:

.. math::

    b_1 = g_1, \quad b_t = \mu b_{t-1} + (1 - \tau) g_t

    d_t = g_t + \mu b_t \text{ if nesterov, else } d_t = b_t \text{ if } \mu \neq 0, \text{ else } d_t = g_t

    \theta_t = \theta_{t-1} - \gamma d_t

The momentum buffer starts as a copy of the first gradient, not from zero; with
``momentum=0`` there is no buffer, and torch keeps no state at all for the param.
Defaults: ``lr=0.001, momentum=0, dampening=0, weight_decay=0, nesterov=False``.

>>> import numpy as np
>>> param = np.array([1.0])
>>> state = sgd_init(param)
>>> state = sgd_update_in_place(param, np.array([2.0]), state, lr=0.1, momentum=0.9,
...                             dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)
>>> round(float(param[0]), 6), state.momentum_buffer.tolist()
(0.8, [2.0])
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from optim_core.checks import (
    FUSED_DESCRIPTION,
    IMPLEMENTATION_FLAG,
    finite_number,
    finite_number_schema,
    flag,
    flag_schema,
    fused_compatible,
    number_at_least_zero,
    number_at_least_zero_schema,
    optional_flag,
    optional_flag_schema,
)
from optim_core.chunks import chunk_bounds, scratch
from optim_core.errors import InvalidHyperparameterError
from optim_core.optimizer import Optimizer, ParamGroupSpec, Params
from optim_core.spec import AlgorithmSpec
from optim_core.telemetry import StepMeasure

DEFAULTS: Mapping[str, object] = {
    "lr": 1e-3,
    "momentum": 0.0,
    "dampening": 0.0,
    "weight_decay": 0.0,
    "nesterov": False,
    "maximize": False,
    "foreach": None,
    "differentiable": False,
    "fused": None,
}
"""torch's group keys for SGD, in torch's order, with its defaults."""

HYPERPARAMETER_SCHEMAS: Mapping[str, Mapping[str, object]] = {
    "lr": number_at_least_zero_schema("the learning rate"),
    "momentum": number_at_least_zero_schema("the momentum factor; 0 keeps no momentum buffer"),
    "dampening": finite_number_schema("the momentum buffer takes (1 - dampening) times the gradient"),
    "weight_decay": number_at_least_zero_schema("L2 penalty"),
    "nesterov": flag_schema("Nesterov momentum; true needs momentum > 0 and dampening 0, as torch says"),
    "maximize": flag_schema("maximize the objective rather than minimize it"),
    "foreach": optional_flag_schema(IMPLEMENTATION_FLAG),
    "differentiable": flag_schema(IMPLEMENTATION_FLAG),
    "fused": optional_flag_schema(FUSED_DESCRIPTION),
}
"""What ``SGDHyperparams.from_group`` accepts for each key, as JSON Schema."""


@dataclass(frozen=True)
class SGDHyperparams:
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool
    foreach: bool | None
    differentiable: bool
    fused: bool | None

    @classmethod
    def from_group(cls, group: Mapping[str, object]) -> "SGDHyperparams":
        """Validate a torch-style group (all of ``DEFAULTS``' keys) as torch does, and more."""
        hyperparams = cls(
            lr=number_at_least_zero(group, "lr", "Invalid learning rate"),
            momentum=number_at_least_zero(group, "momentum", "Invalid momentum value"),
            dampening=finite_number(group, "dampening", "Invalid dampening value"),
            weight_decay=number_at_least_zero(group, "weight_decay", "Invalid weight_decay value"),
            nesterov=flag(group, "nesterov"),
            maximize=flag(group, "maximize"),
            foreach=optional_flag(group, "foreach"),
            differentiable=flag(group, "differentiable"),
            fused=optional_flag(group, "fused"),
        )
        if hyperparams.nesterov and (hyperparams.momentum <= 0 or hyperparams.dampening != 0):
            raise InvalidHyperparameterError(
                "Nesterov momentum requires a momentum and zero dampening "
                f"(momentum {hyperparams.momentum}, dampening {hyperparams.dampening})",
                loc=("nesterov",),
            )
        fused_compatible(
            fused=hyperparams.fused, foreach=hyperparams.foreach, differentiable=hyperparams.differentiable
        )
        return hyperparams

    def to_group(self) -> dict[str, object]:
        """The torch-style group, keys in torch's order."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
            "maximize": self.maximize,
            "foreach": self.foreach,
            "differentiable": self.differentiable,
            "fused": self.fused,
        }


class SGDState(NamedTuple):
    """Per-parameter state: the momentum buffer, None until a step with momentum made it.

    ``step`` counts this optimizer's steps of the param; torch keeps no count, and neither does the state_dict.
    """

    step: int
    momentum_buffer: np.ndarray | None


STATE_ARRAYS = ("momentum_buffer",)
"""The state's array fields, which are also torch's state_dict keys."""


def sgd_init(_param: np.ndarray) -> SGDState:
    """Fresh state: no buffer yet (the first step with momentum copies its gradient into one)."""
    return SGDState(step=0, momentum_buffer=None)


@np.errstate(all="ignore")  # like torch: overflow gives inf or NaN, not warnings
def sgd_update_in_place(
    param: np.ndarray,
    grad: np.ndarray,
    state: SGDState,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    measure: StepMeasure | None = None,
) -> SGDState:
    """One SGD step, in place: writes ``param`` and the momentum buffer (made here on the first step with momentum).

    ``param`` and the buffer must be C-contiguous arrays of one float dtype, owned by the caller's
    optimizer; ``grad`` has the same shape and dtype and is only read. With ``momentum=0`` the state's
    buffer, if any, is left as it is (torch neither reads nor changes it). Returns the state with
    ``step`` advanced.
    """
    dtype = param.dtype
    typed = dtype.type
    # torch casts each scalar to the tensor's dtype before using it.
    decay, momentum_, minus_lr = typed(weight_decay), typed(momentum), typed(-lr)
    gain = typed(1 - dampening)

    buffer = state.momentum_buffer
    first = momentum != 0 and buffer is None
    if first:
        buffer = np.empty_like(param, order="C")
    flat_param, flat_grad = param.reshape(-1), grad.reshape(-1)
    flat_buffer = buffer.reshape(-1) if momentum != 0 and buffer is not None else None
    size = flat_param.size
    grad_work, work = scratch(size, dtype), scratch(size, dtype)
    for start, stop in chunk_bounds(size):
        n = stop - start
        g, p = flat_grad[start:stop], flat_param[start:stop]
        own_grad, tmp = grad_work[:n], work[:n]
        if measure is not None:
            measure.before(p, g)
        if maximize:
            g = np.negative(g, out=own_grad)
        if weight_decay != 0:
            # grad.add(param, alpha=weight_decay)
            np.multiply(p, decay, out=tmp)
            g = np.add(g, tmp, out=own_grad)
        if flat_buffer is not None:
            b = flat_buffer[start:stop]
            if first:
                np.copyto(b, g)
            else:
                # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                np.multiply(b, momentum_, out=b)
                np.multiply(g, gain, out=tmp)
                np.add(b, tmp, out=b)
            if nesterov:
                # grad.add(buf, alpha=momentum)
                np.multiply(b, momentum_, out=tmp)
                g = np.add(g, tmp, out=own_grad)
            else:
                g = b
        # param.add_(grad, alpha=-lr)
        np.multiply(g, minus_lr, out=tmp)
        np.add(p, tmp, out=p)
        if measure is not None:
            measure.after(p)
    return SGDState(step=state.step + 1, momentum_buffer=buffer)


def _required_state_arrays(_hyperparams: SGDHyperparams) -> frozenset[str]:
    # A param with momentum has no buffer before its first step, and then no state entry at all.
    return frozenset()


SPEC: AlgorithmSpec[SGDHyperparams, SGDState] = AlgorithmSpec(
    name="sgd",
    torch_name="SGD",
    defaults=DEFAULTS,
    hyperparameter_schemas=HYPERPARAMETER_SCHEMAS,
    parse=SGDHyperparams.from_group,
    state_type=SGDState,
    state_arrays=STATE_ARRAYS,
    init=lambda param, _hyperparams: sgd_init(param),
    update_in_place=lambda param, grad, state, hyperparams, measure: sgd_update_in_place(
        param,
        grad,
        state,
        lr=hyperparams.lr,
        momentum=hyperparams.momentum,
        dampening=hyperparams.dampening,
        weight_decay=hyperparams.weight_decay,
        nesterov=hyperparams.nesterov,
        maximize=hyperparams.maximize,
        measure=measure,
    ),
    required_state_arrays=_required_state_arrays,
    step_in_state=False,
)


class SGD(Optimizer[SGDHyperparams, SGDState]):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, with torch's semantics and signature.

    >>> import numpy as np
    >>> opt = SGD({"w": np.array([1.0])}, lr=0.1, momentum=0.9)
    >>> opt.step({"w": np.array([2.0])})
    >>> opt.step({"w": np.array([2.0])})
    >>> round(float(opt.params["w"][0]), 6)
    0.42
    """

    def __init__(
        self,
        params: Params | Sequence[ParamGroupSpec],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        hyperparameters = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(SPEC, params, hyperparameters)
