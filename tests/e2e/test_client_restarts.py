"""The SDK against a server that is killed and restarted: no step is ever applied twice.

With the default retries, a step sent while the server restarts simply succeeds, once.
"""

from __future__ import annotations

import time

from optim_client import Client, Session
from tests.client.reference import RMSPROP, assert_same_bits, core_optimizer, grads_sequence, initial_params
from tests.e2e.server_process import (
    ServerFactory,
    ServerProcess,
    # the server_factory fixture
    server_factory_fixture,  # noqa: F401
)
from tests.in_a_thread import in_a_thread

OUTAGE_SECONDS = 2.0


def restarted(server: ServerProcess) -> None:
    port = server.port
    server.start()
    assert server.port == port, "the server came back on another port; the client cannot follow"


def test_a_step_sent_while_the_server_restarts_succeeds_exactly_once_with_the_default_retries(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    params = initial_params("float32")
    first, second = grads_sequence(2, "float32")
    reference = core_optimizer("rmsprop", params, RMSPROP)
    with Client(server.base_url) as client:
        session = Session.create(client, optimizer="rmsprop", params=params, hyperparameters=RMSPROP)
        session.step(first)
        server.kill()

        worker, outcome = in_a_thread(lambda: session.step(second))
        time.sleep(OUTAGE_SECONDS)
        assert worker.is_alive(), f"the step gave up during the outage: {outcome}"
        restarted(server)
        worker.join(60)

        [got] = outcome
        assert not isinstance(got, Exception), got
        reference.step(first)
        reference.step(second)
        assert_same_bits(got, reference.params)
        assert session.refresh()["step"] == 2
