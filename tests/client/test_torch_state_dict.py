"""state_dict, load_state_dict and checkpoints of the remote optimizers: torch's layout with tensors,
interchangeable with torch.optim both ways, and every round trip continues exactly where it left off."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="these tests exchange state with torch.optim, which needs torch")

from optim_client import Checkpoint, Client, RemoteOptimizer, RemoteRMSprop, RemoteRprop  # noqa: E402
from tests.client.torch_models import assert_same_params, batches, make_model, tolerances, train_step, twin  # noqa: E402
from tests.optimizers import OPTIMIZERS, example_hyperparameters, hyperparameter, torch_name  # noqa: E402


def remote_class(optimizer: str) -> Any:
    """The SDK's class of ``optimizer`` (each takes torch's signature, which ``RemoteOptimizer`` does not)."""
    return RemoteOptimizer.of(optimizer)


def local_class(optimizer: str) -> Any:
    return getattr(torch.optim, torch_name(optimizer))


EVERY_OPTIMIZER = pytest.mark.parametrize("optimizer", OPTIMIZERS)


def trained_remote(optimizer: str, client: Client, steps: int = 3) -> tuple[Any, Any]:
    model = make_model()
    remote = remote_class(optimizer)(model.named_parameters(), client=client, **example_hyperparameters(optimizer))
    for x, y in batches(steps, seed=5):
        train_step(model, remote, x, y)
    return model, remote


def continue_both(model_a: Any, optimizer_a: Any, model_b: Any, optimizer_b: Any, steps: int = 3) -> None:
    for x, y in batches(steps, seed=9):
        train_step(model_a, optimizer_a, x, y)
        train_step(model_b, optimizer_b, x, y)


@EVERY_OPTIMIZER
def test_state_dict_has_torchs_layout_with_tensors(client: Client, optimizer: str) -> None:
    _, remote = trained_remote(optimizer, client)
    local_model = make_model()
    local = local_class(optimizer)(local_model.named_parameters(), **example_hyperparameters(optimizer))
    for x, y in batches(3, seed=5):
        train_step(local_model, local, x, y)
    ours, theirs = remote.state_dict(), local.state_dict()
    assert sorted(ours["state"]) == sorted(theirs["state"])
    for index, entry in theirs["state"].items():
        assert sorted(ours["state"][index]) == sorted(entry)
        for key, value in entry.items():
            assert isinstance(ours["state"][index][key], torch.Tensor)
            assert ours["state"][index][key].dtype == value.dtype, key
            assert ours["state"][index][key].shape == value.shape, key
    [our_group], [their_group] = ours["param_groups"], theirs["param_groups"]
    assert our_group == their_group


@EVERY_OPTIMIZER
def test_torch_optim_loads_our_state_dict_and_continues_as_we_do(client: Client, optimizer: str) -> None:
    model, remote = trained_remote(optimizer, client)
    local_model = twin(model)
    local = local_class(optimizer)(local_model.named_parameters(), lr=0.5)
    local.load_state_dict(remote.state_dict())
    assert local.param_groups[0]["lr"] == hyperparameter(optimizer, "lr")
    continue_both(model, remote, local_model, local)
    assert_same_params(model, local_model, *tolerances(optimizer, torch.float32))


@EVERY_OPTIMIZER
def test_we_load_torch_optims_state_dict_and_continue_as_it_does(client: Client, optimizer: str) -> None:
    local_model = make_model()
    local = local_class(optimizer)(local_model.named_parameters(), **example_hyperparameters(optimizer))
    for x, y in batches(3, seed=5):
        train_step(local_model, local, x, y)
    model = twin(local_model)
    remote = remote_class(optimizer)(model.named_parameters(), client=client, lr=0.5)
    remote.load_state_dict(local.state_dict())
    assert remote.param_groups[0]["lr"] == hyperparameter(optimizer, "lr")  # as torch: the loaded groups' values
    assert remote.session.param_groups[0]["lr"] == hyperparameter(optimizer, "lr")
    continue_both(model, remote, local_model, local)
    assert_same_params(model, local_model, *tolerances(optimizer, torch.float32))


@EVERY_OPTIMIZER
def test_our_state_dict_loaded_into_a_fresh_remote_optimizer_continues_identically(
    client: Client, optimizer: str
) -> None:
    model, remote = trained_remote(optimizer, client)
    copy_model = twin(model)
    fresh = remote_class(optimizer)(copy_model.named_parameters(), client=client)
    fresh.load_state_dict(remote.state_dict())
    continue_both(model, remote, copy_model, fresh)
    assert_same_params(model, copy_model)


def test_an_unnamed_optimizers_state_dict_has_no_param_names_and_torch_loads_it(client: Client) -> None:
    model = make_model()
    remote = RemoteRprop(model.parameters(), client=client)
    for x, y in batches(2):
        train_step(model, remote, x, y)
    state_dict = remote.state_dict()
    assert "param_names" not in state_dict["param_groups"][0]
    local_model = twin(model)
    local = torch.optim.Rprop(local_model.parameters())
    local.load_state_dict(state_dict)
    continue_both(model, remote, local_model, local)
    assert_same_params(model, local_model)


def test_group_keys_the_service_does_not_know_stay_local_as_torch_keeps_them(client: Client) -> None:
    model, remote = trained_remote("rprop", client)
    remote.param_groups[0]["initial_lr"] = 0.02  # what an LR scheduler adds
    train_step(model, remote, *batches(1)[0])
    state_dict = remote.state_dict()
    assert state_dict["param_groups"][0]["initial_lr"] == 0.02
    fresh = RemoteRprop(twin(model).named_parameters(), client=client)
    fresh.load_state_dict(state_dict)
    assert fresh.param_groups[0]["initial_lr"] == 0.02
    assert "initial_lr" not in fresh.session.param_groups[0]


@EVERY_OPTIMIZER
def test_a_restored_checkpoint_continues_identically_and_overwrites_the_given_params(
    client: Client, optimizer: str
) -> None:
    model, remote = trained_remote(optimizer, client)
    checkpoint = Checkpoint.from_bytes(remote.checkpoint().to_bytes())
    other_model = make_model(seed=123)  # different values, which the restore overwrites
    restored = remote_class(optimizer).restore(client, checkpoint, other_model.named_parameters())
    assert_same_params(other_model, model)
    assert restored.session.step_count == 3
    assert restored.param_groups[0]["lr"] == hyperparameter(optimizer, "lr")
    continue_both(model, remote, other_model, restored)
    assert_same_params(other_model, model)
    assert restored.session.step_count == remote.session.step_count == 6


def test_a_checkpoint_restored_without_params_gets_numpy_arrays_of_its_own(client: Client) -> None:
    model, remote = trained_remote("rmsprop", client)
    checkpoint = remote.checkpoint()
    restored = RemoteRMSprop.restore(client, checkpoint)
    arrays = restored.param_groups[0]["params"]
    assert all(isinstance(array, np.ndarray) for array in arrays)
    for array, param in zip(arrays, model.parameters(), strict=True):
        assert array.tobytes() == param.detach().numpy().tobytes()
    restored.step(grads={name: np.ones_like(array) for name, array in zip(checkpoint.param_names, arrays, strict=True)})
    assert restored.session.step_count == 4


def test_restore_refuses_a_checkpoint_of_the_other_optimizer_and_params_that_do_not_fit(client: Client) -> None:
    _, remote = trained_remote("rprop", client)
    checkpoint = remote.checkpoint()
    with pytest.raises(ValueError, match="cannot restore a 'rprop' checkpoint"):
        RemoteRMSprop.restore(client, checkpoint)
    with pytest.raises(ValueError, match="the checkpoint has 4 params"):
        RemoteRprop.restore(client, checkpoint, [("w", torch.zeros(4, 3, requires_grad=True))])
    renamed = [(f"layer{name}", param) for name, param in make_model().named_parameters()]
    with pytest.raises(ValueError, match="the checkpoint's params are"):
        RemoteRprop.restore(client, checkpoint, renamed)
    with pytest.raises(ValueError, match="has shape"):
        RemoteRprop.restore(
            client, checkpoint, [param.detach().t().contiguous() for param in make_model().parameters()]
        )
