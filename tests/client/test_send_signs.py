"""RemoteRprop(send_signs=True): the gradients' signs travel as int8, and a model trains bit for bit as with
torch.optim.Rprop on the full gradients."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the comparison is with torch.optim.Rprop, which needs torch")

import torch
from safetensors.numpy import load

from optim_client import Client, RemoteRprop
from tests.client.fault_proxy import FaultProxy
from tests.client.torch_models import assert_same_params, batches, make_model, train_step, twin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("maximize", [False, True])
def test_signs_train_bit_for_bit_as_torch_on_the_full_gradients(
    proxied_client: Client, proxy: FaultProxy, transport: str, dtype: torch.dtype, maximize: bool
) -> None:
    model = make_model(seed=3, dtype=dtype)
    local_model = twin(model)
    remote = RemoteRprop(model.named_parameters(), maximize=maximize, client=proxied_client, send_signs=True)
    local = torch.optim.Rprop(local_model.parameters(), maximize=maximize)
    for x, y in batches(25, dtype=dtype, seed=4):
        train_step(model, remote, x, y)
        train_step(local_model, local, x, y)
        assert_same_params(model, local_model)
    steps = proxy.requests("POST", "/step")
    assert len(steps) == 25
    if transport == "binary":
        for seen in steps:
            grads = load(seen.body)
            assert {str(grad.dtype) for grad in grads.values()} == {"int8"}
            assert all(set(grad.ravel().tolist()) <= {-1, 0, 1} for grad in grads.values())


def test_send_signs_can_be_turned_on_and_off_between_steps(client: Client) -> None:
    model = make_model(seed=5)
    local_model = twin(model)
    remote = RemoteRprop(model.parameters(), client=client)
    local = torch.optim.Rprop(local_model.parameters())
    assert remote.send_signs is False
    for index, (x, y) in enumerate(batches(10, seed=6)):
        remote.send_signs = index % 2 == 1
        train_step(model, remote, x, y)
        train_step(local_model, local, x, y)
    assert_same_params(model, local_model)


def test_a_non_finite_gradient_has_no_sign_to_send(client: Client) -> None:
    model = make_model(seed=7)
    remote = RemoteRprop(model.parameters(), client=client, send_signs=True)
    for param in model.parameters():
        param.grad = torch.full_like(param, float("nan"))
    with pytest.raises(ValueError, match="no sign"):
        remote.step()
    assert remote.session.step_count == 0
