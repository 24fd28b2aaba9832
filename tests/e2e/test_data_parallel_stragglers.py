"""A straggler: with ``min_workers=3`` and ``timeout_s=2``, a round that one of four workers is late for
closes with the other three once the timeout has passed; the straggler's late contribution is
refused (409 ``round-moved-on``, naming the session's step), and it fetches the params and carries
on. The session holds what one process stepping with each round's weighted mean would, that round's
being the mean of three.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the workers compute their gradients with torch, and the replay is torch.optim")

from tests.e2e.data_parallel.checks import (
    accepted_by_round,
    assert_moved_on,
    assert_round_answered_alike,
    refused,
    replay_rounds,
)
from tests.e2e.data_parallel.model import initial_params
from tests.e2e.data_parallel.replay import Replay
from tests.e2e.data_parallel.runs import (
    FOUR_WORKERS,
    HYPERPARAMETERS,
    Team,
    WorkerSpec,
    create_session,
    params_of,
    session_document,
)
from tests.e2e.server_process import ServerFactory

ROUNDS = 8
DTYPE = "float32"
TIMEOUT_S = 2
STRAGGLER, LATE_FOR = "rank7", 3
MIN_WORKERS = 3
AGGREGATION = {"mode": "sync", "workers": 4, "min_workers": MIN_WORKERS, "timeout_s": TIMEOUT_S}


def test_a_round_closes_without_a_straggler_after_its_timeout_and_the_straggler_is_refused_and_resyncs(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory()
    initial = initial_params(DTYPE)
    session = create_session(server.base_url, optimizer="rmsprop", params=initial, aggregation=AGGREGATION)
    specs = tuple(
        WorkerSpec(
            spec.name, spec.batch_size, spec.transport, {"straggle_at": LATE_FOR} if spec.name == STRAGGLER else {}
        )
        for spec in FOUR_WORKERS
    )

    with Team(
        tmp_path / "run", base_urls=[server.base_url], session=session, specs=specs, mode="sync", steps=ROUNDS
    ) as team:
        team.start()
        team.wait()
        journals = team.journals()

    late = [
        entry for entry in refused(journals) if (entry.sent.worker, entry.sent.based_on_step) == (STRAGGLER, LATE_FOR)
    ]
    assert len(late) == 1, f"the straggler's contribution to round {LATE_FOR} was not refused"
    for entry in refused(journals):  # the straggler's; on a loaded machine, perhaps another that was slow
        assert assert_moved_on(entry) > entry.sent.based_on_step
    rounds = accepted_by_round(journals)
    assert sorted(rounds) == list(range(ROUNDS))
    late_round = rounds[LATE_FOR]
    assert STRAGGLER not in [entry.sent.worker for entry in late_round]
    assert len(late_round) == 3
    metrics = late_round[0].answer.metrics if late_round[0].answer else None
    assert metrics is not None
    assert metrics["round"]["contributors"] == 3
    assert metrics["round"]["wait_s"] >= TIMEOUT_S, "the round closed before its timeout without all its workers"
    assert any(entry.sent.based_on_step > LATE_FOR for entry in journals[STRAGGLER] if entry.accepted), (
        "the straggler never contributed again"
    )
    for round_number, entries in rounds.items():
        assert len(entries) >= MIN_WORKERS, f"round {round_number} closed with {len(entries)}"
        assert_round_answered_alike(round_number, entries)
    replay = Replay("rmsprop", HYPERPARAMETERS["rmsprop"], initial, DTYPE)
    replay_rounds(replay, rounds, initial)

    assert session_document(server.base_url, session)["step"] == ROUNDS
    final = session_document(server.base_url, session, "/params")
    replay.assert_holds(params_of(final, DTYPE), "GET params")
