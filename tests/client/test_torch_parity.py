"""The SDK's optimizers on torch models give torch.optim's numbers: Rprop bit for bit, the others
to the rounding of torch's fused multiply-adds and square roots, step after step, including when
param_groups change between steps and when some params have no grad."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="the torch parity tests compare with torch.optim, which needs torch")

import torch

from optim_client import Client, RemoteOptimizer, RemoteRMSprop, RemoteRprop, ValidationError
from optim_core import ALGORITHMS
from tests.client.torch_models import (
    assert_same_params,
    batches,
    make_model,
    tolerances,
    train_step,
    twin,
)
from tests.optimizers import OPTIMIZERS, example_hyperparameters, hyperparameter, torch_name


def remote_class(optimizer: str) -> Any:
    """The SDK's class of ``optimizer`` (each takes torch's signature, which ``RemoteOptimizer`` does not)."""
    return RemoteOptimizer.of(optimizer)


def local_class(optimizer: str) -> Any:
    return getattr(torch.optim, torch_name(optimizer))


EVERY_OPTIMIZER = pytest.mark.parametrize("optimizer", OPTIMIZERS)
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])


def pair(optimizer: str, client: Client, dtype: torch.dtype = torch.float32, **overrides: Any) -> tuple[Any, ...]:
    """A model with a remote optimizer, and its twin with torch.optim's, with the same hyperparameters."""
    remote_model = make_model(dtype=dtype)
    local_model = twin(remote_model)
    hyperparameters = {**example_hyperparameters(optimizer), **overrides}
    remote = remote_class(optimizer)(remote_model.named_parameters(), client=client, **hyperparameters)
    local = local_class(optimizer)(local_model.named_parameters(), **hyperparameters)
    return remote_model, remote, local_model, local


@EVERY_OPTIMIZER
@DTYPES
def test_training_gives_torch_optims_params_step_after_step(client: Client, optimizer: str, dtype: torch.dtype) -> None:
    remote_model, remote, local_model, local = pair(optimizer, client, dtype)
    for index, (x, y) in enumerate(batches(8, dtype)):
        remote_loss = train_step(remote_model, remote, x, y)
        local_loss = train_step(local_model, local, x, y)
        assert_same_params(remote_model, local_model, *tolerances(optimizer, dtype))
        if tolerances(optimizer, dtype) == (0.0, 0.0):
            assert remote_loss == local_loss, f"step {index + 1}"
    assert remote.session.step_count == 8


@EVERY_OPTIMIZER
def test_a_learning_rate_set_in_param_groups_applies_to_the_next_step_as_in_torch(
    client: Client, optimizer: str
) -> None:
    remote_model, remote, local_model, local = pair(optimizer, client)
    data = batches(6)
    for x, y in data[:2]:
        train_step(remote_model, remote, x, y)
        train_step(local_model, local, x, y)
    remote.param_groups[0]["lr"] = 1e-3
    local.param_groups[0]["lr"] = 1e-3
    x, y = data[2]
    train_step(remote_model, remote, x, y)
    train_step(local_model, local, x, y)
    assert_same_params(remote_model, local_model, *tolerances(optimizer, torch.float32))
    assert remote.session.param_groups[0]["lr"] == 1e-3
    for x, y in data[3:]:  # and keeps applying, as a scheduler's change would
        train_step(remote_model, remote, x, y)
        train_step(local_model, local, x, y)
    assert_same_params(remote_model, local_model, *tolerances(optimizer, torch.float32))


@EVERY_OPTIMIZER
def test_param_groups_with_their_own_hyperparameters_match_torch(client: Client, optimizer: str) -> None:
    remote_model = make_model()
    local_model = twin(remote_model)

    def groups(model: torch.nn.Sequential) -> list[dict[str, Any]]:
        return [{"params": model[0].parameters(), "lr": 0.05}, {"params": model[2].parameters()}]

    remote = remote_class(optimizer)(groups(remote_model), client=client, **example_hyperparameters(optimizer))
    local = local_class(optimizer)(groups(local_model), **example_hyperparameters(optimizer))
    assert [group["lr"] for group in remote.param_groups] == [group["lr"] for group in local.param_groups]
    for index, (x, y) in enumerate(batches(5)):
        if index == 3:
            remote.param_groups[1]["lr"] = local.param_groups[1]["lr"] = 0.2
        train_step(remote_model, remote, x, y)
        train_step(local_model, local, x, y)
    assert_same_params(remote_model, local_model, *tolerances(optimizer, torch.float32))


@EVERY_OPTIMIZER
def test_params_without_grad_are_left_alone_as_torch_leaves_them(client: Client, optimizer: str) -> None:
    remote_model, remote, local_model, local = pair(optimizer, client)
    remote_model[0].bias.requires_grad_(False)
    local_model[0].bias.requires_grad_(False)
    frozen = remote_model[0].bias.detach().clone()
    for x, y in batches(4):
        train_step(remote_model, remote, x, y)
        train_step(local_model, local, x, y)
    assert torch.equal(remote_model[0].bias, frozen)
    assert_same_params(remote_model, local_model, *tolerances(optimizer, torch.float32))
    # The frozen bias (index 1) has no state, but where torch makes every param's state as it is built (Adagrad).
    expected = [0, 1, 2, 3] if ALGORITHMS[optimizer].state_at_construction else [0, 2, 3]
    assert sorted(remote.state_dict()["state"]) == sorted(local.state_dict()["state"]) == expected


def test_a_step_with_no_grads_at_all_sends_nothing_and_changes_nothing(client: Client) -> None:
    remote_model, remote, _, _ = pair("rmsprop", client)
    before = [param.detach().clone() for param in remote_model.parameters()]
    remote.zero_grad()
    remote.step()
    assert remote.session.refresh()["step"] == 0
    assert all(torch.equal(param, old) for param, old in zip(remote_model.parameters(), before, strict=True))


def test_zero_grad_sets_grads_to_none_or_to_zeros_as_torch_does(client: Client) -> None:
    remote_model, remote, _, _ = pair("rprop", client)
    x, y = batches(1)[0]
    torch.nn.functional.mse_loss(remote_model(x), y).backward()
    remote.zero_grad(set_to_none=False)
    assert all(param.grad is not None and not param.grad.any() for param in remote_model.parameters())
    remote.zero_grad()
    assert all(param.grad is None for param in remote_model.parameters())


def test_step_calls_the_closure_with_grad_enabled_and_returns_its_loss(client: Client) -> None:
    remote_model, remote, local_model, local = pair("rprop", client)
    x, y = batches(1)[0]

    def closure_for(model: torch.nn.Module, optimizer: Any) -> Any:
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        return closure

    with torch.no_grad():
        remote_loss = remote.step(closure_for(remote_model, remote))
        local_loss = local.step(closure_for(local_model, local))
    assert torch.equal(remote_loss, local_loss)
    assert_same_params(remote_model, local_model)


def test_unnamed_params_work_like_named_ones(client: Client) -> None:
    remote_model = make_model()
    local_model = twin(remote_model)
    remote = RemoteRprop(remote_model.parameters(), client=client)
    local = torch.optim.Rprop(local_model.parameters())
    assert remote.session.param_names == ["0", "1", "2", "3"]
    assert "param_names" not in remote.param_groups[0]
    for x, y in batches(3):
        train_step(remote_model, remote, x, y)
        train_step(local_model, local, x, y)
    assert_same_params(remote_model, local_model)


def test_an_invalid_hyperparameter_is_refused_like_torch_does(client: Client) -> None:
    with pytest.raises(ValueError, match="Invalid learning rate: -1") as torch_error:
        torch.optim.RMSprop(make_model().parameters(), lr=-1)
    with pytest.raises(ValidationError, match="Invalid learning rate: -1") as remote_error:
        RemoteRMSprop(make_model().parameters(), lr=-1, client=client)
    assert str(torch_error.value) in remote_error.value.detail


def test_an_invalid_hyperparameter_set_between_steps_fails_the_next_step_and_changes_nothing(client: Client) -> None:
    remote_model, remote, local_model, local = pair("rmsprop", client)
    data = batches(3)
    train_step(remote_model, remote, *data[0])
    train_step(local_model, local, *data[0])
    remote.param_groups[0]["alpha"] = -0.5
    before = [param.detach().clone() for param in remote_model.parameters()]
    with pytest.raises(ValidationError, match="Invalid alpha value"):
        train_step(remote_model, remote, *data[1])
    assert all(torch.equal(param, old) for param, old in zip(remote_model.parameters(), before, strict=True))
    assert remote.session.refresh()["step"] == 1
    remote.param_groups[0]["alpha"] = hyperparameter("rmsprop", "alpha")
    train_step(remote_model, remote, *data[2])
    train_step(local_model, local, *data[2])
    assert_same_params(remote_model, local_model, *tolerances("rmsprop", torch.float32))


def test_params_must_be_float32_or_float64(client: Client) -> None:
    with pytest.raises(ValueError, match=r"param '0\.weight'.*float16"):
        RemoteRprop(make_model().half().named_parameters(), client=client)
