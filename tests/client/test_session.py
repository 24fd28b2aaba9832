"""The Session API with numpy arrays, over both transports, against a real server: every number is
compared bit for bit with optim_core run in-process on the same inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from optim_client import Checkpoint, Client, NotFoundError, Session
from tests.client.reference import (
    OPTIMIZERS,
    RMSPROP,
    RPROP,
    assert_same_bits,
    assert_same_state,
    core_optimizer,
    example_hyperparameters,
    grads_sequence,
    hyperparameter,
    initial_params,
)

EVERY_OPTIMIZER = pytest.mark.parametrize("optimizer", OPTIMIZERS)


def test_create_reports_the_session_as_the_service_holds_it(client: Client) -> None:
    session = Session.create(client, optimizer="rprop", params=initial_params("float32"), hyperparameters=RPROP)
    assert session.optimizer == "rprop"
    assert session.dtype == np.float32
    assert session.step_count == 0
    assert session.param_names == ["w", "b", "s"]
    [group] = session.param_groups
    assert group["lr"] == 0.01
    assert group["etas"] == [0.5, 1.2]
    assert group["maximize"] is False  # a default the service filled in
    assert session.summary["shapes"] == {"w": [3, 2], "b": [2], "s": []}


def test_dtype_is_float64_only_when_every_param_is_a_float64_array(client: Client) -> None:
    float64 = Session.create(client, optimizer="rprop", params=initial_params("float64"))
    python_floats = Session.create(client, optimizer="rprop", params={"x": 5.0, "y": [1.0, 2.0]})
    explicit = Session.create(client, optimizer="rprop", params={"x": 5.0}, dtype="float64")
    assert (float64.dtype, python_floats.dtype, explicit.dtype) == (
        np.dtype(np.float64),
        np.dtype(np.float32),
        np.dtype(np.float64),
    )


@EVERY_OPTIMIZER
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_steps_return_exactly_the_params_optim_core_computes(client: Client, optimizer: str, dtype: str) -> None:
    params, hyperparameters = initial_params(dtype), example_hyperparameters(optimizer)
    session = Session.create(client, optimizer=optimizer, params=params, hyperparameters=hyperparameters, dtype=dtype)
    reference = core_optimizer(optimizer, params, hyperparameters)
    for index, grads in enumerate(grads_sequence(5, dtype)):
        got = session.step(grads)
        reference.step(grads)
        assert_same_bits(got, reference.params, f"step {index + 1}")
        assert session.step_count == index + 1
    assert_same_bits(session.params(), reference.params, "GET params")
    assert_same_state(session.state_dict(), reference.state_dict())


def test_grads_of_other_dtypes_and_plain_lists_are_cast_to_the_session_dtype(client: Client) -> None:
    params = initial_params("float32")
    session = Session.create(client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
    reference = core_optimizer("rmsprop", params, RMSPROP)
    grads: dict[str, Any] = {"w": np.full((3, 2), 0.3, np.float16), "b": [1, -2], "s": 0.25}
    got = session.step(grads)
    reference.step({"w": grads["w"].astype(np.float32), "b": np.array([1.0, -2.0], np.float32), "s": 0.25})
    assert_same_bits(got, reference.params)


@EVERY_OPTIMIZER
def test_per_group_hyperparameters_apply_to_their_group(client: Client, optimizer: str) -> None:
    params, hyperparameters = initial_params("float32"), example_hyperparameters(optimizer)
    groups: list[dict[str, Any]] = [{"params": ["w"], "lr": 0.1}, {"params": ["b", "s"]}]
    session = Session.create(
        client, optimizer=optimizer, params=params, hyperparameters=hyperparameters, param_groups=groups
    )
    reference = core_optimizer(optimizer, params, hyperparameters, groups)
    assert [group["lr"] for group in session.param_groups] == [0.1, hyperparameter(optimizer, "lr")]
    for grads in grads_sequence(3, "float32"):
        stepped = session.step(grads)
        reference.step(grads)
        assert_same_bits(stepped, reference.params)


@EVERY_OPTIMIZER
def test_update_changes_hyperparameters_from_the_next_step_on(client: Client, optimizer: str) -> None:
    params, hyperparameters = initial_params("float64"), example_hyperparameters(optimizer)
    groups = [{"params": ["w"]}, {"params": ["b", "s"]}]
    session = Session.create(
        client, optimizer=optimizer, params=params, hyperparameters=hyperparameters, param_groups=groups
    )
    reference = core_optimizer(optimizer, params, hyperparameters, groups)
    first, second, third = grads_sequence(3, "float64")
    session.step(first)
    reference.step(first)

    session.update(hyperparameters={"lr": 0.05})
    for group in reference.param_groups:
        group["lr"] = 0.05
    session.step(second)
    reference.step(second)

    session.update(param_groups=[{}, {"lr": 0.2, "maximize": True}])
    reference.param_groups[1].update(lr=0.2, maximize=True)
    got = session.step(third)
    reference.step(third)
    assert_same_bits(got, reference.params)
    assert [group["lr"] for group in session.param_groups] == [0.05, 0.2]


@EVERY_OPTIMIZER
def test_a_state_dict_loaded_into_a_fresh_session_continues_it_identically(client: Client, optimizer: str) -> None:
    params, hyperparameters = initial_params("float32"), example_hyperparameters(optimizer)
    original = Session.create(client, optimizer=optimizer, params=params, hyperparameters=hyperparameters)
    sequence = grads_sequence(6, "float32")
    for grads in sequence[:3]:
        original.step(grads)
    state_dict = original.state_dict()
    fresh = Session.create(client, optimizer=optimizer, params=original.params(), hyperparameters={"lr": 0.5})
    fresh.load_state_dict(state_dict)
    assert fresh.param_groups == original.param_groups  # the hyperparameters came with the state, as in torch
    for grads in sequence[3:]:
        assert_same_bits(fresh.step(grads), original.step(grads))


def test_a_session_created_with_a_state_dict_and_step_continues_the_one_they_came_from(client: Client) -> None:
    original = Session.create(client, optimizer="rmsprop", params=initial_params("float64"), hyperparameters=RMSPROP)
    sequence = grads_sequence(4, "float64")
    for grads in sequence[:2]:
        original.step(grads)
    created = Session.create(
        client,
        optimizer="rmsprop",
        params=original.params(),
        hyperparameters=RMSPROP,
        state_dict=original.state_dict(),
        step=original.step_count,
    )
    assert created.step_count == 2
    for grads in sequence[2:]:
        assert_same_bits(created.step(grads), original.step(grads))
    assert created.step_count == 4


def test_state_dict_has_torchs_layout(client: Client) -> None:
    session = Session.create(client, optimizer="rprop", params=initial_params("float64"), hyperparameters=RPROP)
    session.step({"w": np.ones((3, 2)), "s": 1.0})
    state_dict = session.state_dict()
    assert list(state_dict) == ["state", "param_groups"]
    assert sorted(state_dict["state"]) == [0, 2]  # int keys; "b" had no grad, so no state
    entry = state_dict["state"][0]
    assert entry["step"] == 1.0
    assert isinstance(entry["step"], float)
    assert entry["prev"].dtype == np.float64
    assert entry["prev"].shape == (3, 2)
    [group] = state_dict["param_groups"]
    assert group["etas"] == (0.5, 1.2)
    assert group["params"] == [0, 1, 2]
    assert group["param_names"] == ["w", "b", "s"]


@EVERY_OPTIMIZER
def test_a_restored_checkpoint_continues_bit_for_bit_step_counter_included(client: Client, optimizer: str) -> None:
    params, hyperparameters = initial_params("float32"), example_hyperparameters(optimizer)
    original = Session.create(
        client,
        optimizer=optimizer,
        params=params,
        hyperparameters=hyperparameters,
        param_groups=[{"params": ["w", "s"], "lr": 0.03}, {"params": ["b"]}],
    )
    sequence = grads_sequence(6, "float32")
    for grads in sequence[:3]:
        original.step(grads)
    checkpoint = original.checkpoint()
    assert checkpoint.step == 3
    restored = Session.restore(client, checkpoint)
    from_file = Session.restore(client, Checkpoint.from_bytes(checkpoint.to_bytes()))
    assert restored.id != original.id
    assert restored.step_count == from_file.step_count == 3
    assert restored.param_groups == original.param_groups
    for grads in sequence[3:]:
        expected = original.step(grads)
        assert_same_bits(restored.step(grads), expected)
        assert_same_bits(from_file.step(grads), expected)
    assert restored.step_count == original.step_count == 6


def test_healthy_says_whether_the_service_answers(client: Client) -> None:
    assert client.healthy()
    with Client("http://127.0.0.1:9") as nowhere:
        assert not nowhere.healthy()


def test_open_finds_an_existing_session_by_id(client: Client) -> None:
    created = Session.create(client, optimizer="rmsprop", params=initial_params("float32"))
    created.step({"s": 1.0})
    opened = Session.open(client, created.id)
    assert opened.id == created.id
    assert opened.step_count == 1
    assert created.id in {summary["id"] for summary in client.sessions(page_size=1000)}


def test_after_delete_every_call_on_the_session_raises_not_found(client: Client) -> None:
    session = Session.create(client, optimizer="rprop", params=initial_params("float32"))
    session.delete()
    with pytest.raises(NotFoundError) as raised:
        session.step({"s": 1.0})
    assert raised.value.status == 404
    for call in (session.params, session.state_dict, session.checkpoint, session.refresh, session.delete):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(NotFoundError):
        Session.open(client, session.id)
