"""With torch installed, a remote optimizer is a torch.optim.Optimizer: torch's step hooks run around its steps and
its state_dict hooks around its state_dict and load_state_dict, as they do for torch.optim's own optimizers; its
param groups stay those of its session; and it is one over numpy arrays too."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="these tests use torch.optim.Optimizer's interface, which needs torch")

from optim_client import Client, RemoteRMSprop, RemoteRprop  # noqa: E402
from tests.client.torch_models import batches, make_model, train_step, twin  # noqa: E402


def test_step_hooks_run_around_each_step_and_a_pre_hook_may_change_its_arguments(client: Client) -> None:
    model = make_model()
    remote = RemoteRprop(model.named_parameters(), client=client)
    seen: list[tuple[str, int]] = []

    def before(optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        seen.append(("pre", optimizer.session.step_count))
        return args, {**kwargs, "loss": 0.25}

    remote.register_step_pre_hook(before)
    remote.register_step_post_hook(lambda optimizer, args, kwargs: seen.append(("post", optimizer.session.step_count)))
    for x, y in batches(2):
        train_step(model, remote, x, y)
    assert seen == [("pre", 0), ("post", 1), ("pre", 1), ("post", 2)]
    assert remote.last_metrics is not None
    assert remote.last_metrics["loss"] == 0.25


def with_state_dict_hooks(optimizer: Any) -> list[str]:
    """Hooks that save an epoch with the state_dict and set lr 0.5 when loading it; the calls they saw."""
    calls: list[str] = []

    def saving(_: Any) -> None:
        calls.append("saving")

    def saved(_: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        return {**state_dict, "epoch": 7}

    def loading(_: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        calls.append(f"loading epoch {state_dict['epoch']}")
        groups = [{**group, "lr": 0.5} for group in state_dict["param_groups"]]
        return {"state": state_dict["state"], "param_groups": groups}

    def loaded(_: Any) -> None:
        calls.append("loaded")

    optimizer.register_state_dict_pre_hook(saving)
    optimizer.register_state_dict_post_hook(saved)
    optimizer.register_load_state_dict_pre_hook(loading)
    optimizer.register_load_state_dict_post_hook(loaded)
    return calls


def test_state_dict_hooks_run_as_they_do_for_torch_optims_optimizer(client: Client) -> None:
    remote_model = make_model()
    remote = RemoteRprop(remote_model.named_parameters(), client=client)
    local = torch.optim.Rprop(twin(remote_model).named_parameters())
    for optimizer in (remote, local):
        calls = with_state_dict_hooks(optimizer)
        state_dict = optimizer.state_dict()
        assert state_dict["epoch"] == 7
        optimizer.load_state_dict(state_dict)
        assert calls == ["saving", "loading epoch 7", "loaded"]
        assert optimizer.param_groups[0]["lr"] == 0.5
    assert remote.session.param_groups[0]["lr"] == 0.5


def test_a_param_group_cannot_be_added_to_a_session(client: Client) -> None:
    remote = RemoteRprop(make_model().named_parameters(), client=client)
    with pytest.raises(ValueError, match="param groups cannot be added"):
        remote.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    with pytest.raises(ValueError, match="param groups cannot be added"):
        remote.add_param_group({"params": remote.param_groups[0]["params"]})
    assert len(remote.param_groups) == len(remote.session.param_groups) == 1


def test_an_optimizer_over_numpy_arrays_is_one_too_and_a_scheduler_sets_its_lr(client: Client) -> None:
    params = {"x": np.array([5.0, -1.0])}
    remote = RemoteRMSprop(params, client=client, lr=0.1)
    assert isinstance(remote, torch.optim.Optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(remote, step_size=1, gamma=0.5)
    scheduled, applied = [], []
    for _ in range(3):
        scheduled.append(scheduler.get_last_lr())
        remote.step(grads={"x": 2 * params["x"]})
        assert remote.last_metrics is not None
        applied.append(remote.last_metrics["lr"])
        scheduler.step()
    assert applied == scheduled
    assert len({lr for [lr] in applied}) == 3
