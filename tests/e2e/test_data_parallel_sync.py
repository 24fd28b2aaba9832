"""Four worker processes train one model through one synchronous session, and the session holds
exactly what one process would: torch.optim stepped once per round with the round's weighted mean.

Each worker trains the MLP on its own shard, speaking HTTP itself (half of them JSON, half
safetensors), on a server of two processes: a round gathers contributions that arrive at either.
The workers' journals hold what each sent and was answered; the test replays them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the workers compute their gradients with torch, and the replay is torch.optim")

from tests.e2e.data_parallel.checks import accepted_by_round, assert_round_answered_alike, refused, replay_rounds
from tests.e2e.data_parallel.model import initial_params
from tests.e2e.data_parallel.replay import Replay
from tests.e2e.data_parallel.runs import (
    FOUR_WORKERS,
    HYPERPARAMETERS,
    Team,
    create_session,
    params_of,
    session_document,
)
from tests.e2e.server_process import ServerFactory

ROUNDS = 30


@pytest.mark.parametrize(
    ("optimizer", "dtype"),
    [("rprop", "float32"), ("rmsprop", "float32"), ("rmsprop", "float64")],
    ids=["rprop", "rmsprop", "rmsprop-float64"],
)
def test_four_workers_train_as_one_process_stepping_with_the_weighted_mean_of_each_round(
    server_factory: ServerFactory, tmp_path: Path, optimizer: str, dtype: str
) -> None:
    """In float64 the order of the reduction's additions shows in the bits (in float32 the cast hides it)."""
    server = server_factory(workers=2)
    initial = initial_params(dtype)
    session = create_session(
        server.base_url, optimizer=optimizer, params=initial, aggregation={"mode": "sync", "workers": 4}, dtype=dtype
    )

    team = Team(
        tmp_path / "run",
        base_urls=[server.base_url],
        session=session,
        specs=FOUR_WORKERS,
        mode="sync",
        dtype=dtype,
        steps=ROUNDS,
    )
    with team:
        team.start()
        team.wait()
        journals = team.journals()

    assert refused(journals) == []
    rounds = accepted_by_round(journals)
    assert sorted(rounds) == list(range(ROUNDS))
    for round_number, entries in rounds.items():
        assert sorted(entry.sent.worker for entry in entries) == sorted(spec.name for spec in FOUR_WORKERS)
        assert_round_answered_alike(round_number, entries)
    replay = Replay(optimizer, HYPERPARAMETERS[optimizer], initial, dtype)
    replay_rounds(replay, rounds, initial)

    assert session_document(server.base_url, session)["step"] == ROUNDS
    final = session_document(server.base_url, session, "/params")
    assert final["step"] == ROUNDS
    replay.assert_holds(params_of(final, dtype), "GET params")
