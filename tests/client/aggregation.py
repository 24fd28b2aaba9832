"""What the data-parallel client tests share: a server whose rounds answer 202 soon, workers, and the reduction.

The server is a real process, one per test module and database engine, with ``OPTIM_ROUND_WAIT_SECONDS``
short, so that a contribution whose round stays open is answered ``202 Accepted`` within a second. With
``OPTIM_CLIENT_TEST_URL`` set, the server running there is used instead, as by the other client tests (its
rounds answer 202 after its own wait, 20 s by default).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from optim_client import Client, RemoteRprop
from optim_client.transports import Transport
from tests.client.conftest import FAST_RETRY, Server
from tests.client.reference import RPROP
from tests.databases import fresh_database
from tests.e2e.server_process import ServerProcess

ROUND_WAIT_SECONDS = "1"
WAIT_SECONDS = 120.0
"""How long a test waits for something a server does in well under a second."""

Grads = dict[str, np.ndarray]


@pytest.fixture(scope="module", name="round_server")
def round_server_fixture(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    external = os.environ.get("OPTIM_CLIENT_TEST_URL")
    if external:
        if engine != "sqlite":
            pytest.skip("OPTIM_CLIENT_TEST_URL names one server, whatever its database: the tests run once")
        yield Server(external.rstrip("/"))
        return
    directory = tmp_path_factory.mktemp("rounds")
    env = {"OPTIM_ROUND_WAIT_SECONDS": ROUND_WAIT_SECONDS}
    with fresh_database(engine, directory) as url, ServerProcess(url, log_dir=directory, env=env) as server:
        yield Server(server.base_url)


def connect(server: Server | str, transport: Transport, **options: Any) -> Client:
    """A client of its own, as each worker process has (a URL: through a proxy)."""
    url = server if isinstance(server, str) else server.base_url
    return Client(url, transport=transport, retry=options.pop("retry", FAST_RETRY), **options)


def aggregating_optimizer(client: Client, model: torch.nn.Module, **aggregation: Any) -> RemoteRprop:
    """A session over ``model``'s params that aggregates as ``aggregation`` says, by the optimizer that made it."""
    return RemoteRprop(model.named_parameters(), client=client, aggregation=aggregation, **RPROP)


def backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Grads:
    """Fill the params' ``.grad`` with the gradient of the MSE on (x, y); a copy of it."""
    for param in model.parameters():
        param.grad = None
    torch.nn.functional.mse_loss(model(x), y).backward()
    return {name: param.grad.numpy().copy() for name, param in model.named_parameters() if param.grad is not None}


def model_params(model: torch.nn.Module) -> Grads:
    return {name: param.detach().numpy().copy() for name, param in model.named_parameters()}


def service_params(server: Server, session_id: str) -> tuple[int, Grads]:
    """The session's step and params, read over plain HTTP (JSON), without the SDK; float32, as the session's."""
    answer = httpx.get(f"{server.base_url}/v1/sessions/{session_id}/params", timeout=30.0).json()
    return answer["step"], {name: np.asarray(value, dtype=np.float32) for name, value in answer["params"].items()}


def service_step(server: Server, session_id: str) -> int:
    step: int = httpx.get(f"{server.base_url}/v1/sessions/{session_id}", timeout=30.0).json()["step"]
    return step


def documented_mean(contributions: Mapping[str, tuple[float, Grads]]) -> Grads:
    """The round's gradient as docs/api.md defines it: per param, in float64, the weighted gradients added one at
    a time in ascending order of worker, divided by the total weight, cast to float32."""
    names = {name for _, grads in contributions.values() for name in grads}
    mean = {}
    for name in names:
        total: np.ndarray = np.zeros((), dtype=np.float64)
        total_weight = 0.0
        for worker in sorted(contributions):
            weight, grads = contributions[worker]
            if name in grads:
                total = total + np.float64(weight) * grads[name].astype(np.float64)
                total_weight += float(weight)
        mean[name] = np.asarray(total / total_weight).astype(np.float32)
    return mean


def torch_replay(model: torch.nn.Module, rounds: Sequence[Grads]) -> Grads:
    """``model``'s params after torch.optim.Rprop (the sessions' hyperparameters) steps on each round's gradient."""
    optimizer = torch.optim.Rprop(model.parameters(), **RPROP)
    for grads in rounds:
        for name, param in model.named_parameters():
            param.grad = torch.from_numpy(grads[name]) if name in grads else None
        optimizer.step()
    return model_params(model)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_SECONDS:g} s: {what}")
        time.sleep(0.01)


def finished(thread_and_outcome: tuple[Any, list[Any]]) -> Any:
    """What a call ``in_a_thread`` returned (its exception raised here)."""
    thread, outcome = thread_and_outcome
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive(), f"the call did not return within {WAIT_SECONDS:g} s"
    [result] = outcome
    if isinstance(result, BaseException):
        raise result
    return result
