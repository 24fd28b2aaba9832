r"""AdamW, as torch computes it: Adam (``adam.py``) with the weight decay decoupled, its spec, and ``AdamW``.

The params decay before Adam's step rather than through the gradient:

.. math::

    \theta_{t-1} \leftarrow \theta_{t-1} (1 - \gamma \lambda), \text{ then Adam's step with } \lambda = 0

As in torch, AdamW is Adam with ``decoupled_weight_decay=True``, which its groups keep (and which is
all they accept for it). Defaults: ``lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
amsgrad=False``.

>>> import numpy as np
>>> opt = AdamW({"w": np.array([1.0])}, lr=0.1, weight_decay=0.5)
>>> opt.step({"w": np.array([2.0])})
>>> round(float(opt.params["w"][0]), 6)
0.85
"""

from collections.abc import Mapping, Sequence

from optim_core.adam import HYPERPARAMETER_SCHEMAS as ADAM_SCHEMAS
from optim_core.adam import AdamHyperparams, AdamState, adam_spec
from optim_core.checks import true_flag, true_flag_schema
from optim_core.optimizer import Optimizer, ParamGroupSpec, Params

DEFAULTS: Mapping[str, object] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 1e-2,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": True,
}
"""torch's group keys for AdamW, in torch's order, with its defaults."""

HYPERPARAMETER_SCHEMAS: Mapping[str, Mapping[str, object]] = {
    **ADAM_SCHEMAS,
    "weight_decay": {**ADAM_SCHEMAS["weight_decay"], "description": "the decoupled decay's factor, times lr"},
    "decoupled_weight_decay": true_flag_schema("always true: the decay that makes AdamW"),
}
"""What ``parse`` accepts for each key, as JSON Schema."""


def parse(group: Mapping[str, object]) -> AdamHyperparams:
    """Adam's validation, and ``decoupled_weight_decay`` true."""
    true_flag(group, "decoupled_weight_decay", "AdamW's weight decay is decoupled")
    return AdamHyperparams.from_group(group)


SPEC = adam_spec(name="adamw", torch_name="AdamW", defaults=DEFAULTS, schemas=HYPERPARAMETER_SCHEMAS, parse=parse)


class AdamW(Optimizer[AdamHyperparams, AdamState]):
    """AdamW (Adam with decoupled weight decay) with torch's semantics and signature.

    >>> import numpy as np
    >>> opt = AdamW({"w": np.array([1.0])}, lr=0.1)
    >>> opt.step({"w": np.array([2.0])})
    >>> round(float(opt.params["w"][0]), 6)
    0.899
    """

    def __init__(
        self,
        params: Params | Sequence[ParamGroupSpec],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
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
            "decoupled_weight_decay": True,
        }
        super().__init__(SPEC, params, hyperparameters)
