"""Hypothesis strategies for the schedules' differential tests: valid configs, as a user writes them
(optional arguments often left out, so that each side's defaults are compared too), and param groups
of several lrs with an optimizer's momentum or betas."""

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.optim_core.lr_schedule_oracle import OptimizerKind

MAX_STEPS = 200
SINGLE_NAMES = ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR", "ConstantLR", "OneCycleLR")


@dataclass(frozen=True)
class Setup:
    config: dict[str, Any]
    kind: OptimizerKind
    groups: list[dict[str, Any]]


def sometimes(edges: tuple[float, ...], otherwise: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """One of ``edges`` in about one draw of four, else ``otherwise``."""
    return st.integers(0, 3).flatmap(lambda pick: st.sampled_from(edges) if pick == 0 else otherwise)


@st.composite
def with_optional(draw: st.DrawFn, required: dict[str, Any], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    """``required``, and each of ``optional`` drawn or left to the default."""
    config = dict(required)
    for key, strategy in optional.items():
        if draw(st.booleans()):
            config[key] = draw(strategy)
    return config


GAMMAS = sometimes((0.1, 0.5, 0.9, 1.0), st.floats(0.01, 1.5))
FACTORS = sometimes((1.0, 1.0 / 3, 0.5, 2.0**-30), st.floats(1e-3, 1.0))
TOTAL_ITERS = st.integers(1, 40)


@st.composite
def single_config(draw: st.DrawFn, name: str, groups: int) -> dict[str, Any]:
    """A valid config of the schedule ``name`` for ``groups`` param groups."""
    if name == "StepLR":
        return draw(with_optional({"name": name, "step_size": draw(st.integers(1, 30))}, {"gamma": GAMMAS}))
    if name == "MultiStepLR":
        milestones = draw(st.lists(st.integers(0, 120), max_size=6))  # in any order, as torch takes them
        return draw(with_optional({"name": name, "milestones": milestones}, {"gamma": GAMMAS}))
    if name == "ExponentialLR":
        return {"name": name, "gamma": draw(sometimes((0.5, 0.9, 1.0), st.floats(0.5, 1.05)))}
    if name == "CosineAnnealingLR":
        eta_min = sometimes((0.0, 1e-3), st.floats(0.0, 0.05))
        return draw(with_optional({"name": name, "T_max": draw(st.integers(1, 60))}, {"eta_min": eta_min}))
    if name == "LinearLR":
        end_factor = sometimes((0.0, 1.0, 0.5), st.floats(0.0, 1.0))
        optional = {"start_factor": FACTORS, "end_factor": end_factor, "total_iters": TOTAL_ITERS}
        return draw(with_optional({"name": name}, optional))
    if name == "ConstantLR":
        return draw(with_optional({"name": name}, {"factor": FACTORS, "total_iters": TOTAL_ITERS}))
    assert name == "OneCycleLR"
    return draw(one_cycle_config(groups))


def per_group(groups: int, values: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    """One value, or a list of one per group, as torch takes ``max_lr`` and the momentums."""
    return values | st.lists(values, min_size=groups, max_size=groups)


@st.composite
def one_cycle_config(draw: st.DrawFn, groups: int, total_steps: int | None = None) -> dict[str, Any]:
    """A valid OneCycleLR config (``total_steps`` of them when given); pct_start is often a multiple
    of 1 / total_steps, where a phase can end exactly on a step."""
    if total_steps is None and draw(st.booleans()):
        epochs, steps_per_epoch = draw(st.integers(1, 10)), draw(st.integers(1, 20))
        config: dict[str, Any] = {"name": "OneCycleLR", "epochs": epochs, "steps_per_epoch": steps_per_epoch}
        total = epochs * steps_per_epoch
    else:
        total = total_steps if total_steps is not None else draw(st.integers(1, MAX_STEPS))
        config = {"name": "OneCycleLR", "total_steps": total}
    config["max_lr"] = draw(per_group(groups, st.floats(1e-3, 1.0)))
    on_a_step = st.integers(1, max(1, total - 1)).map(lambda k: k / total).filter(lambda pct: 0 < pct < 1)
    optional = {
        "pct_start": on_a_step | st.floats(0.01, 0.99),
        "anneal_strategy": st.sampled_from(("cos", "linear")),
        "cycle_momentum": st.booleans(),
        "base_momentum": per_group(groups, st.floats(0.5, 0.9)),
        "max_momentum": per_group(groups, st.floats(0.85, 0.99)),
        "div_factor": sometimes((1.0, 25.0), st.floats(1.0, 100.0)),
        "final_div_factor": sometimes((1.0, 1e4), st.floats(1.0, 1e5)),
        "three_phase": st.booleans(),
    }
    return dict(draw(with_optional(config, optional)))


def needs_momentum(config: dict[str, Any]) -> bool:
    """Whether the config cycles momentum (OneCycleLR's default), anywhere in it."""
    if config["name"] == "SequentialLR":
        return any(map(needs_momentum, config["schedulers"]))
    return config["name"] == "OneCycleLR" and config.get("cycle_momentum", True) is True


@st.composite
def sequential_config(draw: st.DrawFn, groups: int) -> dict[str, Any]:
    """Two to four schedules, the milestones between them >= 1 and increasing; a OneCycleLR that is not
    the last has enough total_steps for its turn."""
    count = draw(st.integers(1, 4))
    milestones = sorted(draw(st.sets(st.integers(1, 80), min_size=count - 1, max_size=count - 1)))
    schedulers = []
    for index in range(count):
        name = draw(st.sampled_from(SINGLE_NAMES))
        if name == "OneCycleLR" and index < count - 1:
            turn = milestones[index] - (milestones[index - 1] if index else 0)
            total = draw(st.integers(max(1, turn - 1), turn + 20))
            schedulers.append(draw(one_cycle_config(groups, total_steps=total)))
        else:
            schedulers.append(draw(single_config(name, groups)))
    return {"name": "SequentialLR", "schedulers": schedulers, "milestones": milestones}


@st.composite
def groups_for(draw: st.DrawFn, kind: OptimizerKind, count: int) -> list[dict[str, Any]]:
    """``count`` groups of different lrs, with the momentum or betas of ``kind``."""
    lrs = draw(st.lists(sometimes((1.0, 0.1, 1e-3), st.floats(1e-4, 1.0)), min_size=count, max_size=count))
    groups = []
    for lr in lrs:
        group: dict[str, Any] = {"lr": lr}
        if kind == "SGD":
            group["momentum"] = draw(st.floats(0.0, 0.99))
        elif kind == "Adam":
            group["betas"] = (draw(st.floats(0.0, 0.99)), draw(st.floats(0.9, 0.9999)))
        groups.append(group)
    return groups


@st.composite
def setups(draw: st.DrawFn, name: str) -> Setup:
    """A config of ``name`` and the groups of an optimizer it works with."""
    count = draw(st.integers(1, 3))
    config = draw(sequential_config(count) if name == "SequentialLR" else single_config(name, count))
    kinds: tuple[OptimizerKind, ...] = ("SGD", "Adam") if needs_momentum(config) else ("SGD", "Adam", "Rprop")
    kind = draw(st.sampled_from(kinds))
    return Setup(config=config, kind=kind, groups=draw(groups_for(kind, count)))
