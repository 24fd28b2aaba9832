"""RemoteRMSprop and RemoteRprop over a dict of numpy arrays: updated in place, no torch needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from optim_client import Client, RemoteRMSprop, RemoteRprop
from tests.client.conftest import REPO_ROOT, Server
from tests.client.reference import RMSPROP, assert_same_bits, assert_same_state, core_optimizer, grads_sequence


def test_the_arrays_are_updated_in_place_with_optim_cores_numbers(client: Client) -> None:
    params = {"x": np.array(5.0), "y": np.array([5.0, -1.0])}
    reference = core_optimizer("rmsprop", params, RMSPROP)
    optimizer = RemoteRMSprop(params, client=client, **RMSPROP)
    assert optimizer.session.dtype == np.float64
    arrays = dict(params)
    for step in range(4):
        grads = {"x": 2 * params["x"], "y": 20 * params["y"]} if step != 2 else {"y": 20 * params["y"]}
        optimizer.step(grads=grads)
        reference.step(grads)
        assert_same_bits(params, reference.params, f"step {step + 1}")
    assert all(params[name] is arrays[name] for name in params)
    assert_same_state(optimizer.state_dict(), reference.state_dict())


def test_a_numpy_state_dict_has_torchs_layout_with_arrays(client: Client) -> None:
    params = {"w": np.zeros((2, 2), np.float32)}
    optimizer = RemoteRprop(params, client=client)
    optimizer.step(grads={"w": np.ones((2, 2), np.float32)})
    state_dict = optimizer.state_dict()
    assert list(state_dict["state"]) == [0]
    assert isinstance(state_dict["state"][0]["prev"], np.ndarray)
    assert state_dict["state"][0]["step"] == 1.0
    fresh = RemoteRprop({"w": params["w"].copy()}, client=client)
    fresh.load_state_dict(state_dict)
    [grads] = grads_sequence(1, "float32", seed=3)
    optimizer.step(grads={"w": grads["w"][:2, :2]})
    fresh.step(grads={"w": grads["w"][:2, :2]})
    assert_same_bits(fresh.session.params(), optimizer.session.params())


def test_numpy_params_need_their_grads_passed_to_step(client: Client) -> None:
    optimizer = RemoteRprop({"w": np.zeros(2)}, client=client)
    with pytest.raises(TypeError, match="pass them"):
        optimizer.step()


def test_params_are_checked_before_anything_is_sent(client: Client) -> None:
    with pytest.raises(ValueError, match="empty parameter list"):
        RemoteRprop([], client=client)
    with pytest.raises(ValueError, match="read-only"):
        RemoteRprop({"w": np.broadcast_to(np.zeros(1), (2,))}, client=client)
    with pytest.raises(ValueError, match="one dtype"):
        RemoteRprop({"a": np.zeros(2, np.float32), "b": np.zeros(2)}, client=client)
    with pytest.raises(ValueError, match="int64"):
        RemoteRprop({"a": np.zeros(2, np.int64)}, client=client)
    with pytest.raises(TypeError, match="torch tensors or numpy arrays"):
        RemoteRprop({"a": [1.0, 2.0]}, client=client)


def test_the_sdk_runs_without_torch(server: Server) -> None:
    script = textwrap.dedent(
        f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed here")
                return None

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from optim_client import Client, RemoteRMSprop, Session

        assert RemoteRMSprop.__mro__[-2].__name__ == "StandInOptimizer", RemoteRMSprop.__mro__
        for transport in ("binary", "json"):
            with Client({server.base_url!r}, transport=transport) as client:
                params = {{"x": np.array(5.0)}}
                optimizer = RemoteRMSprop(params, client=client, lr=0.1)
                optimizer.step(grads={{"x": 2 * params["x"]}})
                optimizer.param_groups[0]["initial_lr"] = 0.1  # what a scheduler adds, which stays here
                optimizer.param_groups[0]["lr"] = 0.05
                optimizer.step(grads={{"x": 2 * params["x"]}})
                assert optimizer.last_metrics["lr"] == [0.05], optimizer.last_metrics
                try:
                    optimizer.add_param_group({{"params": [np.zeros(1)]}})
                except ValueError:
                    pass
                else:
                    raise AssertionError("a param group was added")
                assert optimizer.state_dict()["param_groups"][0]["initial_lr"] == 0.1
                optimizer.load_state_dict(optimizer.state_dict())
                RemoteRMSprop.restore(client, optimizer.checkpoint())
                Session.create(client, optimizer="rprop", params={{"w": [1.0, 2.0]}}).step({{"w": [1.0, 1.0]}})
        assert "torch" not in sys.modules
        print("ok without torch")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ok without torch" in result.stdout
