"""Step telemetry through the SDK, over both transports, against a real server: a step's loss goes with it,
``last_metrics`` is the answer's ``metrics``, ``metrics()`` reads the whole history page by page, and a
retried step keeps its loss and gets the first answer's metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from optim_client import Client, RemoteRMSprop, ServiceUnreachableError, Session
from tests.client.fault_proxy import FaultProxy
from tests.client.reference import RMSPROP, grads_sequence, initial_params
from tests.client.torch_models import batches, make_model

ATTEMPTS = 4
"""The attempts of the proxied client (conftest.py)."""


def total_norm(grads: Mapping[str, Any], dtype: str) -> float:
    """The L2 norm of every grad together, as sent (in the session's dtype), computed in float64."""
    sent = [np.asarray(value, dtype=dtype).astype(np.float64).ravel() for value in grads.values()]
    return float(np.linalg.norm(np.concatenate(sent)))


def as_kept(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A history item without what only the history has: what the step's answer said."""
    return {key: value for key, value in metrics.items() if key not in ("step", "time")}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_last_metrics_is_the_steps_metrics_and_its_grad_norm_is_the_norm_of_the_grads_sent(
    client: Client, dtype: str
) -> None:
    session = Session.create(
        client, optimizer="rmsprop", params=initial_params(dtype), hyperparameters=RMSPROP, dtype=dtype
    )
    assert session.last_metrics is None

    for grads in grads_sequence(3, dtype):
        session.step(grads)

        assert session.last_metrics is not None
        assert session.last_metrics["grad_norm"] == pytest.approx(total_norm(grads, dtype), rel=1e-12, abs=0.0)
        assert session.last_metrics["lr"] == [RMSPROP["lr"]]
        assert session.last_metrics["loss"] is None
        assert session.last_metrics == as_kept(session.metrics()[-1])


def test_a_torch_optimizers_last_metrics_measure_its_grads(client: Client) -> None:
    model = make_model(dtype=torch.float64)
    optimizer = RemoteRMSprop(model.named_parameters(), client=client, lr=0.01)
    assert optimizer.last_metrics is None
    [(x, y)] = batches(1, dtype=torch.float64)

    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    grads = {name: param.grad.numpy().copy() for name, param in model.named_parameters() if param.grad is not None}
    optimizer.step(loss=loss)

    assert optimizer.last_metrics is not None
    assert optimizer.last_metrics["grad_norm"] == pytest.approx(total_norm(grads, "float64"), rel=1e-12, abs=0.0)
    assert optimizer.last_metrics["loss"] == loss.item()
    assert [as_kept(item) for item in optimizer.metrics()] == [optimizer.last_metrics]


def test_a_loss_given_as_a_float_a_tensor_a_numpy_scalar_or_an_int_lands_in_the_history(client: Client) -> None:
    model = make_model()
    optimizer = RemoteRMSprop(model.named_parameters(), client=client, lr=0.01)
    tensor_losses: list[float] = []
    losses: list[object] = [0.25, "the tensor", np.float32(0.125), 3, None]
    for (x, y), loss in zip(batches(len(losses)), losses, strict=True):
        optimizer.zero_grad()
        computed = torch.nn.functional.mse_loss(model(x), y)
        computed.backward()
        if loss == "the tensor":
            loss = computed  # still attached to its graph, as a training loop holds it
            tensor_losses.append(computed.item())
        optimizer.step(loss=loss)

    history = optimizer.session.metrics()

    assert [item["step"] for item in history] == [1, 2, 3, 4, 5]
    assert [item["loss"] for item in history] == [0.25, tensor_losses[0], 0.125, 3.0, None]
    assert all(isinstance(item["time"], str) for item in history)


NOT_FINITE = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": -float("inf"),
    "numpy nan": np.float64("nan"),
    "tensor inf": torch.tensor(float("inf")),
    "10**400": 10**400,
}
REFUSED = "the service takes a finite loss only|too large for a float"


@pytest.mark.parametrize("loss", NOT_FINITE.values(), ids=NOT_FINITE.keys())
def test_a_loss_that_is_not_finite_raises_before_anything_is_sent(
    proxied_client: Client, proxy: FaultProxy, loss: object
) -> None:
    session = Session.create(proxied_client, optimizer="rmsprop", params=initial_params("float32"))
    optimizer = RemoteRMSprop({"x": np.zeros(2)}, client=proxied_client)
    [grads] = grads_sequence(1, "float32")

    with pytest.raises(ValueError, match=REFUSED):
        session.step(grads, loss=loss)
    with pytest.raises(ValueError, match=REFUSED):
        optimizer.step(grads={"x": np.ones(2)}, loss=loss)

    assert proxy.requests("POST", "/step") == []


@pytest.mark.parametrize(
    ("loss", "error", "says"),
    [
        (torch.ones(2), ValueError, "one element"),
        (np.ones(3), ValueError, "one element"),
        ("0.5", TypeError, "real number"),
        (True, TypeError, "real number"),
        (1j, TypeError, "real number"),
    ],
    ids=repr,
)
def test_a_loss_that_is_not_one_real_number_raises_before_anything_is_sent(
    proxied_client: Client, proxy: FaultProxy, loss: object, error: type[Exception], says: str
) -> None:
    session = Session.create(proxied_client, optimizer="rmsprop", params=initial_params("float32"))
    [grads] = grads_sequence(1, "float32")

    with pytest.raises(error, match=f"loss must .*{says}"):
        session.step(grads, loss=loss)

    assert proxy.requests("POST", "/step") == []


def test_metrics_follows_the_cursor_across_pages_to_the_end_or_to_limit(
    proxied_client: Client, proxy: FaultProxy
) -> None:
    session = Session.create(proxied_client, optimizer="rprop", params=initial_params("float64"))
    for index, grads in enumerate(grads_sequence(5, "float64")):
        session.step(grads, loss=float(index))

    everything = session.metrics(page_size=2)
    after_one = session.metrics(since=1, limit=3, page_size=2)

    assert [(item["step"], item["loss"]) for item in everything] == [(step, step - 1.0) for step in range(1, 6)]
    assert [item["step"] for item in after_one] == [2, 3, 4]
    assert [seen.path.split("?")[1] for seen in proxy.requests("GET", "/metrics")] == [
        "since=0&limit=2",
        "since=2&limit=2",
        "since=4&limit=2",
        "since=1&limit=2",
        "since=3&limit=1",
    ]
    assert session.metrics(limit=0) == []
    assert list(session.iter_metrics(4)) == everything[4:]


def test_a_step_whose_answer_was_lost_is_retried_with_its_loss_and_gets_the_first_answers_metrics(
    proxied_client: Client, proxy: FaultProxy
) -> None:
    session = Session.create(proxied_client, optimizer="rmsprop", params=initial_params("float32"))
    [grads] = grads_sequence(1, "float32")
    proxy.inject("POST", "/step", drop_response=True)

    session.step(grads, loss=0.5)

    first, retry = proxy.requests("POST", "/step")
    assert (first.headers["idempotency-key"], first.body) == (retry.headers["idempotency-key"], retry.body)
    [kept] = session.metrics()
    assert session.last_metrics is not None
    assert session.last_metrics["loss"] == 0.5
    assert session.last_metrics == as_kept(kept)


def test_a_torch_step_repeated_after_an_unknown_outcome_keeps_its_loss_and_is_applied_once(
    proxied_client: Client, proxy: FaultProxy
) -> None:
    model = make_model()
    optimizer = RemoteRMSprop(model.named_parameters(), client=proxied_client, lr=0.01)
    [(x, y)] = batches(1)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    proxy.inject("POST", "/step", drop_response=True, times=ATTEMPTS)
    with pytest.raises(ServiceUnreachableError):
        optimizer.step(loss=loss)

    optimizer.step(loss=loss)  # the same .grad and loss: the retry of the step that failed

    pending, *_, repeat = proxy.requests("POST", "/step")
    assert (pending.headers["idempotency-key"], pending.body) == (repeat.headers["idempotency-key"], repeat.body)
    [kept] = optimizer.metrics()
    assert optimizer.last_metrics is not None
    assert optimizer.last_metrics["loss"] == loss.item()
    assert optimizer.last_metrics == as_kept(kept)
