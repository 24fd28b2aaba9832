"""The SDK has a torch-shaped class for every optimizer in the registry, with torch's defaults."""

import inspect

import pytest

from optim_client import RemoteOptimizer
from optim_core import ALGORITHMS
from tests.optimizers import OPTIMIZERS


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_registered_optimizer_has_a_remote_class_with_torchs_defaults(name: str) -> None:
    remote = RemoteOptimizer.of(name)
    parameters = inspect.signature(remote).parameters
    defaults = {key: parameter.default for key, parameter in parameters.items() if key in ALGORITHMS[name].defaults}

    spec = ALGORITHMS[name]
    # A key the class does not take is one whose only value is its default (AdamW's decoupled_weight_decay).
    fixed = {key: spec.hyperparameter_schemas[key].get("const") for key in spec.defaults if key not in defaults}

    assert remote.__name__ == f"Remote{spec.torch_name}"
    assert {**defaults, **fixed} == dict(spec.defaults)


def test_a_remote_class_of_an_optimizer_the_registry_lacks_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="is not one of"):
        type("RemoteNothing", (RemoteOptimizer,), {"optimizer_name": "nothing"})
