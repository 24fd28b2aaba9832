"""Three server replicas on one PostgreSQL database serve one synchronous session as one server would.

Four workers send each contribution to a replica chosen round-robin by round and worker, so every
round gathers contributions from several replicas; a contribution that waits on one replica is told
of its round's close made on another. One replica is SIGKILLed while a worker waits on it in an open
round: the worker sends the same request (same Idempotency-Key, same bytes) to another replica, which
recognises it. The session ends where one process stepping with each round's weighted mean would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
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
    WorkerSpec,
    create_session,
    params_of,
    session_document,
    wait_for_contributions,
)
from tests.e2e.server_process import ServerProcess

REPLICAS = 3
ROUNDS = 20
DTYPE = "float32"
KILLED_DURING = 10
VICTIM = 1
GATED = "rank2"
"""Index 3: in round 10 its requests go first to replica (10 + 3) % 3 == 1, the victim; so do rank7's (index 0)."""
ROUND_WAIT_SECONDS = 1


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    env = {"OPTIM_ROUND_WAIT_SECONDS": str(ROUND_WAIT_SECONDS)}
    servers = [
        ServerProcess(postgres_url, log_dir=tmp_path, env=env, name=f"replica{index}") for index in range(REPLICAS)
    ]
    try:
        starting = [threading.Thread(target=server.start) for server in servers]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        for server in servers:
            assert server.running, f"{server} did not start:\n{server.log_tail()}"
        yield servers
    finally:
        for server in servers:
            server.close()


def test_replicas_on_one_database_aggregate_rounds_across_them_and_lose_nothing_when_one_is_killed(
    replicas: list[ServerProcess], tmp_path: Path
) -> None:
    initial = initial_params(DTYPE)
    urls = [server.base_url for server in replicas]
    session = create_session(urls[0], optimizer="rprop", params=initial, aggregation={"mode": "sync", "workers": 4})
    gate = tmp_path / "round-10-may-close"
    specs = tuple(
        WorkerSpec(
            spec.name,
            spec.batch_size,
            spec.transport,
            {"gate_round": KILLED_DURING, "gate_file": str(gate)} if spec.name == GATED else {},
        )
        for spec in FOUR_WORKERS
    )
    survivor = replicas[0].base_url

    with Team(tmp_path / "run", base_urls=urls, session=session, specs=specs, mode="sync", steps=ROUNDS) as team:
        team.start()
        wait_for_contributions(survivor, session, KILLED_DURING, 3)
        replicas[VICTIM].kill()  # rank7's contribution waits on it
        gate.touch()
        team.wait()
        journals = team.journals()
        failovers = {
            name: json.loads((worker.journal.directory / "done").read_text())["failovers"]
            for name, worker in team.workers.items()
        }

    assert failovers["rank7"] > 0, f"no request of rank7 went to another replica: {failovers}"
    assert failovers[GATED] > 0, f"no request of {GATED} went to another replica: {failovers}"
    assert refused(journals) == []
    rounds = accepted_by_round(journals)
    assert sorted(rounds) == list(range(ROUNDS))
    for round_number, entries in rounds.items():
        assert sorted(entry.sent.worker for entry in entries) == sorted(spec.name for spec in FOUR_WORKERS)
        assert_round_answered_alike(round_number, entries)
    replay = Replay("rprop", HYPERPARAMETERS["rprop"], initial, DTYPE)
    replay_rounds(replay, rounds, initial)

    for server in replicas:
        if server.running:
            assert session_document(server.base_url, session)["step"] == ROUNDS
            final = session_document(server.base_url, session, "/params")
            params = params_of(final, DTYPE)
            replay.assert_holds(params, f"GET params from {server.base_url}")
