"""torch's recorded runs (tests/fixtures/golden) replayed through the HTTP API, over JSON and
over safetensors (conftest.py's `transport`).

The comparison rules are those of tests/optim_core/test_golden.py (reused, not copied): Rprop bit
for bit, RMSprop float64 within rtol 1e-12 / atol 1e-14, RMSprop float32 within 64 float32 unit
roundoffs of the largest magnitude each element has had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import create_session, get_state_dict, held, ok, step
from tests.fixtures.golden import all_cases, as_array, load_case
from tests.optim_core.test_golden import _TorchComparison, _where

pytestmark = pytest.mark.usefixtures("transport")


def _as_held(state_dict: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The state arrays as the values they parse to (np.asarray(value, dtype)): the contract lets
    a float32 server write a float32 value in any spelling that parses back to its bits (and a
    binary answer must hold tensors of the session's dtype)."""
    state = {
        index: {key: value if key == "step" else held(value, dtype).tolist() for key, value in entry.items()}
        for index, entry in state_dict["state"].items()
    }
    return {**state_dict, "state": state}


def _create_body(case: dict[str, Any]) -> dict[str, Any]:
    """The fixture's construction, as a POST /v1/sessions body."""
    return {
        "optimizer": case["optimizer"],
        "dtype": case["dtype"],
        "params": case["params"],
        "hyperparameters": case["hyperparameters"],
        "param_groups": case["param_groups"],
    }


@pytest.mark.parametrize("path", all_cases(), ids=lambda path: path.stem)
def test_replaying_torchs_gradients_over_http_gives_torchs_params_after_every_step_and_its_state_dict(
    module_client: TestClient, path: Path
) -> None:
    case = load_case(path)
    dtype = case["dtype"]
    created = create_session(module_client, _create_body(case))
    for name, value in created.body["params"].items():
        assert held(value, dtype).tobytes() == as_array(case["params"][name], dtype).tobytes(), name
    comparison = _TorchComparison(case)

    for step_index, recorded in enumerate(case["steps"]):
        result = ok(step(module_client, created.id, recorded["grads"]))

        assert result["step"] == step_index + 1
        assert sorted(result["params"]) == sorted(recorded["params"]), _where(case, step_index, "params")
        for name, expected in recorded["params"].items():
            where = _where(case, step_index, "params", name)
            ours = held(result["params"][name], dtype)
            comparison.assert_matches(ours, as_array(expected, dtype), ("params", name), where)
        # State arrays are compared after every step too, so that the float32 RMSprop bound sees
        # the same history of magnitudes as in test_golden.py.
        state_dict = _as_held(ok(get_state_dict(module_client, created.id)), dtype)
        comparison.assert_state_dict_matches(state_dict, recorded["state_dict"], step_index)

    summary = ok(module_client.get(created.url))
    assert summary["step"] == len(case["steps"])
