"""state_dict (GET/PUT), checkpoints, and exact round trips of every number (JSON and safetensors)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import (
    assert_same_bits,
    assert_same_json,
    assert_same_param_bits,
    assert_same_state_dict,
    checkpoint,
    core_optimizer,
    create_session,
    get_params,
    get_state_dict,
    held,
    ok,
    put_state_dict,
    same,
    send,
    step,
    to_json,
)

# Every test here runs over JSON and over safetensors (conftest.py's `transport`).
pytestmark = pytest.mark.usefixtures("transport")

SHAPES: dict[str, tuple[int, ...]] = {"w": (2, 3), "b": (3,), "s": ()}
DTYPES = ["float32", "float64"]
CHECKPOINT_KEYS = {
    "optimizer",
    "dtype",
    "params",
    "param_groups",
    "state_dict",
    "step",
    "aggregation",
    "clip_grad_norm",
    "nonfinite",
}

# (optimizer, extra create fields) — per-group hyperparameters, and RMSprop with momentum + centered.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "rprop_per_group": (
        "rprop",
        {
            "hyperparameters": {"lr": 0.03, "etas": [0.4, 1.3]},
            "param_groups": [{"params": ["w"], "step_sizes": [1e-4, 0.5]}, {"params": ["b", "s"], "maximize": True}],
        },
    ),
    "rmsprop_momentum_centered": ("rmsprop", {"hyperparameters": {"momentum": 0.9, "centered": True, "lr": 0.02}}),
    "rmsprop_per_group": (
        "rmsprop",
        {
            "hyperparameters": {"lr": 0.02},
            "param_groups": [
                {"params": ["w"], "momentum": 0.5, "centered": True, "weight_decay": 0.1},
                {"params": ["b", "s"], "alpha": 0.7, "maximize": True, "eps": 0.01},
            ],
        },
    ),
}


def _body(config: str, dtype: str, seed: int = 0) -> dict[str, Any]:
    optimizer, extra = CONFIGS[config]
    rng = np.random.default_rng(seed)
    params = {name: to_json(rng.normal(size=shape).astype(dtype)) for name, shape in SHAPES.items()}
    return {"optimizer": optimizer, "params": params, "dtype": dtype, **copy.deepcopy(extra)}


def _grads(rng: np.random.Generator, names: str, dtype: str) -> dict[str, np.ndarray]:
    grads = {}
    for name in names:
        grad = rng.normal(size=SHAPES[name]).astype(dtype)
        grads[name] = np.where(rng.random(SHAPES[name]) < 0.2, np.zeros_like(grad), grad)
    return grads


HISTORY = ["w", "wb", "wbs", "bs", "w", "wbs"]


def test_a_new_sessions_state_dict_has_no_state_and_torchs_group_layout(client: TestClient) -> None:
    for config in CONFIGS:
        body = _body(config, "float32")
        created = create_session(client, body)

        state_dict = ok(get_state_dict(client, created.id))

        assert state_dict["state"] == {}
        assert_same_state_dict(state_dict, core_optimizer(body).state_dict(), "float32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS)
def test_get_state_dict_equals_the_cores_state_dict_for_the_same_history(
    client: TestClient, config: str, dtype: str
) -> None:
    body = _body(config, dtype)
    core = core_optimizer(body)
    created = create_session(client, body)
    rng = np.random.default_rng(1)

    for names in HISTORY:
        grads = _grads(rng, names, dtype)
        core.step(grads)
        ok(step(client, created.id, grads))
        assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS)
def test_put_state_dict_loads_it_leaves_params_unchanged_and_later_steps_follow_the_core(
    client: TestClient, config: str, dtype: str
) -> None:
    source = create_session(client, _body(config, dtype))
    rng = np.random.default_rng(2)
    for names in HISTORY:
        ok(step(client, source.id, _grads(rng, names, dtype)))
    state_dict = ok(get_state_dict(client, source.id))
    target_body = _body(config, dtype, seed=3)
    target = create_session(client, target_body)
    params_before = ok(get_params(client, target.id))

    response = put_state_dict(client, target.id, state_dict)

    summary = ok(response)
    assert summary == ok(client.get(target.url))
    assert summary["step"] == 0
    assert response.headers["etag"] not in {target.etag, ""}
    assert same(ok(get_params(client, target.id)), params_before)
    assert_same_state_dict(ok(get_state_dict(client, target.id)), state_dict, dtype)
    core = core_optimizer(target_body)
    core.load_state_dict(state_dict)
    for names in ["wbs", "s", "wb"]:
        grads = _grads(rng, names, dtype)
        core.step(grads)
        assert_same_param_bits(ok(step(client, target.id, grads))["params"], core.params, dtype)


def test_put_state_dict_takes_the_hyperparameters_of_the_loaded_groups(client: TestClient) -> None:
    body = _body("rmsprop_per_group", "float64")
    created = create_session(client, body)
    state_dict = ok(get_state_dict(client, created.id))
    state_dict["param_groups"][0].update(lr=0.125, momentum=0.25)
    state_dict["param_groups"][1].update(centered=True)
    core = core_optimizer(body)
    core.load_state_dict(state_dict)

    summary = ok(put_state_dict(client, created.id, state_dict))

    assert_same_json(summary["param_groups"], to_json(core.param_groups), "param_groups")
    assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), "float64")


def test_put_state_dict_without_param_names_is_loaded_like_torchs(client: TestClient) -> None:
    created = create_session(client, _body("rprop_per_group", "float32"))
    ok(step(client, created.id, _grads(np.random.default_rng(4), "wbs", "float32")))
    state_dict = ok(get_state_dict(client, created.id))
    other = create_session(client, _body("rprop_per_group", "float32"))
    without_names = copy.deepcopy(state_dict)
    for group in without_names["param_groups"]:
        del group["param_names"]

    ok(put_state_dict(client, other.id, without_names))

    assert_same_state_dict(ok(get_state_dict(client, other.id)), state_dict, "float32")


def test_the_checkpoint_holds_optimizer_dtype_params_groups_state_dict_and_step(client: TestClient) -> None:
    body = _body("rmsprop_per_group", "float32")
    core = core_optimizer(body)
    created = create_session(client, {**body, "step": 10})
    rng = np.random.default_rng(5)
    for names in ["wb", "s"]:
        grads = _grads(rng, names, "float32")
        core.step(grads)
        ok(step(client, created.id, grads))

    snapshot = checkpoint(client, created.id)

    assert set(snapshot) == CHECKPOINT_KEYS
    assert (snapshot["optimizer"], snapshot["dtype"], snapshot["step"]) == ("rmsprop", "float32", 12)
    assert_same_param_bits(snapshot["params"], core.params, "float32")
    assert_same_json(snapshot["param_groups"], to_json(core.param_groups), "param_groups")
    assert_same_state_dict(snapshot["state_dict"], core.state_dict(), "float32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS)
def test_a_checkpoint_posted_to_sessions_continues_bit_for_bit_like_the_original(
    client: TestClient, config: str, dtype: str
) -> None:
    original = create_session(client, _body(config, dtype))
    rng = np.random.default_rng(6)
    for names in ["w", "wbs"]:
        ok(step(client, original.id, _grads(rng, names, dtype)))
    ok(send(client, "PATCH", original.url, {"hyperparameters": {"lr": 0.07}}))
    ok(step(client, original.id, _grads(rng, "bs", dtype)))
    snapshot = checkpoint(client, original.id)

    copy_ = create_session(client, snapshot)

    assert copy_.id != original.id
    assert copy_.body["step"] == 3
    summary = ok(client.get(original.url))
    for key in ("optimizer", "dtype", "step", "param_groups", "shapes"):
        assert copy_.body[key] == summary[key], key
    assert same(checkpoint(client, copy_.id), snapshot)
    for names in ["s", "wbs", "w", "wb"]:
        grads = _grads(rng, names, dtype)
        from_original = ok(step(client, original.id, grads))
        from_copy = ok(step(client, copy_.id, grads))
        assert from_copy["step"] == from_original["step"]
        expected = {name: np.asarray(value, dtype=dtype) for name, value in from_original["params"].items()}
        assert_same_param_bits(from_copy["params"], expected, dtype)
    assert same(checkpoint(client, copy_.id), checkpoint(client, original.id))


@pytest.mark.parametrize("dtype", DTYPES)
def test_create_with_a_state_dict_and_a_step_continues_like_the_core_loaded_with_it(
    client: TestClient, dtype: str
) -> None:
    body = _body("rmsprop_momentum_centered", dtype)
    core = core_optimizer(body)
    rng = np.random.default_rng(7)
    for names in ["wbs", "w", "bs"]:
        core.step(_grads(rng, names, dtype))

    created = create_session(
        client, {**body, "params": to_json(core.params), "state_dict": core.state_dict(), "step": 3}
    )

    assert created.body["step"] == 3
    assert_same_param_bits(created.body["params"], core.params, dtype)
    assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), dtype)
    for n, names in enumerate(["wbs", "s"], start=4):
        grads = _grads(rng, names, dtype)
        core.step(grads)
        result = ok(step(client, created.id, grads))
        assert result["step"] == n
        assert_same_param_bits(result["params"], core.params, dtype)


def _awkward_values(dtype: str) -> np.ndarray:
    """Signed zeros, subnormals, extremes, values without a short decimal form, random bit patterns."""
    info = np.finfo(dtype)
    special = [
        0.0,
        -0.0,
        float(info.smallest_subnormal),
        -float(info.smallest_subnormal),
        float(info.smallest_normal),
        float(info.max),
        -float(info.max),
        float(np.nextafter(np.asarray(1.0, dtype), np.asarray(2.0, dtype))),
        float(np.asarray(0.1, dtype)),
        float(np.asarray(1 / 3, dtype)),
        float(np.asarray(-2 / 3, dtype)),
        float(np.asarray(123456789.123456789, dtype)),
    ]
    bits = np.random.default_rng(8).integers(0, np.iinfo(np.uint64).max, size=100, dtype=np.uint64, endpoint=True)
    random = (bits >> np.uint64(32)).astype(np.uint32).view(dtype) if dtype == "float32" else bits.view(dtype)
    return np.concatenate([np.asarray(special, dtype=dtype), random[np.isfinite(random)]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_params_round_trip_to_the_exact_bits(client: TestClient, dtype: str) -> None:
    values = _awkward_values(dtype)
    params = {"v": values, "m": values[:12].reshape(3, 4), "z": values[1]}

    created = create_session(client, {"optimizer": "rprop", "params": params, "dtype": dtype})

    assert_same_param_bits(created.body["params"], params, dtype)
    assert_same_param_bits(ok(get_params(client, created.id))["params"], params, dtype)
    assert_same_param_bits(checkpoint(client, created.id)["params"], params, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_arrays_round_trip_to_the_exact_bits(client: TestClient, dtype: str) -> None:
    values = _awkward_values(dtype)
    created = create_session(client, {"optimizer": "rmsprop", "params": {"v": np.zeros_like(values)}, "dtype": dtype})
    state_dict = ok(get_state_dict(client, created.id))
    state_dict["param_groups"][0].update(momentum=0.5, centered=True)
    # Arrays of the session's dtype: nested lists in JSON, tensors of that dtype in binary.
    state_dict["state"] = {
        "0": {"step": 7.0, "square_avg": np.abs(values), "momentum_buffer": values, "grad_avg": -values}
    }

    ok(put_state_dict(client, created.id, state_dict))

    entry = ok(get_state_dict(client, created.id))["state"]["0"]
    assert entry["step"] == 7.0
    assert_same_bits(held(entry["square_avg"], dtype), np.abs(values), "square_avg")
    assert_same_bits(held(entry["momentum_buffer"], dtype), values, "momentum_buffer")
    assert_same_bits(held(entry["grad_avg"], dtype), -values, "grad_avg")


def test_hyperparameters_round_trip_exactly(client: TestClient) -> None:
    hyperparameters = {
        "lr": 0.1 + 0.2,
        "alpha": 0.9999999999999999,
        "eps": 2.2250738585072014e-308,
        "weight_decay": 5e-324,
        "momentum": 1.7976931348623157e308,
    }
    created = create_session(
        client, {"optimizer": "rmsprop", "params": {"x": [1.0]}, "hyperparameters": hyperparameters}
    )

    for groups in [
        created.body["param_groups"],
        ok(client.get(created.url))["param_groups"],
        ok(get_state_dict(client, created.id))["param_groups"],
        checkpoint(client, created.id)["param_groups"],
    ]:
        for key, value in hyperparameters.items():
            assert groups[0][key] == value, (key, groups[0][key])
