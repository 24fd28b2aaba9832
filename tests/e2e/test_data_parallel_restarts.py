"""A worker SIGKILLed in the middle of a round, and started again, sends its contribution again as it
was (same Idempotency-Key, same bytes, saved before it was first sent) and carries on: the round
counts it once, whether it was still open or had closed, and the session ends where one process
stepping with each round's weighted mean would.

Two kills in one run: ``rank10`` kills itself as the answer to its contribution to round 3 arrives,
before reading it; the test kills ``zeta`` while it waits in round 8, which stays open until the
restarted ``zeta`` has sent again and been told the round is still open (202), because ``rank2``
waits for the test before it contributes to that round.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="the workers compute their gradients with torch, and the replay is torch.optim")

from tests.e2e.data_parallel.checks import accepted_by_round, assert_round_answered_alike, refused, replay_rounds
from tests.e2e.data_parallel.journal import Entry
from tests.e2e.data_parallel.model import initial_params
from tests.e2e.data_parallel.replay import Replay
from tests.e2e.data_parallel.runs import (
    FOUR_WORKERS,
    HYPERPARAMETERS,
    WORKER_TIMEOUT,
    Team,
    WorkerProcess,
    WorkerSpec,
    create_session,
    open_round_contributions,
    params_of,
    session_document,
    wait_for,
    wait_for_contributions,
)
from tests.e2e.server_process import ServerFactory

ROUNDS = 12
DTYPE = "float32"
SELF_KILLED, SELF_KILLED_AT = "rank10", 3
KILLED, KILLED_AT = "zeta", 8
GATED = "rank2"
ROUND_WAIT_SECONDS = 1
"""How long the server holds a contribution to an open round before answering 202 (OPTIM_ROUND_WAIT_SECONDS)."""


def pending_in_round(worker: WorkerProcess, round_number: int) -> Entry | None:
    pending = worker.journal.pending()
    return pending if pending is not None and pending.sent.based_on_step == round_number else None


def told_open_after_resending(worker: WorkerProcess, seq: int) -> bool:
    """Whether the worker, started again, resent contribution ``seq`` and was then answered 202 for it."""
    entries = {entry.sent.seq: entry for entry in worker.journal.entries()}
    events = entries[seq].events if seq in entries else []
    return "resent" in events and "202" in events[events.index("resent") :]


def test_workers_killed_mid_round_and_restarted_resend_their_contribution_and_nothing_is_applied_twice(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(env={"OPTIM_ROUND_WAIT_SECONDS": str(ROUND_WAIT_SECONDS)})
    initial = initial_params(DTYPE)
    session = create_session(
        server.base_url, optimizer="rprop", params=initial, aggregation={"mode": "sync", "workers": 4}
    )
    gate = tmp_path / "round-8-may-close"
    behaviour: dict[str, dict[str, Any]] = {
        SELF_KILLED: {"die_at_round": SELF_KILLED_AT},
        GATED: {"gate_round": KILLED_AT, "gate_file": str(gate)},
    }
    specs = tuple(
        WorkerSpec(spec.name, spec.batch_size, spec.transport, behaviour.get(spec.name, {})) for spec in FOUR_WORKERS
    )

    with Team(
        tmp_path / "run", base_urls=[server.base_url], session=session, specs=specs, mode="sync", steps=ROUNDS
    ) as team:
        team.start()

        self_killed = team.workers[SELF_KILLED]
        assert self_killed.wait(WORKER_TIMEOUT) == -signal.SIGKILL, self_killed.log_tail()
        assert (self_killed.journal.directory / f"died-at-{SELF_KILLED_AT}").exists()
        assert pending_in_round(self_killed, SELF_KILLED_AT) is not None
        self_killed.start()

        killed = team.workers[KILLED]
        wait_for(lambda: pending_in_round(killed, KILLED_AT) is not None, f"{KILLED} sending to round {KILLED_AT}")
        wait_for_contributions(server.base_url, session, KILLED_AT, 3)  # all but the gated worker's
        assert killed.kill() == -signal.SIGKILL
        pending = pending_in_round(killed, KILLED_AT)
        assert pending is not None
        killed.start()
        wait_for(lambda: told_open_after_resending(killed, pending.sent.seq), f"{KILLED} resending, told 202")
        assert open_round_contributions(server.base_url, session, KILLED_AT) == 3, (
            "the resent contribution counted twice"
        )
        gate.touch()

        team.wait()
        journals = team.journals()

    assert refused(journals) == []
    rounds = accepted_by_round(journals)
    assert sorted(rounds) == list(range(ROUNDS))
    for round_number, entries in rounds.items():
        assert sorted(entry.sent.worker for entry in entries) == sorted(spec.name for spec in FOUR_WORKERS)
        assert_round_answered_alike(round_number, entries)
    for name, round_number in ((SELF_KILLED, SELF_KILLED_AT), (KILLED, KILLED_AT)):
        [entry] = [entry for entry in journals[name] if entry.sent.based_on_step == round_number]
        assert "resent" in entry.events, f"{name} did not send its contribution to round {round_number} again"
    replay = Replay("rprop", HYPERPARAMETERS["rprop"], initial, DTYPE)
    replay_rounds(replay, rounds, initial)

    assert session_document(server.base_url, session)["step"] == ROUNDS
    final = session_document(server.base_url, session, "/params")
    replay.assert_holds(params_of(final, DTYPE), "GET params")
