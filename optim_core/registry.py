"""The one list of algorithms: the service's names, schemas and dispatch, the SDK and the tests read it.

Adding an algorithm is its module (math, kernel, ``SPEC``, torch-shaped class) and a line here.
"""

from collections.abc import Mapping
from typing import Any

from optim_core import adagrad, adam, adamw, rmsprop, rprop, sgd
from optim_core.spec import AlgorithmSpec

ALGORITHMS: Mapping[str, AlgorithmSpec[Any, Any]] = {
    spec.name: spec for spec in (rprop.SPEC, rmsprop.SPEC, sgd.SPEC, adam.SPEC, adamw.SPEC, adagrad.SPEC)
}
"""Every algorithm, by the name clients use."""
NAMES: tuple[str, ...] = tuple(ALGORITHMS)
