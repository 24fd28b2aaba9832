"""Resuming from a state_dict continues the run exactly.

optim_core alone: after k steps, state_dict -> json.dumps -> json.loads -> a fresh optimizer built from the current
params (with default hyperparameters, so that they must come from the loaded groups) -> load_state_dict; every later
step must then equal the uninterrupted run's bit for bit. With torch: state saved by torch resumes in optim_core, and
state saved by optim_core resumes in torch, and the two then agree after every step as in test_torch_parity.
"""

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest

from optim_core import SGD, Adagrad, Adam, AdamW, RMSprop, Rprop

FloatArray = npt.NDArray[np.floating[Any]]
Grads = dict[str, FloatArray]

TOTAL_STEPS = 12
# Steps taken before the state_dict is saved: none (empty state), one, mid-run, all but one.
SPLITS = (0, 1, 5, 11)
# "late" gets its first grad at this step, so at the splits before it the saved state has no entry for it.
LATE_START = 7
# Float32 and float64, a 0-d and a 1-element param, names whose sorted order is not their order.
INITIAL_PARAMS: dict[str, FloatArray] = {
    "weight": np.linspace(-1.5, 1.5, 6, dtype=np.float32).reshape(3, 2),
    "bias": np.array([0.25, -0.75], dtype=np.float64),
    "gain": np.array(1.25, dtype=np.float64),
    "late": np.array([-0.5], dtype=np.float32),
}

requires_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed, so there is no torch optimizer to exchange state with",
)


OptimizerName = Literal["Rprop", "RMSprop", "SGD", "Adam", "AdamW", "Adagrad"]
CoreOptimizer = Rprop | RMSprop | SGD | Adam | AdamW | Adagrad
CLASSES: dict[OptimizerName, type[CoreOptimizer]] = {
    "Rprop": Rprop,
    "RMSprop": RMSprop,
    "SGD": SGD,
    "Adam": Adam,
    "AdamW": AdamW,
    "Adagrad": Adagrad,
}


@dataclass(frozen=True)
class Setup:
    optimizer: OptimizerName
    defaults: dict[str, Any]
    # each group: its param names and its hyperparameter overrides
    groups: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]

    def build(self, params: Mapping[str, FloatArray], *, with_hyperparameters: bool = True) -> CoreOptimizer:
        """An optim_core optimizer over ``params``; without hyperparameters it has the groups but only defaults."""
        defaults = self.defaults if with_hyperparameters else {}
        return CLASSES[self.optimizer](self.grouped(params, with_hyperparameters=with_hyperparameters), **defaults)

    def grouped(self, params: Mapping[str, FloatArray], *, with_hyperparameters: bool = True) -> list[dict[str, Any]]:
        """optim_core's group form, with copies of ``params``."""
        return [
            {
                "params": {name: np.array(params[name], copy=True) for name in names},
                **(overrides if with_hyperparameters else {}),
            }
            for names, overrides in self.groups
        ]


ALL_NAMES = tuple(INITIAL_PARAMS)
SETUPS = {
    "rprop_one_group": Setup("Rprop", {"lr": 0.05, "etas": (0.4, 1.3), "step_sizes": (1e-4, 0.2)}, ((ALL_NAMES, {}),)),
    "rprop_two_groups_maximize": Setup(
        "Rprop",
        {"lr": 0.02},
        ((("weight", "bias"), {"lr": 0.1, "maximize": True}), (("gain", "late"), {"etas": (0.3, 1.5)})),
    ),
    "rmsprop_plain": Setup("RMSprop", {"lr": 0.01}, ((ALL_NAMES, {}),)),
    "rmsprop_momentum_centered": Setup(
        "RMSprop",
        {"lr": 0.01, "alpha": 0.95, "eps": 1e-6, "weight_decay": 0.1, "momentum": 0.9, "centered": True},
        ((ALL_NAMES, {"maximize": True}),),
    ),
    "rmsprop_two_groups": Setup(
        "RMSprop",
        {"lr": 0.02, "weight_decay": 0.01},
        ((("weight", "gain"), {"momentum": 0.5, "centered": True}), (("bias", "late"), {"alpha": 0.9, "lr": 0.05})),
    ),
    "sgd_nesterov_weight_decay": Setup(
        "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, ((ALL_NAMES, {}),)
    ),
    # "gain" and "late" keep no momentum, hence no state.
    "sgd_two_groups": Setup(
        "SGD",
        {"lr": 0.02},
        ((("weight", "bias"), {"momentum": 0.5, "dampening": 0.2}), (("gain", "late"), {"maximize": True})),
    ),
    "adam_amsgrad_weight_decay": Setup(
        "Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "betas": (0.8, 0.99)}, ((ALL_NAMES, {}),)
    ),
    "adamw_two_groups": Setup(
        "AdamW",
        {"lr": 0.01},
        (
            (("weight", "bias"), {"amsgrad": True, "maximize": True}),
            (("gain", "late"), {"weight_decay": 0.1, "betas": (0.3, 0.5)}),
        ),
    ),
    # "late" has its state (step 0, the initial sum) from the start, before its first grad.
    "adagrad_decay": Setup(
        "Adagrad",
        {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.05},
        ((ALL_NAMES, {}),),
    ),
}


def grad_schedule(seed: int) -> list[Grads]:
    """TOTAL_STEPS grads dicts with omitted params, exact zeros, and sign flips of the previous grad."""
    rng = np.random.default_rng(seed)
    schedule: list[Grads] = []
    previous: Grads = {}
    for step in range(TOTAL_STEPS):
        grads: Grads = {}
        for name, param in INITIAL_PARAMS.items():
            # "weight" is never omitted, so that no grads dict is empty.
            if (name == "late" and step < LATE_START) or (name != "weight" and rng.random() < 0.2):
                continue
            flip = name in previous and rng.random() < 0.3
            grad = -previous[name] if flip else rng.normal(size=param.shape).astype(param.dtype)
            grads[name] = np.where(rng.random(size=param.shape) < 0.2, 0.0, grad).astype(param.dtype)
        previous.update(grads)
        schedule.append(grads)
    return schedule


def assert_identical(actual: CoreOptimizer, expected: CoreOptimizer) -> None:
    """Same params (dtype and bytes) and the same state_dict, to the last bit and key order (JSON text)."""
    assert set(actual.params) == set(expected.params)
    for name, value in expected.params.items():
        assert actual.params[name].dtype == value.dtype, name
        assert actual.params[name].tobytes() == value.tobytes(), name
    # repr of a float round-trips exactly, -0.0 included, so equal text means equal bits.
    assert json.dumps(actual.state_dict()) == json.dumps(expected.state_dict())


def check_resume_matches_uninterrupted_run(setup_name: str, split: int) -> None:
    setup = SETUPS[setup_name]
    schedule = grad_schedule(seed=split)
    uninterrupted = setup.build(INITIAL_PARAMS)
    for grads in schedule[:split]:
        uninterrupted.step(grads)
    saved = json.dumps(uninterrupted.state_dict())
    resumed = setup.build(uninterrupted.params, with_hyperparameters=False)
    resumed.load_state_dict(json.loads(saved))
    assert_identical(resumed, uninterrupted)
    for grads in schedule[split:]:
        uninterrupted.step(grads)
        resumed.step(grads)
        assert_identical(resumed, uninterrupted)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("setup_name", list(SETUPS))
def test_resumed_optimizer_continues_exactly_like_the_uninterrupted_run(setup_name: str, split: int) -> None:
    check_resume_matches_uninterrupted_run(setup_name, split)


@requires_torch
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("setup_name", list(SETUPS))
def test_state_saved_by_torch_resumes_in_optim_core_in_step_with_torch(setup_name: str, split: int) -> None:
    # Imported here: torch_oracle needs torch, and the optim_core-only tests above must run without it.
    from tests.optim_core import torch_oracle

    setup = SETUPS[setup_name]
    schedule = grad_schedule(seed=split)
    theirs = torch_oracle.build_torch_optimizer(setup.optimizer, setup.grouped(INITIAL_PARAMS), setup.defaults)
    for grads in schedule[:split]:
        torch_oracle.step_torch(theirs, grads)
    saved = json.dumps(torch_oracle.state_dict_to_json(theirs.state_dict()))
    ours = setup.build(torch_oracle.torch_params(theirs), with_hyperparameters=False)
    ours.load_state_dict(json.loads(saved))
    # From here on both hold the same values, where the twin's rounding bound starts.
    twin = torch_oracle.TorchTwin(theirs)
    twin.assert_agrees(ours)
    for grads in schedule[split:]:
        twin.step(grads)
        ours.step(grads)
        twin.assert_agrees(ours)


@requires_torch
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("setup_name", list(SETUPS))
def test_state_saved_by_optim_core_resumes_in_torch_in_step_with_optim_core(setup_name: str, split: int) -> None:
    # Imported here: torch_oracle needs torch, and the optim_core-only tests above must run without it.
    from tests.optim_core import torch_oracle

    setup = SETUPS[setup_name]
    schedule = grad_schedule(seed=split)
    ours = setup.build(INITIAL_PARAMS)
    for grads in schedule[:split]:
        ours.step(grads)
    saved = json.dumps(ours.state_dict())
    # torch's own defaults: the hyperparameters must come from the loaded groups.
    theirs = torch_oracle.build_torch_optimizer(
        setup.optimizer, setup.grouped(ours.params, with_hyperparameters=False), {}
    )
    torch_oracle.load_json_state_dict_into_torch(theirs, json.loads(saved))
    # From here on both hold the same values, where the twin's rounding bound starts.
    twin = torch_oracle.TorchTwin(theirs)
    twin.assert_agrees(ours)
    for grads in schedule[split:]:
        ours.step(grads)
        twin.step(grads)
        twin.assert_agrees(ours)
