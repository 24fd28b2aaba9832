"""Live differential tests: optim_core's optimizers against torch.optim, compared after every step.

Hypothesis draws params (0-d to a few dozen elements, float32 or float64 each), one to three params in one or two
groups with their own hyperparameters, and 1 to 20 steps in which each param's grad is sometimes omitted and is
otherwise either fresh or the previous grad with its signs kept, flipped or zeroed element by element. After every
step the params and the whole state_dict must agree with torch's (see torch_oracle for the tolerances).
"""

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optim_core import SGD, Adagrad, Adam, AdamW, RMSprop, Rprop

pytest.importorskip("torch", reason="torch is not installed, so there is no reference to compare optim_core with")

# torch_oracle imports torch, hence only after the skip.
from tests.optim_core import torch_oracle
from tests.optim_core.torch_oracle import CoreOptimizer, FloatArray, OptimizerName

# Insertion order differs from sorted order, so that an implementation indexing params by sorted name shows up.
PARAM_NAMES = ("weight", "bias", "alpha.scale")
DTYPES: tuple[type[np.floating[Any]], ...] = (np.float32, np.float64)
# 0-d and 1-element params, and others of 2 to 4**3 = 64 elements.
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4) | st.sampled_from(((), (1,)))
# Params and grads of order one, the scale the brief's absolute RMSprop tolerances are meant for.
MAGNITUDE = 2.0
# Hyperparameters a group may override, in units: RMSprop's alpha range depends on centered (see below).
OVERRIDABLE: dict[OptimizerName, tuple[tuple[str, ...], ...]] = {
    "Rprop": (("lr",), ("etas",), ("step_sizes",), ("maximize",)),
    "RMSprop": (("lr",), ("alpha", "centered"), ("eps",), ("weight_decay",), ("momentum",), ("maximize",)),
    # nesterov needs momentum > 0 and dampening 0: the three are overridden together.
    "SGD": (("lr",), ("momentum", "dampening", "nesterov"), ("weight_decay",), ("maximize",)),
    "Adam": (
        ("lr",),
        ("betas",),
        ("eps",),
        ("weight_decay",),
        ("amsgrad",),
        ("maximize",),
        ("decoupled_weight_decay",),
    ),
    "AdamW": (("lr",), ("betas",), ("eps",), ("weight_decay",), ("amsgrad",), ("maximize",)),
    # A group's initial_accumulator_value is not used (torch fills every sum from the constructor's); overriding it
    # checks that.
    "Adagrad": (("lr",), ("lr_decay",), ("eps",), ("weight_decay",), ("initial_accumulator_value",), ("maximize",)),
}
LEARNING_RATES: dict[OptimizerName, st.SearchStrategy[float]] = {
    "Rprop": st.floats(0.0, 1.0),
    "RMSprop": st.floats(0.0, 0.5),
    "SGD": st.floats(0.0, 1.0),
    "Adam": st.floats(0.0, 0.5),
    "AdamW": st.floats(0.0, 0.5),
    "Adagrad": st.floats(0.0, 0.5),
}
OPTIMIZERS: dict[OptimizerName, type[CoreOptimizer]] = {
    "Rprop": Rprop,
    "RMSprop": RMSprop,
    "SGD": SGD,
    "Adam": Adam,
    "AdamW": AdamW,
    "Adagrad": Adagrad,
}
MAX_STEPS = 20
MIN_CENTERED_ALPHA_POWER = 0.1
EXAMPLES = settings(max_examples=80, deadline=None)
# A failure is shrunk for up to 5 minutes before Hypothesis reports it; pytest's 300 s timeout would cut that short and
# hide the minimal example.
SHRINKING_TIME = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Step:
    grads: dict[str, FloatArray]
    # group index -> lr set through param_groups (on both optimizers) just before this step
    new_lrs: dict[int, float]


@dataclass(frozen=True)
class Scenario:
    optimizer: OptimizerName
    defaults: dict[str, Any]
    # optim_core's form: {"params": {name: array}, **hyperparameter overrides}
    groups: list[dict[str, Any]]
    # a single group without overrides handed over as a bare {name: array}, the other accepted form
    bare_params: bool
    steps: list[Step]


def sometimes(edges: tuple[float, ...], otherwise: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """One of ``edges`` in about one draw of ten, else ``otherwise``."""
    return st.integers(0, 9).flatmap(lambda pick: st.sampled_from(edges) if pick == 0 else otherwise)


# Valid etas that float32 rounds to the very values torch's sign masks compare with: eta- to 0 (torch then sets the
# factor to 1 and zeroes no grad) or to 1 (grads with a zero product are zeroed too), eta+ to 1. Plain draws hit them
# too rarely to be caught in a run.
ETAMINUS_EDGES = (2.0**-150, 2.0**-149, 1.0 - 2.0**-25, 1.0 - 2.0**-24)
ETAPLUS_EDGES = (1.0 + 2.0**-24, 1.0 + 2.0**-23)


@st.composite
def rprop_hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    """Anything torch accepts (0 < etaminus < 1 < etaplus) and optim_core too (0 <= min <= max step size, finite).

    Rprop is compared bit for bit, so no range needs to be narrowed for rounding's sake: tiny etas and clamp bounds
    that round to 0 or 1 in float32 are wanted. etaplus stays below 10 only because above float32's range it becomes
    inf, and inf * a zero step size is NaN.
    """
    step_size_min = draw(st.floats(0.0, 1.0))
    return {
        "lr": draw(LEARNING_RATES["Rprop"]),
        "etas": (
            draw(sometimes(ETAMINUS_EDGES, st.floats(0.0, 1.0, exclude_min=True, exclude_max=True))),
            draw(sometimes(ETAPLUS_EDGES, st.floats(1.0, 10.0, exclude_min=True))),
        ),
        "step_sizes": (step_size_min, draw(st.floats(step_size_min, 100.0))),
        "maximize": draw(st.booleans()),
    }


@st.composite
def rmsprop_hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    """Valid hyperparameters, within the ranges where comparing to a tolerance means something.

    eps > 0: with eps = 0 a zero grad on a zero square_avg is 0 / 0. weight_decay is 0 or at least 2**-10, for the
    reason given at rmsprop_values. Centered alpha is at least MIN_CENTERED_ALPHA_POWER, so that one step is
    always allowed, and runs are kept short enough for it (see max_steps_for).
    """
    centered = draw(st.booleans())
    return {
        "lr": draw(LEARNING_RATES["RMSprop"]),
        # Centered alphas below 0.9 allow only short runs, hence kept to half of the draws.
        "alpha": draw(
            st.floats(0.9, 0.999) | st.floats(MIN_CENTERED_ALPHA_POWER, 0.9) if centered else st.floats(0.0, 0.999)
        ),
        "eps": draw(st.floats(1e-10, 1.0)),
        "weight_decay": draw(st.just(0.0) | st.floats(2.0**-10, 1.0)),
        "momentum": draw(st.just(0.0) | st.floats(0.0, 0.9)),
        "centered": centered,
        "maximize": draw(st.booleans()),
    }


WEIGHT_DECAYS = st.just(0.0) | st.floats(2.0**-10, 1.0)
"""0, or at least 2**-10, for the reason given at rmsprop_values."""


@st.composite
def sgd_hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    """Valid hyperparameters: nesterov only with momentum > 0 and dampening 0, as torch requires."""
    nesterov = draw(st.booleans())
    return {
        "lr": draw(LEARNING_RATES["SGD"]),
        "momentum": draw(st.floats(0.01, 1.0) if nesterov else st.just(0.0) | st.floats(0.0, 1.0)),
        "dampening": 0.0 if nesterov else draw(st.just(0.0) | st.floats(-0.5, 1.0)),
        "weight_decay": draw(WEIGHT_DECAYS),
        "nesterov": nesterov,
        "maximize": draw(st.booleans()),
    }


@st.composite
def adamw_hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    """Valid hyperparameters, eps > 0 as for RMSprop; betas reach 0.3 and below, where torch's lerp switches
    formula, and near 1, where the bias corrections matter over the whole run."""
    return {
        "lr": draw(LEARNING_RATES["Adam"]),
        "betas": (draw(st.floats(0.0, 0.999)), draw(st.floats(0.0, 0.9999))),
        "eps": draw(st.floats(1e-10, 1.0)),
        "weight_decay": draw(WEIGHT_DECAYS),
        "amsgrad": draw(st.booleans()),
        "maximize": draw(st.booleans()),
    }


@st.composite
def adam_hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    return {**draw(adamw_hyperparameters()), "decoupled_weight_decay": draw(st.booleans())}


@st.composite
def adagrad_hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(LEARNING_RATES["Adagrad"]),
        "lr_decay": draw(st.just(0.0) | st.floats(0.0, 1.0)),
        "eps": draw(st.floats(1e-10, 1.0)),
        "weight_decay": draw(WEIGHT_DECAYS),
        "initial_accumulator_value": draw(st.just(0.0) | st.floats(0.0, 1.0)),
        "maximize": draw(st.booleans()),
    }


HYPERPARAMETERS: dict[OptimizerName, Any] = {
    "Rprop": rprop_hyperparameters,
    "RMSprop": rmsprop_hyperparameters,
    "SGD": sgd_hyperparameters,
    "Adam": adam_hyperparameters,
    "AdamW": adamw_hyperparameters,
    "Adagrad": adagrad_hyperparameters,
}


def max_steps_for(groups: list[dict[str, Any]], defaults: dict[str, Any]) -> int:
    """The most steps a run may have so that every centered group keeps alpha**steps >= MIN_CENTERED_ALPHA_POWER.

    Centered RMSprop's variance square_avg - grad_avg**2 keeps at least alpha**t of square_avg after t steps, so
    cancellation then magnifies rounding at most 10x. As alpha**t -> 0 it is pure rounding residue, which torch's fused
    multiply-add makes negative about half the time (sqrt: NaN). Short runs still reach alpha < 0.5, where torch's
    lerp switches formula.
    """
    steps = MAX_STEPS
    for group in groups:
        resolved = {**defaults, **group}
        if resolved.get("centered"):
            steps = min(steps, max(1, math.floor(math.log(MIN_CENTERED_ALPHA_POWER, resolved["alpha"]))))
    return steps


def rprop_values(dtype: type[np.floating[Any]]) -> st.SearchStrategy[float]:
    """Param and grad elements for Rprop, among them values whose products with each other underflow to zero in
    ``dtype``, so that sign(grad * prev) is 0 with both factors nonzero."""
    width: Literal[32, 64] = 32 if dtype == np.float32 else 64
    # Powers of two, exact in both widths; squared they fall below the smallest subnormal (2**-149, 2**-1074).
    tiny = 2.0**-100 if dtype == np.float32 else 2.0**-700
    return st.just(0.0) | st.floats(-MAGNITUDE, MAGNITUDE, width=width) | st.floats(-tiny, tiny, width=width)


def rmsprop_values(dtype: type[np.floating[Any]]) -> st.SearchStrategy[float]:
    """Param and grad elements for RMSprop: 0 or a magnitude in [2**-10, MAGNITUDE].

    Squares of smaller grads (and of weight_decay * param) underflow, where rounding is no longer relative: centered's
    square_avg - grad_avg**2 can then go negative by a subnormal, its sqrt is NaN, and whether torch gets there depends
    on its fused multiply-add; a comparison there tests FMA emulation in the subnormal range, not RMSprop.
    """
    width: Literal[32, 64] = 32 if dtype == np.float32 else 64
    magnitudes = st.floats(2.0**-10, MAGNITUDE, width=width)
    return st.just(0.0) | magnitudes | magnitudes.map(lambda value: -value)


def sgd_values(dtype: type[np.floating[Any]]) -> st.SearchStrategy[float]:
    """Param and grad elements for SGD, which squares nothing: any of order one, subnormals included."""
    width: Literal[32, 64] = 32 if dtype == np.float32 else 64
    return st.just(0.0) | st.floats(-MAGNITUDE, MAGNITUDE, width=width)


# Adam and Adagrad square the gradient as RMSprop does.
VALUES = {
    "Rprop": rprop_values,
    "RMSprop": rmsprop_values,
    "SGD": sgd_values,
    "Adam": rmsprop_values,
    "AdamW": rmsprop_values,
    "Adagrad": rmsprop_values,
}


@st.composite
def scenarios(draw: st.DrawFn, optimizer: OptimizerName) -> Scenario:
    hyperparameters = HYPERPARAMETERS[optimizer]()
    defaults = draw(hyperparameters)
    names = PARAM_NAMES[: draw(st.integers(1, len(PARAM_NAMES)))]
    dtypes = {name: draw(st.sampled_from(DTYPES)) for name in names}
    elements = {name: VALUES[optimizer](dtypes[name]) for name in names}
    initial = {name: draw(hnp.arrays(dtypes[name], SHAPES, elements=elements[name])) for name in names}
    split = draw(st.integers(1, len(names) - 1)) if len(names) > 1 and draw(st.booleans()) else len(names)
    groups: list[dict[str, Any]] = []
    for group_names in (names[:split], names[split:]):
        if not group_names:
            continue
        own = draw(hyperparameters)
        units = draw(st.lists(st.sampled_from(OVERRIDABLE[optimizer]), unique=True))
        overrides = {key: own[key] for unit in units for key in unit}
        groups.append({"params": {name: initial[name] for name in group_names}, **overrides})
    bare_params = len(groups) == 1 and len(groups[0]) == 1 and draw(st.booleans())

    steps: list[Step] = []
    last_grads: dict[str, FloatArray] = {}
    for _ in range(draw(st.integers(1, max_steps_for(groups, defaults)))):
        grads: dict[str, FloatArray] = {}
        # An empty grads dict is rejected by optim_core, so the first name drawn is always present.
        present = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        for name in present:
            shape = initial[name].shape
            if name in last_grads and draw(st.booleans()):
                # Element-wise keep (same sign: Rprop grows the step), flip (shrinks it) or zero the previous grad.
                signs = draw(hnp.arrays(dtypes[name], shape, elements=st.sampled_from((1.0, -1.0, 0.0))))
                grads[name] = last_grads[name] * signs
            else:
                grads[name] = draw(hnp.arrays(dtypes[name], shape, elements=elements[name]))
        last_grads.update(grads)
        new_lrs = draw(st.dictionaries(st.integers(0, len(groups) - 1), LEARNING_RATES[optimizer], max_size=1))
        steps.append(Step(grads=grads, new_lrs=new_lrs))
    return Scenario(
        optimizer=optimizer,
        defaults=defaults,
        groups=groups,
        bare_params=bare_params,
        steps=steps,
    )


def run_against_torch(scenario: Scenario) -> None:
    """Build both optimizers from the scenario, then step them side by side, comparing after every step."""
    ours = OPTIMIZERS[scenario.optimizer](
        scenario.groups[0]["params"] if scenario.bare_params else scenario.groups, **scenario.defaults
    )
    theirs = torch_oracle.TorchTwin(
        torch_oracle.build_torch_optimizer(scenario.optimizer, scenario.groups, scenario.defaults)
    )
    theirs.assert_agrees(ours)
    for step in scenario.steps:
        for group_index, lr in step.new_lrs.items():
            ours.param_groups[group_index]["lr"] = lr
            theirs.optimizer.param_groups[group_index]["lr"] = lr
        ours.step(step.grads)
        theirs.step(step.grads)
        theirs.assert_agrees(ours)


@SHRINKING_TIME
@EXAMPLES
@given(scenario=scenarios("Rprop"))
def test_rprop_matches_torch_bit_for_bit_after_every_step(scenario: Scenario) -> None:
    run_against_torch(scenario)


@SHRINKING_TIME
@EXAMPLES
@given(scenario=scenarios("RMSprop"))
def test_rmsprop_matches_torch_to_rounding_after_every_step(scenario: Scenario) -> None:
    run_against_torch(scenario)


@SHRINKING_TIME
@EXAMPLES
@given(scenario=scenarios("SGD"))
def test_sgd_matches_torch_to_rounding_after_every_step(scenario: Scenario) -> None:
    run_against_torch(scenario)


@SHRINKING_TIME
@EXAMPLES
@given(scenario=scenarios("Adam"))
def test_adam_matches_torch_to_rounding_after_every_step(scenario: Scenario) -> None:
    run_against_torch(scenario)


@SHRINKING_TIME
@EXAMPLES
@given(scenario=scenarios("AdamW"))
def test_adamw_matches_torch_to_rounding_after_every_step(scenario: Scenario) -> None:
    run_against_torch(scenario)


@SHRINKING_TIME
@EXAMPLES
@given(scenario=scenarios("Adagrad"))
def test_adagrad_matches_torch_to_rounding_after_every_step(scenario: Scenario) -> None:
    run_against_torch(scenario)
