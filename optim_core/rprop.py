r"""Rprop, torch's iRprop- variant: its math, an in-place kernel, its spec, and the torch-shaped ``Rprop``.

For every element, with :math:`g_t` the gradient (negated under ``maximize``)
and :math:`g_{prev}` the previous (possibly zeroed) gradient:

.. math::

    \eta_t = \operatorname{clamp}\big(\eta_{t-1} \cdot f_t,\ \Gamma_{min},\ \Gamma_{max}\big),
    \quad f_t = \begin{cases}
        \eta_+ & g_t g_{prev} > 0 \\
        \eta_- & g_t g_{prev} < 0 \\
        1 & \text{otherwise}
    \end{cases}

    g_t \leftarrow 0 \text{ where } f_t = \eta_-, \qquad
    \theta_t = \theta_{t-1} - \eta_t \operatorname{sign}(g_t), \qquad
    g_{prev} \leftarrow g_t

The step size starts at ``lr`` and is clamped on every step, the first included.
Defaults: ``lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50)``.

>>> import numpy as np
>>> param = np.array([1.0, -2.0])
>>> state = rprop_init(param, lr=0.01)
>>> state = rprop_update_in_place(param, np.array([0.5, -0.5]), state, etaminus=0.5,
...                               etaplus=1.2, step_size_min=1e-6, step_size_max=50.0,
...                               maximize=False)
>>> param.tolist(), state.step
([0.99, -1.99], 1)
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
    number_pair,
    number_pair_schema,
    optional_flag,
    optional_flag_schema,
)
from optim_core.chunks import chunk_bounds, scratch
from optim_core.errors import InvalidHyperparameterError
from optim_core.optimizer import Optimizer, ParamGroupSpec, Params
from optim_core.spec import AlgorithmSpec
from optim_core.telemetry import StepMeasure

DEFAULTS: Mapping[str, object] = {
    "lr": 1e-2,
    "etas": (0.5, 1.2),
    "step_sizes": (1e-6, 50.0),
    "foreach": None,
    "maximize": False,
    "differentiable": False,
    "capturable": False,
}
"""torch's group keys for Rprop, in torch's order, with its defaults."""

HYPERPARAMETER_SCHEMAS: Mapping[str, Mapping[str, object]] = {
    "lr": number_at_least_zero_schema("the learning rate: every step size starts here"),
    "etas": number_pair_schema(
        {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"exclusiveMinimum": 1},
        "(etaminus, etaplus): the factors a step size shrinks and grows by, 0 < etaminus < 1 < etaplus",
    ),
    "step_sizes": number_pair_schema(
        {"minimum": 0},
        {"minimum": 0},
        "(minimal, maximal) step size, 0 <= minimal <= maximal",
    ),
    "foreach": optional_flag_schema(IMPLEMENTATION_FLAG),
    "maximize": flag_schema("maximize the objective rather than minimize it"),
    "differentiable": flag_schema(IMPLEMENTATION_FLAG),
    "capturable": flag_schema(IMPLEMENTATION_FLAG),
}
"""What ``RpropHyperparams.from_group`` accepts for each key, as JSON Schema."""


@dataclass(frozen=True)
class RpropHyperparams:
    lr: float
    etaminus: float
    etaplus: float
    step_size_min: float
    step_size_max: float
    maximize: bool
    foreach: bool | None
    differentiable: bool
    capturable: bool

    @classmethod
    def from_group(cls, group: Mapping[str, object]) -> "RpropHyperparams":
        """Validate a torch-style group (all of ``DEFAULTS``' keys) as torch does, and more."""
        lr = number_at_least_zero(group, "lr", "Invalid learning rate")
        etaminus, etaplus = number_pair(group, "etas", "Invalid eta values")
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise InvalidHyperparameterError(f"Invalid eta values: {etaminus}, {etaplus}", loc=("etas",))
        low, high = number_pair(group, "step_sizes", "Invalid step sizes")
        if not 0.0 <= low <= high:
            raise InvalidHyperparameterError(f"Invalid step sizes: {low}, {high}", loc=("step_sizes",))
        return cls(
            lr=lr,
            etaminus=etaminus,
            etaplus=etaplus,
            step_size_min=low,
            step_size_max=high,
            maximize=flag(group, "maximize"),
            foreach=optional_flag(group, "foreach"),
            differentiable=flag(group, "differentiable"),
            capturable=flag(group, "capturable"),
        )

    def to_group(self) -> dict[str, object]:
        """The torch-style group, keys in torch's order."""
        return {
            "lr": self.lr,
            "etas": [self.etaminus, self.etaplus],
            "step_sizes": [self.step_size_min, self.step_size_max],
            "foreach": self.foreach,
            "maximize": self.maximize,
            "differentiable": self.differentiable,
            "capturable": self.capturable,
        }


class RpropState(NamedTuple):
    """Per-parameter state; ``prev`` is the last gradient after sign-change zeroing."""

    step: int
    prev: np.ndarray
    step_size: np.ndarray


STATE_ARRAYS = ("prev", "step_size")
"""The state's array fields, which are also torch's state_dict keys."""


def rprop_init(param: np.ndarray, *, lr: float) -> RpropState:
    """Fresh state for ``param``: no steps, a zero previous gradient, step size ``lr``."""
    return RpropState(
        step=0,
        prev=np.zeros_like(param, order="C"),
        step_size=np.full_like(param, lr, order="C"),
    )


@np.errstate(all="ignore")  # like torch: overflow gives inf or NaN, not warnings
def rprop_update_in_place(
    param: np.ndarray,
    grad: np.ndarray,
    state: RpropState,
    *,
    etaminus: float,
    etaplus: float,
    step_size_min: float,
    step_size_max: float,
    maximize: bool,
    measure: StepMeasure | None = None,
) -> RpropState:
    """One Rprop step, in place: writes ``param``, ``state.prev`` and ``state.step_size``.

    ``param`` and the state buffers must be C-contiguous arrays of one float
    dtype, owned by the caller's optimizer; ``grad`` has the same shape and dtype
    and is only read. Returns the state with ``step`` advanced.
    """
    dtype = param.dtype
    typed = dtype.type
    bits = np.dtype(f"i{dtype.itemsize}")
    eta_minus, eta_plus, one = typed(etaminus), typed(etaplus), typed(1)
    low, high = typed(step_size_min), typed(step_size_max)
    # torch writes eta+ where the product is positive, then eta- where it is
    # negative, then 1 where the result is zero, so an eta- that underflows to 0
    # in this dtype leaves a factor of 1. The factor is assembled from bit
    # patterns, which is exact: bits(1) + positive*(bits(eta+) - bits(1)) + ...
    shrink = eta_minus if eta_minus != 0 else one
    grow_bits = bits.type(_bit_pattern(eta_plus) - _bit_pattern(one))
    shrink_bits = bits.type(_bit_pattern(shrink) - _bit_pattern(one))
    one_bits = bits.type(_bit_pattern(one))
    # torch then zeroes the gradient where the factor equals eta-: where the
    # product was negative, unless eta- rounds to 0 (nowhere) or to 1 in this
    # dtype (also where it was zero, and everywhere if eta+ rounds to 1 too).
    if eta_minus == 1:
        zeroed = "all" if eta_plus == 1 else "not positive"
    else:
        zeroed = "none" if eta_minus == 0 else "negative"

    flat_param, flat_grad = param.reshape(-1), grad.reshape(-1)
    flat_prev, flat_step_size = state.prev.reshape(-1), state.step_size.reshape(-1)
    size = flat_param.size
    work, factor_work, keep_work = scratch(size, dtype), scratch(size, bits), scratch(size, bits)
    positive_work, negative_work = scratch(size, np.dtype(bool)), scratch(size, np.dtype(bool))
    negated = scratch(size, dtype) if maximize else None
    for start, stop in chunk_bounds(size):
        n = stop - start
        g = flat_grad[start:stop]
        prev, step_size, p = flat_prev[start:stop], flat_step_size[start:stop], flat_param[start:stop]
        product, factor, keep = work[:n], factor_work[:n], keep_work[:n]
        positive, negative = positive_work[:n], negative_work[:n]
        if measure is not None:
            measure.before(p, g)
        if negated is not None:
            g = np.negative(g, out=negated[:n])
        np.multiply(g, prev, out=product)
        np.greater(product, 0, out=positive)
        np.less(product, 0, out=negative)
        np.multiply(positive, grow_bits, out=factor)
        np.multiply(negative, shrink_bits, out=keep)
        np.add(factor, keep, out=factor)
        np.add(factor, one_bits, out=factor)
        np.multiply(step_size, factor.view(dtype), out=step_size)
        np.clip(step_size, low, high, out=step_size)
        if measure is not None:
            measure.changed_signs(negative)
            measure.spread(step_size)
        # prev = g, with +0 where zeroed: an AND with all-ones or all-zeros bits.
        if zeroed == "negative":
            np.copyto(keep, negative)
            np.subtract(keep, 1, out=keep)
            np.bitwise_and(g.view(bits), keep, out=prev.view(bits))
        elif zeroed == "not positive":
            np.copyto(keep, positive)
            np.negative(keep, out=keep)
            np.bitwise_and(g.view(bits), keep, out=prev.view(bits))
        elif zeroed == "all":
            prev.fill(0)
        else:
            np.copyto(prev, g)
        np.sign(prev, out=product)
        np.multiply(product, step_size, out=product)
        np.subtract(p, product, out=p)
        if measure is not None:
            measure.after(p)
    return state._replace(step=state.step + 1)


def _bit_pattern(value: np.floating) -> int:
    """The IEEE bits of a float32 or float64 scalar, as an int."""
    return int(np.array(value).view(f"i{value.itemsize}"))


def _measures(measure: StepMeasure) -> dict[str, object]:
    """``step_size``: the min, median and max of the stepped elements' step sizes after the step;
    ``sign_change_fraction``: the fraction of them whose gradient changed sign against the one kept from
    the step before (the elements whose step size shrank)."""
    spread = measure.spread_summary()
    return {
        "step_size": spread.to_dict() if spread is not None else None,
        "sign_change_fraction": measure.sign_change_fraction(),
    }


SPEC: AlgorithmSpec[RpropHyperparams, RpropState] = AlgorithmSpec(
    name="rprop",
    torch_name="Rprop",
    defaults=DEFAULTS,
    hyperparameter_schemas=HYPERPARAMETER_SCHEMAS,
    parse=RpropHyperparams.from_group,
    state_type=RpropState,
    state_arrays=STATE_ARRAYS,
    init=lambda param, hyperparams: rprop_init(param, lr=hyperparams.lr),
    update_in_place=lambda param, grad, state, hyperparams, measure: rprop_update_in_place(
        param,
        grad,
        state,
        etaminus=hyperparams.etaminus,
        etaplus=hyperparams.etaplus,
        step_size_min=hyperparams.step_size_min,
        step_size_max=hyperparams.step_size_max,
        maximize=hyperparams.maximize,
        measure=measure,
    ),
    measures=_measures,
)


class Rprop(Optimizer[RpropHyperparams, RpropState]):
    """Resilient backpropagation with torch's semantics (iRprop-), and torch's signature.

    >>> import numpy as np
    >>> opt = Rprop({"w": np.array([1.0, 2.0])}, lr=0.1)
    >>> opt.step({"w": np.array([1.0, -1.0])})
    >>> opt.params["w"].tolist()
    [0.9, 2.1]
    """

    def __init__(
        self,
        params: Params | Sequence[ParamGroupSpec],
        lr: float = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50.0),
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        hyperparameters = {
            "lr": lr,
            "etas": etas,
            "step_sizes": step_sizes,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
        }
        super().__init__(SPEC, params, hyperparameters)
