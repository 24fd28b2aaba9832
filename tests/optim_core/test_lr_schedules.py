"""What the lr schedules refuse, and that a refused call changes nothing.

A bad config is refused by ``parse_schedule`` with an ``InvalidHyperparameterError`` located at the
argument (``("lr_scheduler", "T_max")``, ``("lr_scheduler", "schedulers", 1, "gamma")``) whose
message names it and its value. Groups a schedule cannot work with, a step it cannot take and a
state_dict that is not its own are refused the same way, leaving the groups and the schedule as
they were. torch's numbers are test_lr_schedule_parity's subject; here they are not needed.
"""

import copy
import math
from collections import Counter
from functools import partial
from typing import Any

import pytest

from optim_core import lr_schedules
from optim_core.errors import (
    InvalidHyperparameterError,
    InvalidStateDictError,
    OptimCoreError,
    ScheduleStepError,
)
from optim_core.lr_schedules import Schedule, parse_schedule

NAN = math.nan
INF = math.inf
AT = "lr_scheduler"
ONE_CYCLE = {"name": "OneCycleLR", "max_lr": 0.1, "total_steps": 10}
SEQUENTIAL = {
    "name": "SequentialLR",
    "schedulers": [{"name": "LinearLR"}, {"name": "ExponentialLR", "gamma": 0.9}],
    "milestones": [5],
}


# (config, loc of the refusal, what its message must show besides the argument's name)
REFUSED: list[tuple[Any, tuple[str | int, ...], str]] = [
    ("StepLR", (AT,), "str"),
    ({"step_size": 3}, (AT, "name"), "None"),
    ({"name": "CyclicLR"}, (AT, "name"), "'CyclicLR'"),
    ({"name": "StepLR"}, (AT, "step_size"), "requires"),
    ({"name": "StepLR", "step_size": 0}, (AT, "step_size"), "0"),
    ({"name": "StepLR", "step_size": -3}, (AT, "step_size"), "-3"),
    ({"name": "StepLR", "step_size": 2.5}, (AT, "step_size"), "2.5"),
    ({"name": "StepLR", "step_size": True}, (AT, "step_size"), "True"),
    ({"name": "StepLR", "step_size": 3, "gamma": 0.0}, (AT, "gamma"), "0.0"),
    ({"name": "StepLR", "step_size": 3, "gamma": -0.5}, (AT, "gamma"), "-0.5"),
    ({"name": "StepLR", "step_size": 3, "gamma": NAN}, (AT, "gamma"), "nan"),
    ({"name": "StepLR", "step_size": 3, "gamma": INF}, (AT, "gamma"), "inf"),
    ({"name": "StepLR", "step_size": 3, "gamma": "0.1"}, (AT, "gamma"), "'0.1'"),
    ({"name": "StepLR", "step_size": 3, "gamma": 10**400}, (AT, "gamma"), "1000"),
    ({"name": "StepLR", "step_size": 3, "verbose": True}, (AT, "verbose"), "verbose"),
    ({"name": "StepLR", "step_size": 3, "last_epoch": -1}, (AT, "last_epoch"), "last_epoch"),
    ({"name": "StepLR", "step_size": 3, "optimizer": None}, (AT, "optimizer"), "optimizer"),
    ({"name": "MultiStepLR"}, (AT, "milestones"), "requires"),
    ({"name": "MultiStepLR", "milestones": 30}, (AT, "milestones"), "30"),
    ({"name": "MultiStepLR", "milestones": [10, 20.5]}, (AT, "milestones", 1), "20.5"),
    ({"name": "MultiStepLR", "milestones": ["10"]}, (AT, "milestones", 0), "'10'"),
    ({"name": "MultiStepLR", "milestones": [-1]}, (AT, "milestones", 0), "-1"),
    ({"name": "MultiStepLR", "milestones": [10], "gamma": 0}, (AT, "gamma"), "0"),
    ({"name": "ExponentialLR"}, (AT, "gamma"), "requires"),
    ({"name": "ExponentialLR", "gamma": -1.0}, (AT, "gamma"), "-1.0"),
    ({"name": "CosineAnnealingLR"}, (AT, "T_max"), "requires"),
    ({"name": "CosineAnnealingLR", "T_max": 0}, (AT, "T_max"), "0"),
    ({"name": "CosineAnnealingLR", "T_max": -10}, (AT, "T_max"), "-10"),
    ({"name": "CosineAnnealingLR", "T_max": 10.5}, (AT, "T_max"), "10.5"),
    ({"name": "CosineAnnealingLR", "T_max": 10, "eta_min": -1e-3}, (AT, "eta_min"), "-0.001"),
    ({"name": "CosineAnnealingLR", "T_max": 10, "eta_min": NAN}, (AT, "eta_min"), "nan"),
    ({"name": "LinearLR", "start_factor": 0.0}, (AT, "start_factor"), "0.0"),
    ({"name": "LinearLR", "start_factor": 1.5}, (AT, "start_factor"), "1.5"),
    ({"name": "LinearLR", "start_factor": NAN}, (AT, "start_factor"), "nan"),
    ({"name": "LinearLR", "end_factor": -0.1}, (AT, "end_factor"), "-0.1"),
    ({"name": "LinearLR", "end_factor": 1.1}, (AT, "end_factor"), "1.1"),
    ({"name": "LinearLR", "total_iters": 0}, (AT, "total_iters"), "0"),
    ({"name": "ConstantLR", "factor": 0.0}, (AT, "factor"), "0.0"),
    ({"name": "ConstantLR", "factor": -0.5}, (AT, "factor"), "-0.5"),
    ({"name": "ConstantLR", "factor": 1.5}, (AT, "factor"), "1.5"),
    ({"name": "ConstantLR", "factor": 1e-310}, (AT, "factor"), "1e-310"),
    ({"name": "ConstantLR", "total_iters": 0}, (AT, "total_iters"), "0"),
    ({"name": "ConstantLR", "total_iters": 2.5}, (AT, "total_iters"), "2.5"),
    ({"name": "OneCycleLR", "total_steps": 10}, (AT, "max_lr"), "requires"),
    ({"name": "OneCycleLR", "max_lr": 0.1}, (AT, "total_steps"), "requires"),
    ({"name": "OneCycleLR", "max_lr": 0.1, "epochs": 3}, (AT, "total_steps"), "requires"),
    ({**ONE_CYCLE, "total_steps": 0}, (AT, "total_steps"), "0"),
    ({**ONE_CYCLE, "total_steps": -5}, (AT, "total_steps"), "-5"),
    ({**ONE_CYCLE, "total_steps": 10.5}, (AT, "total_steps"), "10.5"),
    ({**ONE_CYCLE, "epochs": 2, "steps_per_epoch": 5}, (AT, "total_steps"), "not both"),
    ({"name": "OneCycleLR", "max_lr": 0.1, "epochs": 0, "steps_per_epoch": 5}, (AT, "epochs"), "0"),
    ({"name": "OneCycleLR", "max_lr": 0.1, "epochs": 2, "steps_per_epoch": -1}, (AT, "steps_per_epoch"), "-1"),
    ({**ONE_CYCLE, "max_lr": 0.0}, (AT, "max_lr"), "0.0"),
    ({**ONE_CYCLE, "max_lr": []}, (AT, "max_lr"), "[]"),
    ({**ONE_CYCLE, "max_lr": [0.1, -0.1]}, (AT, "max_lr", 1), "-0.1"),
    ({**ONE_CYCLE, "pct_start": 0.0}, (AT, "pct_start"), "0.0"),
    ({**ONE_CYCLE, "pct_start": 1.0}, (AT, "pct_start"), "1.0"),
    ({**ONE_CYCLE, "pct_start": 1.5}, (AT, "pct_start"), "1.5"),
    ({**ONE_CYCLE, "pct_start": -0.1}, (AT, "pct_start"), "-0.1"),
    # 0.1 * 10 - 1 == 0: the first phase ends where it starts, and torch divides by zero at step 0.
    ({**ONE_CYCLE, "pct_start": 0.1}, (AT, "pct_start"), "0.1"),
    ({**ONE_CYCLE, "anneal_strategy": "cosine"}, (AT, "anneal_strategy"), "'cosine'"),
    ({**ONE_CYCLE, "cycle_momentum": 1}, (AT, "cycle_momentum"), "1"),
    ({**ONE_CYCLE, "base_momentum": 1.0}, (AT, "base_momentum"), "1.0"),
    ({**ONE_CYCLE, "max_momentum": [0.9, NAN]}, (AT, "max_momentum", 1), "nan"),
    ({**ONE_CYCLE, "div_factor": 0.0}, (AT, "div_factor"), "0.0"),
    ({**ONE_CYCLE, "final_div_factor": -1e4}, (AT, "final_div_factor"), "-10000.0"),
    ({**ONE_CYCLE, "three_phase": "yes"}, (AT, "three_phase"), "'yes'"),
    ({"name": "SequentialLR", "milestones": []}, (AT, "schedulers"), "requires"),
    ({"name": "SequentialLR", "schedulers": [], "milestones": []}, (AT, "schedulers"), "[]"),
    ({**SEQUENTIAL, "milestones": []}, (AT, "milestones"), "2 schedulers and 0 milestones"),
    ({**SEQUENTIAL, "milestones": [5, 10]}, (AT, "milestones"), "2 schedulers and 2 milestones"),
    ({**SEQUENTIAL, "milestones": [0]}, (AT, "milestones", 0), "0"),
    ({**SEQUENTIAL, "milestones": [2.5]}, (AT, "milestones", 0), "2.5"),
    ({**SEQUENTIAL, "schedulers": [{"name": "LinearLR"}] * 3, "milestones": [5, 5]}, (AT, "milestones", 1), "[5, 5]"),
    ({**SEQUENTIAL, "schedulers": [{"name": "LinearLR"}, {"name": "ExponentialLR", "gamma": 0.0}]},
     (AT, "schedulers", 1, "gamma"), "0.0"),
    ({**SEQUENTIAL, "schedulers": [{"name": "LinearLR"}, {"name": "ExponentialLR"}]},
     (AT, "schedulers", 1, "gamma"), "requires"),
    ({**SEQUENTIAL, "schedulers": [SEQUENTIAL, {"name": "LinearLR"}]}, (AT, "schedulers", 0, "name"), "SequentialLR"),
    ({**SEQUENTIAL, "schedulers": ["LinearLR", {"name": "LinearLR"}]}, (AT, "schedulers", 0), "str"),
    ({**SEQUENTIAL, "schedulers": [{"name": "LinearLR", "T_max": 3}, {"name": "LinearLR"}]},
     (AT, "schedulers", 0, "T_max"), "T_max"),
    # A OneCycleLR that is not the last runs up to its milestone: 20 steps, past its 10.
    ({**SEQUENTIAL, "schedulers": [ONE_CYCLE, {"name": "LinearLR"}], "milestones": [21]}, (AT, "milestones", 0), "21"),
]  # fmt: skip


@pytest.mark.parametrize(("config", "loc", "shows"), REFUSED, ids=[str(index) for index in range(len(REFUSED))])
def test_a_bad_config_is_refused_naming_the_argument_and_value(
    config: Any, loc: tuple[str | int, ...], shows: str
) -> None:
    with pytest.raises(InvalidHyperparameterError) as refusal:
        parse_schedule(config)
    assert refusal.value.loc == loc
    if isinstance(loc[-1], str) and loc[-1] != AT:
        assert loc[-1] in refusal.value.message
    assert shows in refusal.value.message


def test_a_config_is_located_where_the_caller_says() -> None:
    with pytest.raises(InvalidHyperparameterError) as refusal:
        parse_schedule({"name": "StepLR", "step_size": 0}, loc=("body", "schedule"))
    assert refusal.value.loc == ("body", "schedule", "step_size")


def test_a_whole_number_may_be_written_as_a_whole_float_and_is_kept_as_an_int() -> None:
    configs: list[tuple[dict[str, Any], str, Any]] = [
        ({"name": "StepLR", "step_size": 3.0}, "step_size", 3),
        ({"name": "MultiStepLR", "milestones": [4.0, 2]}, "milestones", [4, 2]),
        ({**ONE_CYCLE, "total_steps": 12.0}, "total_steps", 12),
        ({**SEQUENTIAL, "milestones": [5.0]}, "milestones", [5]),
    ]
    for config, key, expected in configs:
        kept = parse_schedule(config).config[key]
        assert kept == expected
        assert all(type(item) is int for item in (kept if isinstance(kept, list) else [kept]))


def test_the_config_fills_in_torchs_defaults_and_names_every_schedule() -> None:
    assert lr_schedules.NAMES == (
        "StepLR",
        "MultiStepLR",
        "ExponentialLR",
        "CosineAnnealingLR",
        "LinearLR",
        "ConstantLR",
        "OneCycleLR",
        "SequentialLR",
    )
    assert parse_schedule({"name": "StepLR", "step_size": 3}).config == {"name": "StepLR", "step_size": 3, "gamma": 0.1}
    assert parse_schedule({"name": "LinearLR"}).config == {
        "name": "LinearLR",
        "start_factor": 1.0 / 3,
        "end_factor": 1.0,
        "total_iters": 5,
    }
    assert parse_schedule(SEQUENTIAL).config["schedulers"][1] == {"name": "ExponentialLR", "gamma": 0.9}
    assert parse_schedule({**ONE_CYCLE, "max_lr": [0.1, 0.2]}).config == {
        "name": "OneCycleLR",
        "max_lr": [0.1, 0.2],
        "total_steps": 10,
        "epochs": None,
        "steps_per_epoch": None,
        "pct_start": 0.3,
        "anneal_strategy": "cos",
        "cycle_momentum": True,
        "base_momentum": 0.85,
        "max_momentum": 0.95,
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "three_phase": False,
    }


def started(config: dict[str, Any], groups: list[dict[str, Any]]) -> Schedule:
    schedule = parse_schedule(config)
    schedule.start(groups)
    return schedule


def assert_refused_and_unchanged(
    schedule: Schedule, groups: list[dict[str, Any]], call: Any, error: type[OptimCoreError], loc: tuple[Any, ...]
) -> None:
    """``call()`` raises ``error`` at ``loc``, and the groups and the schedule's state are as before."""
    groups_before = copy.deepcopy(groups)
    state_before = schedule.state_dict() if schedule.started else None
    with pytest.raises(error) as refusal:
        call()
    assert refusal.value.loc == loc, refusal.value.message
    assert groups == groups_before
    assert (schedule.state_dict() if schedule.started else None) == state_before


def test_one_cycle_momentum_needs_groups_with_momentum_or_betas() -> None:
    groups = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.2}]
    schedule = parse_schedule(ONE_CYCLE)
    assert_refused_and_unchanged(
        schedule, groups, lambda: schedule.start(groups), InvalidHyperparameterError, (AT, "cycle_momentum")
    )
    assert not schedule.started
    without_momentum = [{"lr": 0.1}, {"lr": 0.2}]
    started({**ONE_CYCLE, "cycle_momentum": False}, without_momentum)
    assert without_momentum[1]["max_lr"] == 0.1
    with_betas = [{"lr": 0.1, "betas": [0.9, 0.999]}]
    started(ONE_CYCLE, with_betas)
    assert with_betas[0]["betas"] == (0.95, 0.999)


def test_one_cycle_per_group_values_must_match_the_groups() -> None:
    groups = [{"lr": 0.1, "momentum": 0.9}]
    for key in ("max_lr", "base_momentum", "max_momentum"):
        schedule = parse_schedule({**ONE_CYCLE, key: [0.5, 0.6]})
        assert_refused_and_unchanged(
            schedule, groups, partial(schedule.start, groups), InvalidHyperparameterError, (AT, key)
        )


def test_bad_groups_are_refused_at_start_and_step() -> None:
    schedule = parse_schedule({"name": "ExponentialLR", "gamma": 0.5})
    for groups, loc in (
        ([], ("param_groups",)),
        ([{"lr": 0.1}, {"lr": NAN}], ("param_groups", 1, "lr")),
        ([{"lr": 0.1}, {"momentum": 0.9}], ("param_groups", 1, "lr")),
        ([{"lr": "0.1"}], ("param_groups", 0, "lr")),
        ([{"lr": 0.1, "initial_lr": None}], ("param_groups", 0, "initial_lr")),
    ):
        assert_refused_and_unchanged(schedule, groups, partial(schedule.start, groups), InvalidHyperparameterError, loc)
    groups = [{"lr": 0.1}, {"lr": 0.2}]
    schedule.start(groups)
    one_group = [{"lr": 0.1}]
    assert_refused_and_unchanged(
        schedule, one_group, lambda: schedule.step(one_group), InvalidHyperparameterError, ("param_groups",)
    )
    groups[1]["lr"] = INF
    assert_refused_and_unchanged(
        schedule, groups, lambda: schedule.step(groups), InvalidHyperparameterError, ("param_groups", 1, "lr")
    )


def test_a_start_keeps_an_initial_lr_already_there_as_torch_does() -> None:
    groups = [{"lr": 0.1, "initial_lr": 0.4}]
    schedule = started({"name": "StepLR", "step_size": 1, "gamma": 0.5}, groups)
    assert schedule.state_dict()["base_lrs"] == [0.4]
    assert groups == [{"lr": 0.1, "initial_lr": 0.4}]


def test_a_schedule_steps_only_once_started_and_starts_once() -> None:
    schedule = parse_schedule({"name": "StepLR", "step_size": 2})
    groups = [{"lr": 0.1}]
    for call in (lambda: schedule.step(groups), schedule.state_dict, lambda: schedule.last_lr):
        assert_refused_and_unchanged(schedule, groups, call, ScheduleStepError, (AT,))
    schedule.start(groups)
    assert_refused_and_unchanged(schedule, groups, lambda: schedule.start(groups), ScheduleStepError, (AT,))


def test_a_one_cycle_refuses_a_step_past_its_total_steps() -> None:
    groups = [{"lr": 0.1, "momentum": 0.9}]
    schedule = started({**ONE_CYCLE, "total_steps": 3, "pct_start": 0.5}, groups)
    for _ in range(3):
        schedule.step(groups)
    assert_refused_and_unchanged(
        schedule, groups, lambda: schedule.step(groups), ScheduleStepError, (AT, "total_steps")
    )


def test_a_step_that_would_overflow_an_lr_is_refused() -> None:
    groups = [{"lr": 1e300}]
    schedule = started({"name": "ExponentialLR", "gamma": 1e10}, groups)
    assert_refused_and_unchanged(
        schedule, groups, lambda: schedule.step(groups), ScheduleStepError, ("param_groups", 0, "lr")
    )
    # gamma ** 2 overflows in Python, which raises rather than giving inf.
    groups = [{"lr": 0.1}]
    schedule = started({"name": "MultiStepLR", "milestones": [1, 1], "gamma": 1e200}, groups)
    assert_refused_and_unchanged(schedule, groups, lambda: schedule.step(groups), ScheduleStepError, (AT,))


def test_the_state_dict_is_a_copy() -> None:
    groups = [{"lr": 0.1}]
    schedule = started({"name": "MultiStepLR", "milestones": [2, 2]}, groups)
    state = schedule.state_dict()
    assert state["milestones"] == Counter({2: 2})
    state["base_lrs"].append(1.0)
    state["milestones"][3] = 1
    assert schedule.state_dict()["base_lrs"] == [0.1]
    assert schedule.state_dict()["milestones"] == Counter({2: 2})


def stepped(config: dict[str, Any], steps: int, groups: int = 2) -> Schedule:
    param_groups = [{"lr": 0.1 * (index + 1), "momentum": 0.9} for index in range(groups)]
    schedule = started(config, param_groups)
    for _ in range(steps):
        schedule.step(param_groups)
    return schedule


def changed(state: dict[str, Any], changes: dict[tuple[Any, ...], Any]) -> dict[str, Any]:
    state = copy.deepcopy(state)
    for path, value in changes.items():
        target = state
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return state


DELETE = object()
STEP = {"name": "StepLR", "step_size": 2, "gamma": 0.5}
# (config, steps taken, changes to its state_dict: the value at each path, loc of the refusal)
BAD_STATES: list[tuple[dict[str, Any], int, dict[tuple[Any, ...], Any], tuple[Any, ...]]] = [
    (STEP, 3, {("gamma",): 0.1}, ("gamma",)),
    (STEP, 3, {("step_size",): 3}, ("step_size",)),
    (STEP, 3, {("step_size",): True}, ("step_size",)),
    (STEP, 3, {("gamma",): DELETE}, ("gamma",)),
    (STEP, 3, {("verbose",): False}, ("verbose",)),
    (STEP, 3, {("last_epoch",): 4}, ("_step_count",)),
    (STEP, 3, {("last_epoch",): -1}, ("_step_count",)),
    (STEP, 3, {("last_epoch",): 3.0}, ("last_epoch",)),
    (STEP, 3, {("_step_count",): 3}, ("_step_count",)),
    (STEP, 3, {("_is_initial",): True}, ("_is_initial",)),
    (STEP, 3, {("_get_lr_called_within_step",): None}, ("_get_lr_called_within_step",)),
    (STEP, 3, {("base_lrs",): [0.1]}, ("_last_lr",)),
    (STEP, 3, {("base_lrs",): []}, ("base_lrs",)),
    (STEP, 3, {("base_lrs", 1): NAN}, ("base_lrs",)),
    (STEP, 3, {("_last_lr", 0): "0.1"}, ("_last_lr",)),
    ({"name": "MultiStepLR", "milestones": [2, 2]}, 1, {("milestones",): Counter({2: 1})}, ("milestones",)),
    ({"name": "MultiStepLR", "milestones": [2, 2]}, 1, {("milestones",): {"2": 2}}, ("milestones",)),
    ({**ONE_CYCLE, "pct_start": 0.25}, 2, {("_schedule_phases", 0, "end_step"): 2.0}, ("_schedule_phases",)),
    ({**ONE_CYCLE, "pct_start": 0.25}, 2, {("_anneal_func_type",): "linear"}, ("_anneal_func_type",)),
    ({**ONE_CYCLE, "pct_start": 0.25}, 2, {("use_beta1",): 0}, ("use_beta1",)),
    ({**ONE_CYCLE, "pct_start": 0.25}, 2, {("last_epoch",): 11, ("_step_count",): 12}, ("last_epoch",)),
    ({**ONE_CYCLE, "pct_start": 0.25}, 2, {("total_steps",): 11}, ("total_steps",)),
    (SEQUENTIAL, 7, {("_milestones",): [6]}, ("_milestones",)),
    (SEQUENTIAL, 7, {("last_epoch",): 8}, ("_schedulers", 1, "_step_count")),
    (SEQUENTIAL, 7, {("_schedulers", 1, "gamma"): 0.5}, ("_schedulers", 1, "gamma")),
    (SEQUENTIAL, 7, {("_schedulers", 0, "last_epoch"): 5}, ("_schedulers", 0, "_step_count")),
    (SEQUENTIAL, 7, {("_schedulers", 1, "base_lrs"): [0.1]}, ("_schedulers", 1, "_last_lr")),
    (SEQUENTIAL, 7, {("_schedulers",): []}, ("_schedulers",)),
    (SEQUENTIAL, 7, {("_last_lr",): [0.1]}, ("_schedulers", 0, "base_lrs")),
]


@pytest.mark.parametrize(
    ("config", "steps", "changes", "loc"), BAD_STATES, ids=[str(index) for index in range(len(BAD_STATES))]
)
def test_a_state_dict_not_saved_by_this_schedule_is_refused_and_changes_nothing(
    config: dict[str, Any], steps: int, changes: dict[tuple[Any, ...], Any], loc: tuple[Any, ...]
) -> None:
    state = stepped(config, steps).state_dict()
    bad = changed(state, changes)
    for schedule in (stepped(config, 1), parse_schedule(config)):
        before = schedule.state_dict() if schedule.started else None
        with pytest.raises(InvalidStateDictError) as refusal:
            schedule.load_state_dict(bad)
        assert refusal.value.loc == loc, refusal.value.message
        assert (schedule.state_dict() if schedule.started else None) == before
    restored = parse_schedule(config)
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def test_a_loaded_schedule_steps_on_the_groups_it_is_given_without_a_start() -> None:
    groups = [{"lr": 0.1, "momentum": 0.9}]
    schedule = stepped({**ONE_CYCLE, "pct_start": 0.25}, 3, groups=1)
    restored = parse_schedule({**ONE_CYCLE, "pct_start": 0.25})
    restored.load_state_dict(schedule.state_dict())
    # The groups lack what start would have written into them (max_lr and the others).
    assert_refused_and_unchanged(
        restored, groups, lambda: restored.step(groups), InvalidHyperparameterError, ("param_groups", 0, "initial_lr")
    )
