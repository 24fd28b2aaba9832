"""An acknowledged step's telemetry survives a crash: its row is written in the step's own transaction.

A client streams Rprop steps, each with its loss, to a real server process; the server is SIGKILLed after
a random 15-40 acknowledged steps (while the next is in flight) and restarted on the same database.
Then the history holds a row for every acknowledged step, equal to the metrics its answer carried, loss
included; and a row for the step that was in flight exactly when the session itself counts that step
(a step that was not committed left none). Steps after the restart go on appending. SQLite and
PostgreSQL.
"""

import contextlib
import random
import threading
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.server_process import ServerFactory, ServerProcess, json_body

SEED = 20_261_206
JSON_HEADERS = {"Content-Type": "application/json"}
KILL_AFTER_ACKS = (15, 40)
CRASHES = 2
MAX_STEPS = 5000
"""Far more than a stream sends before its kill; running out fails the test."""


def grads(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([SEED, step])
    return {"w": rng.standard_normal(64).astype(np.float32), "b": rng.standard_normal(8).astype(np.float32)}


def loss(step: int) -> float:
    return 1.0 / step + step * 1e-3


def steps_until_killed(server: ServerProcess, session_id: str, first: int, kill_after: int) -> list[dict[str, Any]]:
    """The answers to steps sent one after the other from `first + 1` on; the server is SIGKILLed once
    `kill_after` are in, while the next is in flight."""
    answers: list[dict[str, Any]] = []
    problems: list[str] = []
    enough = threading.Event()

    def send_steps() -> None:
        with contextlib.suppress(httpx.TransportError), httpx.Client(base_url=server.base_url, timeout=30.0) as client:
            for step in range(first + 1, first + MAX_STEPS + 1):
                content = json_body({"grads": grads(step), "loss": loss(step)})
                response = client.post(f"/v1/sessions/{session_id}/step", content=content, headers=JSON_HEADERS)
                if response.status_code != 200:
                    problems.append(f"step {step}: {response.status_code} {response.text[:1000]}")
                    break
                answers.append(response.json())
                if len(answers) == kill_after:
                    enough.set()
            else:
                problems.append(f"sent {MAX_STEPS} steps and was never cut off")
        enough.set()

    thread = threading.Thread(target=send_steps, name="metrics-stream", daemon=True)
    thread.start()
    try:
        assert enough.wait(60), "no acknowledgments within 60 s"
    finally:
        server.kill()
        thread.join(30)
    assert not thread.is_alive(), "the client did not notice the crash"
    assert not problems, problems
    assert len(answers) >= kill_after
    return answers


def history(client: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    """Every row, page after page."""
    items: list[dict[str, Any]] = []
    since = 0
    while True:
        response = client.get(f"/v1/sessions/{session_id}/metrics", params={"since": since, "limit": 7})
        assert response.status_code == 200, response.text[:2000]
        page = response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        since = page["next_cursor"]


def without_time(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "time"}


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"], indirect=True)
def test_every_acknowledged_steps_metrics_and_loss_survive_sigkill(server_factory: ServerFactory) -> None:
    server = server_factory()
    rng = random.Random(SEED)
    body = {"optimizer": "rprop", "params": {"w": np.zeros(64, np.float32), "b": np.ones(8, np.float32)}}
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.post("/v1/sessions", content=json_body(body), headers=JSON_HEADERS)
        assert response.status_code == 201, response.text[:2000]
        session_id = response.json()["id"]

    acknowledged: dict[int, dict[str, Any]] = {}
    stored = 0
    for crash in range(1, CRASHES + 1):
        for answer in steps_until_killed(server, session_id, stored, rng.randint(*KILL_AFTER_ACKS)):
            assert answer["metrics"]["loss"] == loss(answer["step"]), answer["metrics"]
            acknowledged[answer["step"]] = {"step": answer["step"], **answer["metrics"]}
        last_acked = max(acknowledged)

        server.start()
        with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
            stored = client.get(f"/v1/sessions/{session_id}").json()["step"]
            rows = history(client, session_id)
        where = f"crash {crash}: {last_acked} steps acknowledged, the session at step {stored}"
        assert stored in (last_acked, last_acked + 1), where
        assert [row["step"] for row in rows] == list(range(1, stored + 1)), where
        for row in rows:
            if row["step"] in acknowledged:
                assert without_time(row) == acknowledged[row["step"]], f"{where}: row {row['step']}"
            else:
                assert row["loss"] == loss(row["step"]), f"{where}: the step in flight's row {row}"

    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        for step in range(stored + 1, stored + 3):
            body_bytes = json_body({"grads": grads(step), "loss": loss(step)})
            response = client.post(f"/v1/sessions/{session_id}/step", content=body_bytes, headers=JSON_HEADERS)
            assert response.status_code == 200, response.text[:2000]
            acknowledged[step] = {"step": step, **response.json()["metrics"]}
        rows = history(client, session_id)
    assert [row["step"] for row in rows] == list(range(1, stored + 3))
    assert all(without_time(row) == acknowledged[row["step"]] for row in rows if row["step"] in acknowledged)
