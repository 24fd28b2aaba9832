"""torch's own LR schedulers drive RemoteRprop and RemoteRMSprop exactly as they drive torch.optim's: the same
learning rates (and, for the cyclic ones, momentums) at every step, each one applied by the service to the step it
was set for, and the same params at the end (Rprop bit for bit, RMSprop to the rounding of torch's fused
multiply-adds)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="these tests run torch's LR schedulers, which need torch")

from torch.optim import lr_scheduler  # noqa: E402

from optim_client import Client, RemoteOptimizer  # noqa: E402
from tests.client.torch_models import assert_same_params, batches, make_model, tolerances, twin  # noqa: E402
from tests.optimizers import OPTIMIZERS, example_hyperparameters, torch_name  # noqa: E402

STEPS = 24
GROUP_LRS = (0.005, 0.002)
"""The two param groups' learning rates: a scheduler computes each group's own. They, and the schedules' peaks, are
of the size of the parity tests' (tests/optimizers.py), within whose rounding bound RMSprop stays that long."""


def plateau_losses() -> list[float]:
    """Losses that improve for five steps and then stall, so that ReduceLROnPlateau cuts the lr again and again."""
    return [1.0 - 0.1 * index if index < 5 else 0.6 for index in range(STEPS)]


@dataclass(frozen=True)
class Schedule:
    """How to build one of torch's schedulers on an optimizer, and how the training loop steps it."""

    build: Callable[[Any, str], Any]
    """(optimizer, optimizer name) -> scheduler."""
    step: Callable[[Any, int], None] = lambda scheduler, index: scheduler.step()
    """(scheduler, index of the training step just taken) -> None."""


def cycles_momentum(optimizer: str) -> bool:
    """Whether the cyclic schedulers can cycle the momentum: torch refuses an optimizer without one (Rprop)."""
    return optimizer == "rmsprop"


SCHEDULES: dict[str, Schedule] = {
    "LambdaLR": Schedule(lambda o, _: lr_scheduler.LambdaLR(o, [lambda e: 0.9**e, lambda e: 1 / (1 + e)])),
    "MultiplicativeLR": Schedule(lambda o, _: lr_scheduler.MultiplicativeLR(o, lambda e: 0.95 if e % 3 else 0.7)),
    "StepLR": Schedule(lambda o, _: lr_scheduler.StepLR(o, step_size=4, gamma=0.5)),
    "MultiStepLR": Schedule(lambda o, _: lr_scheduler.MultiStepLR(o, milestones=[3, 8, 15], gamma=0.3)),
    "ConstantLR": Schedule(lambda o, _: lr_scheduler.ConstantLR(o, factor=0.25, total_iters=6)),
    "LinearLR": Schedule(lambda o, _: lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=10)),
    "ExponentialLR": Schedule(lambda o, _: lr_scheduler.ExponentialLR(o, gamma=0.85)),
    "PolynomialLR": Schedule(lambda o, _: lr_scheduler.PolynomialLR(o, total_iters=15, power=2.0)),
    "CosineAnnealingLR": Schedule(lambda o, _: lr_scheduler.CosineAnnealingLR(o, T_max=8, eta_min=1e-4)),
    "ChainedScheduler": Schedule(
        lambda o, _: lr_scheduler.ChainedScheduler(
            [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=5), lr_scheduler.ExponentialLR(o, gamma=0.9)],
            optimizer=o,
        )
    ),
    "SequentialLR": Schedule(
        lambda o, _: lr_scheduler.SequentialLR(
            o,
            schedulers=[lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=5), lr_scheduler.StepLR(o, 3, 0.6)],
            milestones=[5],
        )
    ),
    "ReduceLROnPlateau": Schedule(
        lambda o, _: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=2, cooldown=1, min_lr=[5e-4, 1e-4]),
        lambda scheduler, index: scheduler.step(plateau_losses()[index]),
    ),
    "CyclicLR": Schedule(
        lambda o, name: lr_scheduler.CyclicLR(
            o,
            base_lr=[0.001, 0.0005],
            max_lr=[0.006, 0.004],
            step_size_up=4,
            step_size_down=6,
            mode="triangular2",
            cycle_momentum=cycles_momentum(name),
        )
    ),
    "OneCycleLR": Schedule(
        lambda o, name: lr_scheduler.OneCycleLR(
            o, max_lr=[0.008, 0.004], total_steps=STEPS, pct_start=0.3, cycle_momentum=cycles_momentum(name)
        )
    ),
    "CosineAnnealingWarmRestarts": Schedule(
        lambda o, _: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=1e-4)
    ),
    "CosineAnnealingWarmRestarts-fractional-epochs": Schedule(
        lambda o, _: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2, eta_min=1e-4),
        lambda scheduler, index: scheduler.step(index // 4 + (index % 4 + 1) / 4),
    ),
}
"""Every scheduler of torch.optim.lr_scheduler, with arguments that make it change the lr within STEPS steps."""


def test_the_schedules_cover_every_scheduler_torch_has() -> None:
    schedulers = {
        name
        for name, value in vars(lr_scheduler).items()
        if isinstance(value, type) and issubclass(value, lr_scheduler.LRScheduler) and not name.startswith("_")
    }
    schedulers -= {"LRScheduler", "_LRScheduler"}
    assert schedulers == {name.split("-")[0] for name in SCHEDULES}


def grouped(model: Any) -> list[dict[str, Any]]:
    """The model's named params in two groups, a layer each, with their own lrs."""
    return [
        {
            "params": [(name, param) for name, param in model.named_parameters() if name.startswith(f"{layer}.")],
            "lr": lr,
        }
        for layer, lr in zip((0, 2), GROUP_LRS, strict=True)
    ]


def pair(optimizer: str, client: Client) -> tuple[Any, ...]:
    """A model with a remote optimizer, and its twin with torch.optim's: two param groups, the same hyperparameters."""
    remote_model = make_model()
    local_model = twin(remote_model)
    hyperparameters = {key: value for key, value in example_hyperparameters(optimizer).items() if key != "lr"}
    remote_class: Any = RemoteOptimizer.of(optimizer)
    remote = remote_class(grouped(remote_model), client=client, **hyperparameters)
    local = getattr(torch.optim, torch_name(optimizer))(grouped(local_model), **hyperparameters)
    return remote_model, remote, local_model, local


def scheduled(group: dict[str, Any]) -> dict[str, Any]:
    """What a scheduler sets in a param group and the step then uses."""
    return {key: group[key] for key in ("lr", "momentum") if key in group}


def train(model: Any, optimizer: Any, x: Any, y: Any) -> None:
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()


def test_a_remote_optimizer_is_a_torch_optimizer(client: Client) -> None:
    for optimizer in OPTIMIZERS:
        _, remote, _, local = pair(optimizer, client)
        assert isinstance(remote, torch.optim.Optimizer)
        assert isinstance(local, torch.optim.Optimizer)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_torchs_scheduler_drives_the_remote_optimizer_as_it_drives_torch_optims(
    client: Client, optimizer: str, schedule: str
) -> None:
    remote_model, remote, local_model, local = pair(optimizer, client)
    with warnings.catch_warnings(record=True) as local_warnings:
        warnings.simplefilter("always")
        local_scheduler = SCHEDULES[schedule].build(local, optimizer)
    with warnings.catch_warnings(record=True) as remote_warnings:
        warnings.simplefilter("always")
        remote_scheduler = SCHEDULES[schedule].build(remote, optimizer)
    assert [str(w.message) for w in remote_warnings] == [str(w.message) for w in local_warnings]
    used: list[list[dict[str, Any]]] = []
    for index, (x, y) in enumerate(batches(STEPS)):
        used.append([scheduled(group) for group in local.param_groups])
        assert [scheduled(group) for group in remote.param_groups] == used[-1], f"before step {index + 1}"
        train(local_model, local, x, y)
        train(remote_model, remote, x, y)
        # What the service applied: the step's lr as it reports it, and the session's hyperparameters.
        assert remote.last_metrics["lr"] == [group["lr"] for group in used[-1]], f"step {index + 1}"
        assert [scheduled(group) for group in remote.session.param_groups] == used[-1], f"step {index + 1}"
        SCHEDULES[schedule].step(local_scheduler, index)
        SCHEDULES[schedule].step(remote_scheduler, index)
        assert remote_scheduler.get_last_lr() == local_scheduler.get_last_lr(), f"after step {index + 1}"
        assert_same_params(remote_model, local_model, *tolerances(optimizer, torch.float32))
    assert_same_params(remote_model, local_model, *tolerances(optimizer, torch.float32))
    for index in range(len(GROUP_LRS)):
        assert len({groups[index]["lr"] for groups in used}) > 1, f"the schedule left group {index}'s lr alone"
    if schedule in ("CyclicLR", "OneCycleLR") and cycles_momentum(optimizer):
        assert len({groups[0]["momentum"] for groups in used}) > 2, "the momentum was not cycled"


@pytest.mark.parametrize(
    "scheduler",
    [
        lambda optimizer, **cycle: lr_scheduler.CyclicLR(optimizer, base_lr=0.001, max_lr=0.01, **cycle),
        lambda optimizer, **cycle: lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=STEPS, **cycle),
    ],
    ids=["CyclicLR", "OneCycleLR"],
)
def test_cycling_the_momentum_of_rprop_which_has_none_is_refused_as_torch_refuses_it(
    client: Client, scheduler: Any
) -> None:
    _, remote, _, local = pair("rprop", client)
    with pytest.raises(ValueError, match="optimizer must support momentum") as torch_error:
        scheduler(local, cycle_momentum=True)
    with pytest.raises(ValueError, match="optimizer must support momentum") as remote_error:
        scheduler(remote, cycle_momentum=True)
    assert str(remote_error.value) == str(torch_error.value)


def test_the_keys_a_scheduler_adds_to_param_groups_stay_local(client: Client) -> None:
    remote_model, remote, _, _ = pair("rmsprop", client)
    lr_scheduler.OneCycleLR(remote, max_lr=0.01, total_steps=STEPS)
    added = {"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"}
    assert all(added <= set(group) for group in remote.param_groups)
    x, y = batches(1)[0]
    train(remote_model, remote, x, y)
    assert remote.session.step_count == 1
    for group in remote.session.refresh()["param_groups"]:
        assert not added & set(group)
    assert all(added <= set(group) for group in remote.state_dict()["param_groups"])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_scheduler_resumed_from_state_dicts_continues_as_the_run_that_never_stopped(
    client: Client, optimizer: str
) -> None:
    remote_model, remote, local_model, local = pair(optimizer, client)
    remote_scheduler = lr_scheduler.CosineAnnealingWarmRestarts(remote, T_0=3, T_mult=2)
    local_scheduler = lr_scheduler.CosineAnnealingWarmRestarts(local, T_0=3, T_mult=2)
    data = batches(12)
    for x, y in data[:5]:
        train(remote_model, remote, x, y)
        train(local_model, local, x, y)
        remote_scheduler.step()
        local_scheduler.step()
    saved_optimizer, saved_scheduler = remote.state_dict(), remote_scheduler.state_dict()
    resumed_model = twin(remote_model)
    remote_class: Any = RemoteOptimizer.of(optimizer)
    resumed = remote_class(grouped(resumed_model), client=client)
    resumed.load_state_dict(saved_optimizer)
    resumed_scheduler = lr_scheduler.CosineAnnealingWarmRestarts(resumed, T_0=3, T_mult=2, last_epoch=4)
    resumed_scheduler.load_state_dict(saved_scheduler)
    for x, y in data[5:]:
        train(resumed_model, resumed, x, y)
        train(local_model, local, x, y)
        resumed_scheduler.step()
        local_scheduler.step()
        assert resumed_scheduler.get_last_lr() == local_scheduler.get_last_lr()
    assert_same_params(resumed_model, local_model, *tolerances(optimizer, torch.float32))
