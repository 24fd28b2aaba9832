"""The step counter stops where torch's float32 counter stops: at 2**24, where adding one rounds back."""

import importlib.util
from typing import Literal

import numpy as np
import pytest

from optim_core import Adagrad, Adam
from optim_core.step_counts import next_step

LAST_EXACT = 2**24


def test_the_count_grows_by_one_up_to_2_to_the_24_and_then_stays() -> None:
    assert [next_step(step) for step in (0, 1, LAST_EXACT - 1)] == [1, 2, LAST_EXACT]
    assert next_step(LAST_EXACT) == LAST_EXACT


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("optimizer", ["Adam", "Adagrad"])
def test_a_state_at_2_to_the_24_steps_stays_there_and_steps_as_torch_does(
    optimizer: Literal["Adam", "Adagrad"],
) -> None:
    from tests.optim_core import torch_oracle

    params = {"w": np.array([0.5, -1.5])}
    grads = {"w": np.array([0.25, 0.75])}
    hyperparameters = {"lr": 0.1, "lr_decay": 1e-6} if optimizer == "Adagrad" else {"lr": 0.1, "betas": (0.5, 0.5)}
    ours = (Adagrad if optimizer == "Adagrad" else Adam)(dict(params), **hyperparameters)
    ours.step(grads)
    saved = ours.state_dict()
    saved["state"]["0"]["step"] = float(LAST_EXACT)
    ours.load_state_dict(saved)
    theirs = torch_oracle.build_torch_optimizer(
        optimizer, [{"params": {"w": ours.params["w"].copy()}}], hyperparameters
    )
    torch_oracle.load_json_state_dict_into_torch(theirs, saved)
    twin = torch_oracle.TorchTwin(theirs)
    for _ in range(2):
        ours.step(grads)
        twin.step(grads)
        twin.assert_agrees(ours)
    assert ours.state_dict()["state"]["0"]["step"] == float(LAST_EXACT)
