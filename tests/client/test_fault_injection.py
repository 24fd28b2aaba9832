"""Exactly once: a step whose response is lost (the proxy forwards it to the server, which applies
it, then hangs up) is retried with the same Idempotency-Key and applied once."""

from __future__ import annotations

import httpx

from optim_client import Client, Session
from tests.client.fault_proxy import FaultProxy
from tests.client.reference import RMSPROP, assert_same_bits, core_optimizer, grads_sequence, initial_params


def test_a_step_whose_response_is_lost_is_retried_with_the_same_key_and_applied_exactly_once(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client, sleeps: list[float]
) -> None:
    params = initial_params("float32")
    session = Session.create(proxied_client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
    [grads] = grads_sequence(1, "float32")
    proxy.inject("POST", "/step", drop_response=True)

    got = session.step(grads)

    attempts = proxy.requests("POST", "/step")
    assert len(attempts) == 2, "the lost step was retried once"
    first, retry = attempts
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"]
    assert first.body == retry.body
    assert sleeps == [0.01]
    assert service.get(session.url).json()["step"] == 1, "the server applied the step once"
    assert session.step_count == 1
    reference = core_optimizer("rmsprop", params, RMSPROP)
    reference.step(grads)
    assert_same_bits(got, reference.params, "the retried step's answer")
    assert_same_bits(session.params(), reference.params, "the params the server holds")


def test_training_through_a_connection_that_drops_every_other_step_matches_an_undisturbed_run(
    proxied_client: Client, proxy: FaultProxy, service: httpx.Client
) -> None:
    params = initial_params("float64")
    session = Session.create(proxied_client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
    reference = core_optimizer("rmsprop", params, RMSPROP)
    sequence = grads_sequence(6, "float64")
    for index, grads in enumerate(sequence):
        if index % 2:
            proxy.inject("POST", "/step", drop_response=True)
        got = session.step(grads)
        reference.step(grads)
        assert_same_bits(got, reference.params, f"step {index + 1}")
    assert len(proxy.requests("POST", "/step")) == 9
    assert service.get(session.url).json()["step"] == 6
