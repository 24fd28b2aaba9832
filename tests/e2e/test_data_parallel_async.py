"""Asynchronous aggregation with ``max_staleness=1``: three workers contribute freely, each on the
params it last saw; every contribution is applied at once as its own step, or refused (409
``round-moved-on``) when staler than 1. The applied steps equal torch.optim stepped with the
accepted contributions in the order of the step numbers the server answered, each answer's
``staleness`` being ``step - 1 - based_on_step``.

Staleness is arranged, not left to chance: ``rank7`` holds a gradient computed on step 0 until the
session is two steps on (refused), and at the end, once the others are done, sends three
contributions computed on the same params (staleness 0 and 1, applied; then 2, refused). With
``"staleness_weighting": "inverse"`` the replay multiplies each gradient by 1/(1+staleness) in
float64 first; RMSprop, whose update follows the gradient's size, shows whether the server did.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the workers compute their gradients with torch, and the replay is torch.optim")

from tests.e2e.data_parallel.checks import assert_moved_on, replay_async_steps
from tests.e2e.data_parallel.model import initial_params
from tests.e2e.data_parallel.replay import Replay
from tests.e2e.data_parallel.runs import (
    HYPERPARAMETERS,
    Team,
    WorkerSpec,
    create_session,
    params_of,
    session_document,
)
from tests.e2e.server_process import ServerFactory

DTYPE = "float32"
MAX_STALENESS = 1
CONTRIBUTIONS = 8
"""Accepted contributions each worker makes while they all run."""
HOLDER = "rank7"
APPLIED_BY_ALL = 3 * CONTRIBUTIONS
SPECS = (
    WorkerSpec(HOLDER, 5, "json", {"hold_first": True, "tail_at": APPLIED_BY_ALL}),
    WorkerSpec("rank10", 8, "safetensors"),
    WorkerSpec("zeta", 13, "json"),
)


@pytest.mark.parametrize(
    ("optimizer", "weighting"), [("rprop", "none"), ("rmsprop", "inverse")], ids=["rprop-none", "rmsprop-inverse"]
)
def test_async_contributions_are_applied_in_the_order_of_their_steps_and_too_stale_ones_are_refused(
    server_factory: ServerFactory, tmp_path: Path, optimizer: str, weighting: str
) -> None:
    server = server_factory()
    initial = initial_params(DTYPE)
    aggregation = {"mode": "async", "max_staleness": MAX_STALENESS, "staleness_weighting": weighting}
    session = create_session(server.base_url, optimizer=optimizer, params=initial, aggregation=aggregation)

    team = Team(
        tmp_path / "run",
        base_urls=[server.base_url],
        session=session,
        specs=SPECS,
        mode="async",
        contributions=CONTRIBUTIONS,
        max_staleness=MAX_STALENESS,
    )
    with team:
        team.start()
        team.wait()
        journals = team.journals()

    held, *_ = journals[HOLDER]
    assert held.sent.based_on_step == 0
    assert assert_moved_on(held) > MAX_STALENESS
    *_, on_par, one_behind, two_behind = journals[HOLDER]
    tail_step = APPLIED_BY_ALL
    assert [entry.sent.based_on_step for entry in (on_par, one_behind, two_behind)] == [tail_step] * 3
    assert on_par.answer is not None
    assert (on_par.answer.step, on_par.answer.staleness) == (tail_step + 1, 0)
    assert one_behind.answer is not None
    assert (one_behind.answer.step, one_behind.answer.staleness) == (tail_step + 2, 1)
    assert assert_moved_on(two_behind) == tail_step + 2

    replay = Replay(optimizer, HYPERPARAMETERS[optimizer], initial, DTYPE)
    applied = replay_async_steps(replay, journals, max_staleness=MAX_STALENESS, inverse=weighting == "inverse")
    assert len(applied) == APPLIED_BY_ALL + 2

    assert session_document(server.base_url, session)["step"] == APPLIED_BY_ALL + 2
    final = session_document(server.base_url, session, "/params")
    replay.assert_holds(params_of(final, DTYPE), "GET params")
