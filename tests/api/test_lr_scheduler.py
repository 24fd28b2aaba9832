"""Server-side LR schedules over HTTP against torch's schedulers, live: the lr of every group at every step
is torch's exactly; the schedule is in the checkpoint, read and written as torch's state_dict, changed by
PATCH; bad arguments are refused naming the argument."""

from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.api.conftest import assert_problem, create_session, ok, send, step

STEPS = 12
SCHEDULES: list[tuple[dict[str, Any], Any]] = [
    ({"name": "StepLR", "step_size": 3, "gamma": 0.3}, lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.3)),
    (
        {"name": "CosineAnnealingLR", "T_max": 7, "eta_min": 0.001},
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, 0.001),
    ),
    (
        {"name": "OneCycleLR", "max_lr": 0.5, "total_steps": STEPS + 1},
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=STEPS + 1),
    ),
    (
        {
            "name": "SequentialLR",
            "schedulers": [
                {"name": "LinearLR", "start_factor": 0.1, "total_iters": 4},
                {"name": "CosineAnnealingLR", "T_max": 8},
            ],
            "milestones": [4],
        },
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=4),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, 8),
            ],
            milestones=[4],
        ),
    ),
]


def _torch_lrs(make: Any, steps: int) -> list[list[float]]:
    """The lr each group stepped with, step by step, in a torch loop: optimizer.step(), then scheduler.step()."""
    w, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    groups: list[dict[str, Any]] = [{"params": [w]}, {"params": [b], "lr": 0.05}]
    optimizer = torch.optim.RMSprop(groups, lr=0.1, momentum=0.5)
    scheduler = make(optimizer)
    used = []
    for _ in range(steps):
        used.append([group["lr"] for group in optimizer.param_groups])
        w.grad, b.grad = torch.ones(2), torch.ones(1)
        optimizer.step()
        scheduler.step()
    return used


def _create(client: TestClient, config: dict[str, Any]) -> Any:
    return create_session(
        client,
        {
            "optimizer": "rmsprop",
            "params": {"w": [0.0, 0.0], "b": [0.0]},
            "hyperparameters": {"lr": 0.1, "momentum": 0.5},
            "param_groups": [{"params": ["w"]}, {"params": ["b"], "lr": 0.05}],
            "lr_scheduler": config,
        },
    )


@pytest.mark.parametrize(("config", "make"), SCHEDULES, ids=[config["name"] for config, _ in SCHEDULES])
def test_every_steps_lrs_are_torchs_exactly(client: TestClient, config: dict[str, Any], make: Any) -> None:
    created = _create(client, config)
    assert created.body["lr_scheduler"]["name"] == config["name"]
    used = [ok(step(client, created.id, {"w": [1.0, 1.0], "b": [1.0]}))["metrics"]["lr"] for _ in range(STEPS)]
    assert used == _torch_lrs(make, STEPS)


def test_a_checkpoint_continues_the_schedule_exactly(client: TestClient) -> None:
    config, make = SCHEDULES[3]
    created = _create(client, config)
    for _ in range(5):
        ok(step(client, created.id, {"w": [1.0, 1.0], "b": [1.0]}))
    snapshot = ok(client.get(f"/v1/sessions/{created.id}/checkpoint"))
    restored = create_session(client, snapshot)
    used = [ok(step(client, restored.id, {"w": [1.0, 1.0], "b": [1.0]}))["metrics"]["lr"] for _ in range(STEPS - 5)]
    assert used == _torch_lrs(make, STEPS)[5:]


def test_the_state_dict_is_torchs_and_loads_both_ways(client: TestClient) -> None:
    config, make = SCHEDULES[0]
    created = _create(client, config)
    for _ in range(4):
        ok(step(client, created.id, {"w": [1.0, 1.0], "b": [1.0]}))
    view = ok(client.get(f"/v1/sessions/{created.id}/lr_scheduler"))
    assert view["config"]["name"] == "StepLR"
    w = torch.nn.Parameter(torch.zeros(2))
    groups: list[dict[str, Any]] = [{"params": [w]}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.05}]
    optimizer = torch.optim.RMSprop(groups, lr=0.1, momentum=0.5)
    scheduler = make(optimizer)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert view["state_dict"] == scheduler.state_dict()
    assert view["last_lr"] == scheduler.get_last_lr()
    scheduler.step()
    # torch's state, one step further, loaded into the session: the schedule goes on from there.
    put = send(client, "PUT", f"/v1/sessions/{created.id}/lr_scheduler", {"state_dict": scheduler.state_dict()})
    ok(put)
    assert ok(client.get(f"/v1/sessions/{created.id}/lr_scheduler"))["state_dict"] == scheduler.state_dict()


def test_patch_starts_a_schedule_on_the_current_lrs_and_null_removes_it(client: TestClient) -> None:
    created = create_session(client, {"optimizer": "rprop", "params": {"w": [1.0]}, "hyperparameters": {"lr": 0.2}})
    assert created.body["lr_scheduler"] is None
    patched = ok(
        send(client, "PATCH", f"/v1/sessions/{created.id}", {"lr_scheduler": {"name": "ExponentialLR", "gamma": 0.5}})
    )
    assert patched["lr_scheduler"]["name"] == "ExponentialLR"
    lrs = [ok(step(client, created.id, {"w": [1.0]}))["metrics"]["lr"][0] for _ in range(3)]
    assert lrs == [0.2, 0.1, 0.05]
    patched = ok(send(client, "PATCH", f"/v1/sessions/{created.id}", {"lr_scheduler": None}))
    assert patched["lr_scheduler"] is None
    assert [ok(step(client, created.id, {"w": [1.0]}))["metrics"]["lr"][0] for _ in range(2)] == [0.025, 0.025]


@pytest.mark.parametrize(
    ("config", "loc"),
    [
        ({"name": "CosineAnnealingLR", "T_max": 0}, ["body", "lr_scheduler", "T_max"]),
        ({"name": "StepLR", "step_size": 2, "gamma": -1}, ["body", "lr_scheduler", "gamma"]),
        ({"name": "StepLR", "step_size": 2, "gama": 0.1}, ["body", "lr_scheduler", "gama"]),
        ({"name": "NoSuchLR"}, ["body", "lr_scheduler", "name"]),
        (
            {"name": "SequentialLR", "schedulers": [{"name": "StepLR", "step_size": 0}], "milestones": []},
            ["body", "lr_scheduler", "schedulers", 0, "step_size"],
        ),
    ],
)
def test_bad_arguments_are_refused_naming_them_and_change_nothing(
    client: TestClient, config: dict[str, Any], loc: list[Any]
) -> None:
    body = {"optimizer": "rprop", "params": {"w": [1.0]}, "lr_scheduler": config}
    assert_problem(send(client, "POST", "/v1/sessions", body), 422, loc)
    created = create_session(client, {"optimizer": "rprop", "params": {"w": [1.0]}})
    assert_problem(send(client, "PATCH", f"/v1/sessions/{created.id}", {"lr_scheduler": config}), 422, loc)
    assert ok(client.get(f"/v1/sessions/{created.id}"))["lr_scheduler"] is None
    assert np.isclose(ok(client.get(f"/v1/sessions/{created.id}"))["param_groups"][0]["lr"], 0.01)


def test_a_state_dict_of_another_number_of_groups_is_refused(client: TestClient) -> None:
    config, _ = SCHEDULES[0]
    created = _create(client, config)
    view = ok(client.get(f"/v1/sessions/{created.id}/lr_scheduler"))
    three = {**view["state_dict"], "base_lrs": [0.1, 0.05, 0.01], "_last_lr": [0.1, 0.05, 0.01]}
    response = send(client, "PUT", f"/v1/sessions/{created.id}/lr_scheduler", {"state_dict": three})
    assert_problem(response, 422, ["body", "state_dict"])
    assert ok(step(client, created.id, {"w": [1.0, 1.0], "b": [1.0]}))["step"] == 1


def test_a_whole_number_past_two_to_the_53_is_refused_not_stored(client: TestClient) -> None:
    body = {"optimizer": "rprop", "params": {"w": [1.0]}, "lr_scheduler": {"name": "StepLR", "step_size": 10**30}}
    assert_problem(send(client, "POST", "/v1/sessions", body), 422, ["body", "lr_scheduler", "step_size"])
    assert ok(client.get("/v1/sessions"))["items"] is not None
