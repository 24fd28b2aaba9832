"""Live differential tests: optim_core's lr schedules against torch.optim.lr_scheduler, step by step.

Hypothesis draws a valid config of each schedule (SequentialLR of one to four others), one to three
param groups of different lrs with an SGD group's momentum, an Adam group's betas or neither (Rprop),
up to 200 steps, and now and then a change a user makes to the lrs between steps (which torch's
recursive forms carry on from). After the start and after every step, ``last_lr`` must be
``get_last_lr()``, every key of our groups torch's value, and ``state_dict()`` torch's, all
identical: same types, same floats bit for bit. A OneCycleLR is run past its end, which both refuse.
Resuming at any step from our state_dict or torch's, in ours, and from ours in torch, continues with
the same numbers.
"""

import copy
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st

from optim_core.errors import InvalidHyperparameterError, OptimCoreError, ScheduleStepError
from optim_core.lr_schedules import Schedule, parse_schedule

pytest.importorskip("torch", reason="torch is not installed, so there is no reference to compare the schedules with")

# torch and the oracle, which imports it, only after the skip.
import torch

from tests.optim_core import lr_schedule_oracle as oracle
from tests.optim_core.lr_schedule_strategies import (
    MAX_STEPS,
    SINGLE_NAMES,
    Setup,
    groups_for,
    sequential_config,
    setups,
    single_config,
)

NAMES = (*SINGLE_NAMES, "SequentialLR")
EXAMPLES = settings(max_examples=60, deadline=None)
# A failure is shrunk for up to 5 minutes; pytest's 300 s timeout would cut that short.
SHRINKING_TIME = pytest.mark.timeout(900)
LRS = st.floats(1e-4, 1.0)


def parsed(config: dict[str, Any]) -> Schedule:
    try:
        return parse_schedule(config)
    except InvalidHyperparameterError as error:
        # A pct_start that leaves a OneCycleLR phase of no length, where torch divides by zero
        # (test_one_cycle_refuses_a_pct_start_exactly_where_torch_divides_by_zero).
        if "no length" in error.message:
            reject()
        raise


@dataclass
class Side:
    """Our schedule and its groups, beside torch's optimizer and scheduler."""

    schedule: Schedule
    groups: list[dict[str, Any]]
    optimizer: Any
    scheduler: Any


@dataclass(frozen=True)
class Snapshot:
    """torch's values after a step: what every run through that step must reproduce."""

    last_lr: list[float]
    groups: list[dict[str, Any]]
    state_dict: dict[str, Any]


def started(setup: Setup) -> Side:
    schedule = parsed(setup.config)
    groups = copy.deepcopy(setup.groups)
    optimizer = oracle.torch_optimizer(setup.kind, setup.groups)
    scheduler = oracle.torch_scheduler(setup.config, optimizer)
    schedule.start(groups)
    return Side(schedule, groups, optimizer, scheduler)


def snapshot(side: Side) -> Snapshot:
    keys = list(side.groups[0])
    return Snapshot(
        last_lr=list(side.scheduler.get_last_lr()),
        groups=copy.deepcopy(oracle.torch_group_values(side.optimizer, keys)),
        state_dict=copy.deepcopy(side.scheduler.state_dict()),
    )


def assert_agree(side: Side, what: str) -> None:
    oracle.assert_identical(side.schedule.last_lr, side.scheduler.get_last_lr(), f"{what}: last_lr")
    oracle.assert_groups_agree(side.groups, side.optimizer, what)
    oracle.assert_identical(side.schedule.state_dict(), side.scheduler.state_dict(), f"{what}: state_dict")


def assert_matches(schedule: Schedule, groups: list[dict[str, Any]], expected: Snapshot, what: str) -> None:
    oracle.assert_identical(schedule.last_lr, expected.last_lr, f"{what}: last_lr")
    oracle.assert_identical(groups, expected.groups, f"{what}: param_groups")
    oracle.assert_identical(schedule.state_dict(), expected.state_dict, f"{what}: state_dict")


def edit_lrs(side: Side, lrs: list[float] | None) -> None:
    if lrs is not None:
        oracle.set_lrs(side.optimizer, side.groups, lrs)


def step_both(side: Side, what: str) -> bool:
    """One step on each side; False when torch refuses it (a OneCycleLR past its end), after
    checking that ours refuses it too and changes nothing."""
    try:
        oracle.step_torch(side.optimizer, side.scheduler)
    except ValueError as error:
        if "Tried to step" not in str(error):
            raise
        groups, state_dict = copy.deepcopy(side.groups), side.schedule.state_dict()
        with pytest.raises(ScheduleStepError, match="Tried to step"):
            side.schedule.step(side.groups)
        oracle.assert_identical(side.groups, groups, f"{what}: groups after a refused step")
        oracle.assert_identical(side.schedule.state_dict(), state_dict, f"{what}: state_dict after a refused step")
        return False
    side.schedule.step(side.groups)
    assert_agree(side, what)
    return True


def lr_edits(count: int) -> st.SearchStrategy[dict[int, list[float]]]:
    """Steps before which the user sets every group's lr, and the lrs."""
    return st.dictionaries(st.integers(1, MAX_STEPS), st.lists(LRS, min_size=count, max_size=count), max_size=3)


@SHRINKING_TIME
@pytest.mark.parametrize("name", NAMES)
@EXAMPLES
@given(data=st.data())
def test_every_lr_momentum_and_state_equals_torchs_at_every_step(name: str, data: st.DataObject) -> None:
    setup = data.draw(setups(name))
    edits = data.draw(lr_edits(len(setup.groups)))
    side = started(setup)
    assert_agree(side, "after start")
    for step in range(1, data.draw(st.integers(0, MAX_STEPS)) + 1):
        edit_lrs(side, edits.get(step))
        if not step_both(side, f"step {step}"):
            break


@SHRINKING_TIME
@pytest.mark.parametrize("name", NAMES)
@EXAMPLES
@given(data=st.data())
def test_resuming_from_a_state_dict_continues_exactly(name: str, data: st.DataObject) -> None:
    setup = data.draw(setups(name))
    edits = data.draw(lr_edits(len(setup.groups)))
    total = data.draw(st.integers(0, MAX_STEPS))
    side = started(setup)
    expected: dict[int, Snapshot] = {}
    saves: list[dict[str, Any]] = []
    for step in range(total + 1):
        saves.append(
            {
                "ours": side.schedule.state_dict(),
                "torch": copy.deepcopy(side.scheduler.state_dict()),
                "optimizer": copy.deepcopy(side.optimizer.state_dict()),
                "groups": copy.deepcopy(side.groups),
            }
        )
        if step == total:
            break
        edit_lrs(side, edits.get(step + 1))
        if not step_both(side, f"step {step + 1}"):
            break
        expected[step + 1] = snapshot(side)
    split = data.draw(st.integers(0, len(saves) - 1))
    saved = saves[split]

    for source in ("ours", "torch"):
        resumed = parsed(setup.config)
        resumed.load_state_dict(copy.deepcopy(saved[source]))
        groups = copy.deepcopy(saved["groups"])
        for step in range(split + 1, max(expected, default=0) + 1):
            if step in edits:
                for group, lr in zip(groups, edits[step], strict=True):
                    group["lr"] = lr
            resumed.step(groups)
            assert_matches(resumed, groups, expected[step], f"{source}'s state at {split}, step {step}")

    optimizer = oracle.torch_optimizer(setup.kind, setup.groups)
    scheduler = oracle.torch_scheduler(setup.config, optimizer)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(copy.deepcopy(saved["ours"]))
    keys = list(saved["groups"][0])
    for step in range(split + 1, max(expected, default=0) + 1):
        if step in edits:
            for group, lr in zip(optimizer.param_groups, edits[step], strict=True):
                group["lr"] = lr
        oracle.step_torch(optimizer, scheduler)
        what = f"torch from our state at {split}, step {step}"
        oracle.assert_identical(list(scheduler.get_last_lr()), expected[step].last_lr, f"{what}: last_lr")
        oracle.assert_identical(
            oracle.torch_group_values(optimizer, keys), expected[step].groups, f"{what}: param_groups"
        )
        oracle.assert_identical(scheduler.state_dict(), expected[step].state_dict, f"{what}: state_dict")


@EXAMPLES
@given(
    total_steps=st.integers(2, 60),
    data=st.data(),
    three_phase=st.booleans(),
    anneal_strategy=st.sampled_from(("cos", "linear")),
)
def test_one_cycle_refuses_a_pct_start_exactly_where_torch_divides_by_zero(
    total_steps: int, data: st.DataObject, three_phase: bool, anneal_strategy: str
) -> None:
    # Phases end where pct_start * total_steps is a whole number, or half of one past the middle.
    pct_start = data.draw(st.integers(1, 2 * total_steps - 1).map(lambda n: n / (2 * total_steps)))
    config = {
        "name": "OneCycleLR",
        "max_lr": 1.0,
        "total_steps": total_steps,
        "pct_start": pct_start,
        "three_phase": three_phase,
        "anneal_strategy": anneal_strategy,
        "cycle_momentum": False,
    }
    torch_divides_by_zero = False
    try:
        optimizer = oracle.torch_optimizer("Rprop", [{"lr": 0.1}])
        scheduler = oracle.torch_scheduler(config, optimizer)
        for _ in range(total_steps):
            oracle.step_torch(optimizer, scheduler)
    except ZeroDivisionError:
        torch_divides_by_zero = True
    if torch_divides_by_zero:
        with pytest.raises(InvalidHyperparameterError, match="no length") as refusal:
            parse_schedule(config)
        assert refusal.value.loc == ("lr_scheduler", "pct_start")
    else:
        parse_schedule(config)


# Values of every kind an argument may be given, sensible or not: torch's own checks decide which it refuses.
WILD_VALUES = st.one_of(
    st.integers(-2, 40),
    st.floats(-2.0, 2.0),
    st.sampled_from(
        (0, 0.0, -0.0, 1, 1.0, 2, 0.5, 5e-324, 1e-310, 1e200, 1e308, math.inf, -math.inf, math.nan, True, False)
    ),
    st.sampled_from((None, "cos", "linear", "x", [], [0], [3, 1], [1.5], [2, 2], [0.5, 0.5, 0.5], [0.9] * 3)),
)
WILD_STEPS = 60


def torch_arguments(name: str) -> tuple[str, ...]:
    """The arguments of torch's class, read from its signature: not from ours."""
    parameters = inspect.signature(getattr(torch.optim.lr_scheduler, name)).parameters
    return tuple(key for key in parameters if key not in ("self", "optimizer", "last_epoch"))


@st.composite
def wild_config(draw: st.DrawFn, name: str, depth: int = 0) -> dict[str, Any]:
    """A config of ``name`` with some of torch's arguments (and now and then one it has not, or
    ``last_epoch``), each of any value."""
    config: dict[str, Any] = {"name": name}
    for key in (*torch_arguments(name), "last_epoch", "verbose"):
        if draw(st.integers(0, 3 if key in ("last_epoch", "verbose") else 1)) == 0:
            config[key] = draw(WILD_VALUES)
    if name == "SequentialLR" and depth == 0:
        children = st.lists(st.sampled_from(NAMES).flatmap(lambda child: wild_config(child, depth + 1)), max_size=3)
        config["schedulers"] = draw(children | WILD_VALUES)
        config["milestones"] = draw(st.lists(st.integers(-1, 30), max_size=3) | WILD_VALUES)
    return config


def torch_run(config: dict[str, Any], kind: oracle.OptimizerKind, groups: list[dict[str, Any]]) -> list[Any]:
    """torch's lrs after the start and each of WILD_STEPS steps, up to where it raises (then the
    exception) or leaves an lr that is not finite (then that lr)."""
    outcomes: list[Any] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            optimizer = oracle.torch_optimizer(kind, groups)
            scheduler = oracle.torch_scheduler(config, optimizer)
            for step in range(WILD_STEPS + 1):
                if step:
                    oracle.step_torch(optimizer, scheduler)
                lrs = list(scheduler.get_last_lr())
                outcomes.append(lrs)
                if not all(isinstance(lr, float) and math.isfinite(lr) for lr in lrs):
                    break
        except Exception as error:  # whatever torch raises is a refusal
            outcomes.append(error)
    return outcomes


@st.composite
def nearly_valid_config(draw: st.DrawFn, name: str, groups: int) -> dict[str, Any]:
    """A valid config of ``name`` with one argument (perhaps of a scheduler inside it) set to any value."""
    config = draw(sequential_config(groups) if name == "SequentialLR" else single_config(name, groups))
    target = config
    if name == "SequentialLR" and draw(st.booleans()):
        target = draw(st.sampled_from(config["schedulers"]))
    target[draw(st.sampled_from((*torch_arguments(target["name"]), "last_epoch")))] = draw(WILD_VALUES)
    return config


@SHRINKING_TIME
@settings(max_examples=400, deadline=None)
@given(data=st.data(), name=st.sampled_from(NAMES), kind=st.sampled_from(("SGD", "Rprop")))
def test_what_torch_refuses_we_refuse_and_what_we_accept_runs_as_torchs(
    data: st.DataObject, name: str, kind: oracle.OptimizerKind
) -> None:
    count = data.draw(st.integers(1, 2))
    config = data.draw(wild_config(name) | nearly_valid_config(name, count))
    groups = data.draw(groups_for(kind, count))
    torch_outcomes = torch_run(copy.deepcopy(config), kind, copy.deepcopy(groups))
    try:
        schedule = parse_schedule(copy.deepcopy(config))
        schedule.start(groups)
    except OptimCoreError:
        # Refused before it began: at least as strict as torch, whatever torch did.
        event("refused by us", "torch too" if isinstance(torch_outcomes[-1], Exception) else "torch runs")
        return
    event("accepted by us")
    for step, outcome in enumerate(torch_outcomes):
        if step:
            try:
                schedule.step(groups)
            except ScheduleStepError:
                assert isinstance(outcome, Exception) or not all(map(math.isfinite, outcome)), (
                    f"step {step} refused, where torch went on to {outcome!r}"
                )
                return
        assert not isinstance(outcome, Exception), f"step {step} accepted, where torch raised {outcome!r}"
        assert all(map(math.isfinite, outcome)), f"step {step} accepted, where torch's lrs became {outcome!r}"
        oracle.assert_identical(schedule.last_lr, outcome, f"step {step}: last_lr")
