"""Crashes leak no storage: after SIGKILLs in the middle of creates, steps and deletes, a restarted server
holds slot files only for the sessions whose rows name them, and Idempotency-Key records only of live sessions.

Each round, writer threads create sessions (large enough for slot files), step them with
Idempotency-Keys and delete some, while the server is killed at a random moment. The
restarted server sweeps what a crash left behind; the test then reads the database and
the slot-file directory directly.
"""

import random
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

from tests.e2e.server_process import ServerProcess, json_body, sqlite_url

ROUNDS = 4
WRITERS = 6
PARAMS = 20_000
JSON = {"Content-Type": "application/json"}


def workload(server: ServerProcess, stop: threading.Event, seed: int) -> None:
    """Create, step and delete sessions until ``stop``; any answer, or none, is fine: the server gets killed."""
    rng = np.random.default_rng(seed)
    try:
        with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
            while not stop.is_set():
                body = {"optimizer": "rprop", "params": {"w": rng.standard_normal(PARAMS).astype(np.float32)}}
                created = client.post("/v1/sessions", content=json_body(body), headers=JSON)
                if created.status_code != 201:
                    continue
                session = created.json()["id"]
                for _ in range(int(rng.integers(1, 4))):
                    grads = {"grads": {"w": rng.standard_normal(PARAMS).astype(np.float32)}}
                    client.post(
                        f"/v1/sessions/{session}/step",
                        content=json_body(grads),
                        headers={**JSON, "Idempotency-Key": uuid.uuid4().hex},
                    )
                if rng.random() < 0.5:
                    client.delete(f"/v1/sessions/{session}")
    except httpx.HTTPError:
        pass  # the server was killed


def test_after_kills_in_the_middle_of_writes_no_slot_file_or_record_outlives_its_session(tmp_path: Path) -> None:
    database = tmp_path / "optim.sqlite3"
    env = {"OPTIM_ARRAY_FILES_MIN_BYTES": "0"}
    server = ServerProcess(sqlite_url(database), log_dir=tmp_path, env=env)
    rng = random.Random(11)
    try:
        for round_number in range(ROUNDS):
            server.start()
            stop = threading.Event()
            writers = [
                threading.Thread(target=workload, args=(server, stop, round_number * WRITERS + writer))
                for writer in range(WRITERS)
            ]
            for writer in writers:
                writer.start()
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()
            stop.set()
            for writer in writers:
                writer.join(30)
        server.start()  # the sweep runs as it starts
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
    finally:
        server.close()

    engine = sa.create_engine(sqlite_url(database))
    try:
        with engine.connect() as connection:
            slots: dict[str, int | None] = {
                row.id: row.arrays_slot for row in connection.execute(sa.text("SELECT id, arrays_slot FROM sessions"))
            }
            orphans = connection.execute(
                sa.text("SELECT count(*) FROM idempotency_records WHERE session_id NOT IN (SELECT id FROM sessions)")
            ).scalar_one()
    finally:
        engine.dispose()
    files = {path.name for path in (tmp_path / "optim.sqlite3-arrays").iterdir()}
    assert slots, "no session survived: the rounds did too little to test anything"
    assert orphans == 0, f"{orphans} Idempotency-Key records of deleted sessions"
    owners = {name.rsplit(".", 1)[0] for name in files}
    assert owners <= {session for session, slot in slots.items() if slot is not None}, (
        f"slot files of sessions without a row that names a slot: {sorted(owners - set(slots))}"
    )
    for session, slot in slots.items():
        if slot is not None:
            assert f"{session}.{slot}" in files, f"session {session}'s row names slot {slot}, which is missing"
