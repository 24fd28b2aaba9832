"""A session's gradient settings over HTTP, against torch: clipping by global norm before each step
(``torch.nn.utils.clip_grad_norm_`` then ``optimizer.step()``), and skipping non-finite steps (as
``GradScaler`` skips them). Set at creation, changed by PATCH, shown in the summary and the checkpoint."""

import math
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.api.conftest import assert_problem, create_session, get_params, ok, send, step

pytestmark = pytest.mark.usefixtures("transport")

SHAPES = {"w": (3, 4), "b": (4,)}
STEPS = 8
FLOAT32_BOUND = 64 * np.finfo(np.float32).eps
"""As the RMSprop parity tests: 64 float32 unit roundoffs of the largest magnitude an element has had."""


def _start(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def _grads(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: (rng.standard_normal(shape) * 3).astype(np.float32) for name, shape in SHAPES.items()}


def _torch_run(
    optimizer: str, start: dict[str, np.ndarray], grads: list[dict[str, np.ndarray]], max_norm: float, norm_type: float
) -> tuple[dict[str, np.ndarray], list[float]]:
    params = {name: torch.nn.Parameter(torch.tensor(value)) for name, value in start.items()}
    kind = torch.optim.Rprop if optimizer == "rprop" else torch.optim.RMSprop
    local = kind(list(params.values()), lr=0.01)
    totals = []
    for step_grads in grads:
        for name, param in params.items():
            param.grad = torch.tensor(step_grads[name])
        totals.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm, norm_type)))
        local.step()
    return {name: param.detach().numpy() for name, param in params.items()}, totals


@pytest.mark.parametrize("optimizer", ["rprop", "rmsprop"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, "inf"])
def test_clipped_steps_match_a_torch_loop_that_clips_then_steps(
    client: TestClient, optimizer: str, norm_type: float | str
) -> None:
    start = _start(1)
    rng = np.random.default_rng(2)
    grads = [_grads(rng) for _ in range(STEPS)]
    clip = {"max_norm": 0.75, "norm_type": norm_type}
    created = create_session(
        client, {"optimizer": optimizer, "params": start, "hyperparameters": {"lr": 0.01}, "clip_grad_norm": clip}
    )
    assert created.body["clip_grad_norm"] == {"max_norm": 0.75, "norm_type": norm_type}
    totals, coefs = [], []
    for step_grads in grads:
        answer = ok(step(client, created.id, step_grads))
        totals.append(answer["metrics"]["clip"]["total_norm"])
        coefs.append(answer["metrics"]["clip"]["coef"])
    expected, torch_totals = _torch_run(
        optimizer, start, grads, 0.75, math.inf if norm_type == "inf" else float(norm_type)
    )
    params = ok(get_params(client, created.id))["params"]
    for name, value in expected.items():
        got = np.asarray(params[name], dtype=np.float32)
        if optimizer == "rprop":
            # Rprop reads only the signs, which clipping by a positive factor keeps.
            assert np.array_equal(got, value), name
        else:
            assert np.abs(got - value).max() <= FLOAT32_BOUND * max(1.0, float(np.abs(value).max())), name
    assert totals == pytest.approx(torch_totals, rel=1e-6)
    # RMSprop and Rprop hardly notice a factor common to every step: check the factor itself, as torch's
    # clip_grad_norm_ computes it.
    assert coefs == pytest.approx([min(1.0, 0.75 / (total + 1e-6)) for total in torch_totals], rel=1e-6)


def test_a_session_that_skips_answers_a_non_finite_step_unchanged_and_applies_nothing(client: TestClient) -> None:
    start = _start(3)
    created = create_session(client, {"optimizer": "rmsprop", "params": start, "nonfinite": "skip"})
    first = ok(step(client, created.id, {"w": np.ones(SHAPES["w"], np.float32)}))
    etag = client.get(f"/v1/sessions/{created.id}").headers["etag"]
    # Too large for float32, the session's dtype: infinite once cast (JSON has no way to write inf).
    bad = {"w": np.ones(SHAPES["w"], np.float32), "b": np.array([1.0, 1e39, 0.0, 0.0], dtype=np.float64)}
    answer = ok(step(client, created.id, bad))
    assert answer["skipped"] is True
    assert answer["step"] == first["step"] == 1
    for name, value in first["params"].items():
        assert np.array_equal(np.asarray(answer["params"][name]), np.asarray(value))
    summary = ok(client.get(f"/v1/sessions/{created.id}"))
    assert summary["step"] == 1
    assert client.get(f"/v1/sessions/{created.id}").headers["etag"] == etag
    assert [item["step"] for item in ok(client.get(f"/v1/sessions/{created.id}/metrics"))["items"]] == [1]
    # The skipped step left no trace in the optimizer's state: the next step is torch's second step.
    params = {name: torch.nn.Parameter(torch.tensor(value)) for name, value in start.items()}
    local = torch.optim.RMSprop([params["w"], params["b"]])
    for _ in range(2):
        params["w"].grad = torch.ones(SHAPES["w"])
        local.step()
    after = ok(step(client, created.id, {"w": np.ones(SHAPES["w"], np.float32)}))
    assert after["step"] == 2
    got = np.asarray(after["params"]["w"], dtype=np.float32)
    assert np.abs(got - params["w"].detach().numpy()).max() <= FLOAT32_BOUND * 2


def test_by_default_a_non_finite_step_is_refused_and_patch_changes_the_policy(client: TestClient) -> None:
    created = create_session(client, {"optimizer": "rprop", "params": _start(4)})
    assert created.body["nonfinite"] == "reject"
    assert created.body["clip_grad_norm"] is None
    bad = {"b": np.array([-1e39, 0.0, 0.0, 0.0], dtype=np.float64)}
    assert_problem(step(client, created.id, bad), 422)
    patched = ok(send(client, "PATCH", f"/v1/sessions/{created.id}", {"nonfinite": "skip"}))
    assert patched["nonfinite"] == "skip"
    assert ok(step(client, created.id, bad))["skipped"] is True
    clip = {"max_norm": 1.0}
    patched = ok(send(client, "PATCH", f"/v1/sessions/{created.id}", {"clip_grad_norm": clip}))
    assert patched["clip_grad_norm"] == {"max_norm": 1.0, "norm_type": 2.0}
    assert patched["nonfinite"] == "skip"
    patched = ok(send(client, "PATCH", f"/v1/sessions/{created.id}", {"clip_grad_norm": None, "nonfinite": "reject"}))
    assert (patched["clip_grad_norm"], patched["nonfinite"]) == (None, "reject")


def test_the_checkpoint_carries_the_settings_and_restores_them(client: TestClient) -> None:
    body: dict[str, Any] = {
        "optimizer": "rprop",
        "params": _start(5),
        "clip_grad_norm": {"max_norm": 2.5, "norm_type": "inf"},
        "nonfinite": "skip",
    }
    created = create_session(client, body)
    snapshot = ok(client.get(f"/v1/sessions/{created.id}/checkpoint"))
    assert (snapshot["clip_grad_norm"], snapshot["nonfinite"]) == (body["clip_grad_norm"], "skip")
    restored = create_session(client, snapshot)
    assert (restored.body["clip_grad_norm"], restored.body["nonfinite"]) == (body["clip_grad_norm"], "skip")


@pytest.mark.parametrize(
    ("settings", "loc"),
    [
        ({"clip_grad_norm": {"max_norm": -1.0}}, ["body", "clip_grad_norm", "max_norm"]),
        ({"clip_grad_norm": {"max_norm": 1.0, "norm_type": 0}}, ["body", "clip_grad_norm", "norm_type"]),
        ({"clip_grad_norm": {"max_norm": 1.0, "norm_type": "two"}}, ["body", "clip_grad_norm", "norm_type"]),
        ({"clip_grad_norm": {"norm_type": 2.0}}, ["body", "clip_grad_norm", "max_norm"]),
        ({"clip_grad_norm": {"max_norm": 1.0, "norm": 2.0}}, ["body", "clip_grad_norm", "norm"]),
        ({"nonfinite": "ignore"}, ["body", "nonfinite"]),
    ],
)
def test_bad_settings_are_refused_naming_the_field_and_change_nothing(
    client: TestClient, settings: dict[str, Any], loc: list[str]
) -> None:
    created = create_session(client, {"optimizer": "rprop", "params": _start(6)})
    assert_problem(
        send(client, "POST", "/v1/sessions", {"optimizer": "rprop", "params": {"w": [1.0]}, **settings}), 422, loc
    )
    assert_problem(send(client, "PATCH", f"/v1/sessions/{created.id}", settings), 422, loc)
    summary = ok(client.get(f"/v1/sessions/{created.id}"))
    assert (summary["clip_grad_norm"], summary["nonfinite"]) == (None, "reject")


def test_a_total_norm_past_the_dtypes_range_is_null_in_the_answer_not_a_failure(client: TestClient) -> None:
    # norm_type 1000: 4**1000 overflows float64 on the way to the norm, which is then infinite.
    clip = {"max_norm": 1.0, "norm_type": 1000}
    created = create_session(client, {"optimizer": "rprop", "params": {"w": [1.0, 2.0]}, "clip_grad_norm": clip})
    answer = ok(step(client, created.id, {"w": [3.0, 4.0]}))
    assert answer["metrics"]["clip"]["total_norm"] is None
