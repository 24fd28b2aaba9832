"""Sign-only gradients for Rprop: int8 safetensors tensors of -1, 0 and 1 step exactly as the gradients
they are the signs of, checked against torch's Rprop given the full gradients."""

from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.numpy import load, save

from tests.api.conftest import assert_problem, ok

SAFETENSORS = {"Content-Type": "application/vnd.safetensors", "Accept": "application/vnd.safetensors"}
SHAPES = {"w": (5, 7), "b": (7,), "scale": ()}
STEPS = 30


def _create(client: TestClient, optimizer: str, start: dict[str, np.ndarray], **hyperparameters: Any) -> str:
    body = {
        "optimizer": optimizer,
        "dtype": str(start["w"].dtype),
        "params": {name: value.tolist() for name, value in start.items()},
        "hyperparameters": hyperparameters,
    }
    created: str = ok(client.post("/v1/sessions", json=body), 201)["id"]
    return created


def _send(client: TestClient, session_id: str, grads: dict[str, np.ndarray]) -> Any:
    return client.post(f"/v1/sessions/{session_id}/step", content=save(grads), headers=SAFETENSORS)


def _grads(rng: np.random.Generator, dtype: type) -> dict[str, np.ndarray]:
    grads = {}
    for name, shape in SHAPES.items():
        grad: np.ndarray = rng.standard_normal(shape).astype(dtype)
        grad[rng.random(shape) < 0.2] = 0  # zeros: no step for that element, and its stored sign is 0
        grads[name] = grad
    return grads


def _signs(grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.asarray(np.sign(grad), dtype=np.int8) for name, grad in grads.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("maximize", [False, True])
def test_signs_step_bit_for_bit_as_torch_steps_with_the_full_gradients(
    client: TestClient, dtype: type, maximize: bool
) -> None:
    rng = np.random.default_rng(7)
    start: dict[str, np.ndarray] = {
        name: np.asarray(rng.standard_normal(shape), dtype=dtype) for name, shape in SHAPES.items()
    }
    session_id = _create(client, "rprop", start, maximize=maximize, etas=[0.4, 1.3])
    params = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in start.items()}
    local = torch.optim.Rprop(list(params.values()), maximize=maximize, etas=(0.4, 1.3))
    for _ in range(STEPS):
        grads = _grads(rng, dtype)
        answer = _send(client, session_id, _signs(grads))
        assert answer.status_code == 200, answer.text
        for name, grad in grads.items():
            params[name].grad = torch.from_numpy(grad)
        local.step()
        got = load(answer.content)
        for name, param in params.items():
            assert np.array_equal(got[name], param.detach().numpy()), name
    state = ok(client.get(f"/v1/sessions/{session_id}/state_dict"))["state"]
    for index, param in enumerate(params.values()):
        torch_state = local.state[param]
        expected_sizes = torch_state["step_size"].numpy()
        assert np.array_equal(np.asarray(state[str(index)]["step_size"], dtype=dtype), expected_sizes)
        # What differs, as documented: prev holds the signs of what torch holds.
        assert np.array_equal(np.asarray(state[str(index)]["prev"], dtype=dtype), np.sign(torch_state["prev"].numpy()))


def test_the_state_dict_of_signs_loads_into_torch_which_continues_bit_for_bit(client: TestClient) -> None:
    rng = np.random.default_rng(8)
    start = {name: np.asarray(rng.standard_normal(shape), dtype=np.float32) for name, shape in SHAPES.items()}
    session_id = _create(client, "rprop", start)
    for _ in range(10):
        assert _send(client, session_id, _signs(_grads(rng, np.float32))).status_code == 200
    saved = ok(client.get(f"/v1/sessions/{session_id}/state_dict"))
    current = ok(client.get(f"/v1/sessions/{session_id}/params"))["params"]
    params = [torch.nn.Parameter(torch.tensor(current[name], dtype=torch.float32)) for name in SHAPES]
    local = torch.optim.Rprop(params)
    saved["state"] = {
        int(index): {
            key: torch.tensor(value) if key == "step" else torch.tensor(value, dtype=torch.float32)
            for key, value in entry.items()
        }
        for index, entry in saved["state"].items()
    }
    local.load_state_dict(saved)
    for _ in range(10):
        grads = _grads(rng, np.float32)
        for param, grad in zip(params, grads.values(), strict=True):
            param.grad = torch.from_numpy(grad)
        local.step()
        got = load(_send(client, session_id, _signs(grads)).content)
        for name, param in zip(SHAPES, params, strict=True):
            assert np.array_equal(got[name], param.detach().numpy()), name


def test_signs_other_than_minus_one_zero_and_one_are_refused_and_change_nothing(client: TestClient) -> None:
    start = {name: np.zeros(shape, dtype=np.float32) for name, shape in SHAPES.items()}
    session_id = _create(client, "rprop", start)
    bad = _signs(_grads(np.random.default_rng(9), np.float32))
    bad["b"][3] = 2
    assert_problem(_send(client, session_id, bad), 422, ["body", "grads", "b"], "signs only")
    assert ok(client.get(f"/v1/sessions/{session_id}"))["step"] == 0


def test_signs_are_refused_by_a_session_whose_steps_need_more_than_signs(client: TestClient) -> None:
    start = {name: np.zeros(shape, dtype=np.float32) for name, shape in SHAPES.items()}
    session_id = _create(client, "rmsprop", start)
    signs = _signs(_grads(np.random.default_rng(10), np.float32))
    assert_problem(_send(client, session_id, signs), 422, ["body", "grads"], "only an Rprop session")
    assert ok(client.get(f"/v1/sessions/{session_id}"))["step"] == 0


def test_int8_is_for_gradients_only(client: TestClient) -> None:
    body = save({"params/w": np.ones(3, dtype=np.int8)}, metadata={"optimizer": '"rprop"'})
    response = client.post("/v1/sessions", content=body, headers=SAFETENSORS)
    assert_problem(response, 422, ["body", "params", "w"], "int8")
