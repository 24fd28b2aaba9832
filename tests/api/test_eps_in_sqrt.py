"""eps_in_sqrt over HTTP: a hyperparameter of RMSprop sessions beyond torch's, set at creation or by PATCH,
shown in the groups only when on; its math is tests/optim_core/test_eps_in_sqrt.py's."""

import numpy as np
from fastapi.testclient import TestClient

from tests.api.conftest import assert_problem, create_session, ok, send, step


def _steps(client: TestClient, session_id: str) -> np.ndarray:
    answer = None
    for _ in range(5):
        answer = ok(step(client, session_id, {"w": [0.001, -0.002]}))
    assert answer is not None
    return np.asarray(answer["params"]["w"])


def test_eps_inside_the_square_root_is_a_hyperparameter_of_rmsprop_sessions(client: TestClient) -> None:
    body = {"optimizer": "rmsprop", "dtype": "float64", "params": {"w": [1.0, 2.0]}}
    outside = create_session(client, {**body, "hyperparameters": {"eps": 0.01}})
    assert "eps_in_sqrt" not in outside.body["param_groups"][0]
    inside = create_session(client, {**body, "hyperparameters": {"eps": 0.01, "eps_in_sqrt": True}})
    assert inside.body["param_groups"][0]["eps_in_sqrt"] is True
    v = 0.0
    expected = np.array([1.0, 2.0])
    for _ in range(5):
        g = np.array([0.001, -0.002])
        v = 0.99 * v + 0.01 * g * g
        expected = expected - 0.01 * g / np.sqrt(v + 0.01)
    np.testing.assert_allclose(_steps(client, inside.id), expected, rtol=1e-12)
    assert not np.allclose(_steps(client, outside.id), expected, rtol=1e-6)
    patched = ok(send(client, "PATCH", f"/v1/sessions/{outside.id}", {"hyperparameters": {"eps_in_sqrt": True}}))
    assert patched["param_groups"][0]["eps_in_sqrt"] is True
    state_dict = ok(client.get(f"/v1/sessions/{inside.id}/state_dict"))
    assert state_dict["param_groups"][0]["eps_in_sqrt"] is True


def test_it_is_refused_where_it_means_nothing(client: TestClient) -> None:
    body = {"optimizer": "rprop", "params": {"w": [1.0]}, "hyperparameters": {"eps_in_sqrt": True}}
    assert_problem(send(client, "POST", "/v1/sessions", body), 422, ["body", "hyperparameters", "eps_in_sqrt"])
    body = {"optimizer": "rmsprop", "params": {"w": [1.0]}, "hyperparameters": {"eps_in_sqrt": "yes"}}
    assert_problem(send(client, "POST", "/v1/sessions", body), 422, ["body", "hyperparameters", "eps_in_sqrt"])
