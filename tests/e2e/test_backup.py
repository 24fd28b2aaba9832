"""``optim-service backup DESTINATION``: a consistent copy of a SQLite deployment, taken while it runs.

The backup runs as an operator runs it, ``python -m service backup`` in a process of its own,
against a service that is up. A copy is good when a new service started on it holds every
session exactly as the original did (checkpoints equal bit for bit, arrays read as safetensors)
and continues exactly as the original does. A backup taken while a session is being stepped is
one committed version of it: the params of the step it reports, and the optimizer state that
optim_core's replay of the gradients up to that step has.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.api.conftest import (
    arrays,
    assert_same_bits,
    assert_same_state_dict,
    checkpoint,
    core_optimizer,
    create_session,
    dumps,
    ok,
    same,
    send,
    service_client,
    step,
)
from tests.e2e.server_process import REPO_ROOT, ServerProcess

DTYPE = "float32"
SEED = 80_231
DATABASE = "optim.sqlite3"
LARGE_PARAMS = 8192
SMALL_PARAMS = 2
THRESHOLD = 16 << 10
"""Between the arrays of a small session (tens of bytes) and a large one's (32 KiB and more):
large sessions live in slot files, small ones in the row."""
RACING_PARAMS = 20_000
RACING_BACKUPS = 2
STEPS_BEFORE_BACKUP = 3
BACKUP_TIMEOUT = 60.0

BINARY = pytest.mark.parametrize("transport", ["binary"], indirect=True)
"""Arrays read back as safetensors, so that equal means equal bits."""


def sqlite_url(database: Path) -> str:
    return f"sqlite:///{database}"


def run_backup(destination: Path, *, database_url: str, via_env: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m service backup DESTINATION``, given the database by --database-url or OPTIM_DATABASE_URL."""
    env = {name: value for name, value in os.environ.items() if name != "OPTIM_DATABASE_URL"}
    command = [sys.executable, "-m", "service", "backup", str(destination)]
    if via_env:
        env["OPTIM_DATABASE_URL"] = database_url
    else:
        command += ["--database-url", database_url]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=BACKUP_TIMEOUT, check=False
    )


def backed_up(destination: Path, *, database_url: str) -> str:
    """Back up into ``destination``, asserting success; the copy's URL."""
    result = run_backup(destination, database_url=database_url)
    assert result.returncode == 0, f"backup failed ({result.returncode}): {result.stdout}{result.stderr}"
    return sqlite_url(destination / DATABASE)


def slots_named(database: Path) -> dict[str, int | None]:
    """Each session's ``arrays_slot`` as the database file holds it (None: arrays in the row)."""
    with sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True) as connection:
        return dict(connection.execute("SELECT id, arrays_slot FROM sessions").fetchall())


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path, with its bytes."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def body(optimizer: str, size: int, seed: int, **hyperparameters: Any) -> dict[str, Any]:
    rng = np.random.default_rng([SEED, seed])
    params = {"w": rng.standard_normal(size).astype(DTYPE), "b": rng.standard_normal(3).astype(DTYPE)}
    return {"optimizer": optimizer, "params": params, "dtype": DTYPE, "hyperparameters": hyperparameters}


def grads(size: int, seed: int, number: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([SEED, seed, number])
    return {"w": rng.standard_normal(size).astype(DTYPE), "b": rng.standard_normal(3).astype(DTYPE)}


def assert_same_params(actual: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    assert sorted(actual) == sorted(expected), where
    for name, value in arrays(actual, DTYPE).items():
        assert_same_bits(value, np.asarray(expected[name]), f"{where}, param {name!r}")


@BINARY
def test_a_backup_holds_every_session_bit_for_bit_in_the_row_or_its_slot_file_and_continues_as_the_original(
    tmp_path: Path, transport: str
) -> None:
    url = sqlite_url(tmp_path / "live" / DATABASE)
    destination = tmp_path / "backup" / "2026-01-01"
    sessions = {
        # seed: (body, steps); an odd and an even number of steps leave the large ones on different slots.
        1: (body("rprop", LARGE_PARAMS, 1), 3),
        2: (body("rmsprop", LARGE_PARAMS, 2, lr=0.01, momentum=0.9, centered=True), 2),
        3: (body("rprop", SMALL_PARAMS, 3), 5),
    }
    with service_client(url, array_files_min_bytes=THRESHOLD) as live:
        ids: dict[int, str] = {}
        for seed, (create, steps) in sessions.items():
            ids[seed] = create_session(live, create).id
            size = np.asarray(create["params"]["w"]).size
            for number in range(1, steps + 1):
                ok(step(live, ids[seed], grads(size, seed, number)))
        originals = {seed: checkpoint(live, session_id) for seed, session_id in ids.items()}

        result = run_backup(destination, database_url=url)

        assert result.returncode == 0, f"backup failed ({result.returncode}): {result.stdout}{result.stderr}"
        assert "3 sessions" in result.stdout, result.stdout
        assert "2 array files" in result.stdout, result.stdout
        live_files = tree(tmp_path / "live" / f"{DATABASE}-arrays")

    assert sorted(path.name for path in destination.iterdir()) == [DATABASE, f"{DATABASE}-arrays"]
    slots = slots_named(destination / DATABASE)
    assert slots == slots_named(tmp_path / "live" / DATABASE)
    assert slots[ids[3]] is None, "the small session's arrays should be in its row"
    assert {slots[ids[1]], slots[ids[2]]} == {0, 1}, f"the large sessions should use both slots: {slots}"
    copied = tree(destination / f"{DATABASE}-arrays")
    assert sorted(copied) == sorted(f"{session_id}.{slot}" for session_id, slot in slots.items() if slot is not None)
    assert len(live_files) == 4, "the live deployment should hold both slots of each large session"
    for name, content in copied.items():
        assert content == live_files[name], f"{name} differs from the live slot file it copies"

    copy_url = sqlite_url(destination / DATABASE)
    with (
        service_client(url, array_files_min_bytes=THRESHOLD) as live,
        service_client(copy_url, array_files_min_bytes=THRESHOLD) as copy,
    ):
        listed = ok(copy.get("/v1/sessions"))
        assert sorted(session["id"] for session in listed["items"]) == sorted(ids.values())
        for seed, session_id in ids.items():
            assert same(checkpoint(copy, session_id), originals[seed]), f"session {seed}'s checkpoint differs"
            create, steps = sessions[seed]
            size = np.asarray(create["params"]["w"]).size
            next_grads = grads(size, seed, steps + 1)
            from_live = ok(step(live, session_id, next_grads))
            from_copy = ok(step(copy, session_id, next_grads))
            assert from_copy["step"] == from_live["step"] == steps + 1
            assert_same_params(from_copy["params"], from_live["params"], f"session {seed}'s next step")


@BINARY
def test_a_backup_while_a_session_is_stepped_is_the_state_at_the_step_it_reports(
    tmp_path: Path, transport: str
) -> None:
    url = sqlite_url(tmp_path / "live" / DATABASE)
    create = body("rmsprop", RACING_PARAMS, 10, lr=0.01, momentum=0.9)
    answered: dict[int, dict[str, Any]] = {}
    latest = [0]  # the last step answered (max(answered) would race the thread's inserts)
    stop = threading.Event()
    failures: list[BaseException] = []
    overlaps: list[tuple[int, int]] = []

    with service_client(url) as live:
        session_id = create_session(live, create).id
        stepped_enough = threading.Event()

        def stepper() -> None:
            try:
                number = 0
                while not stop.is_set():
                    number += 1
                    stepped = ok(step(live, session_id, grads(RACING_PARAMS, 10, number)))
                    assert stepped["step"] == number
                    answered[number] = stepped["params"]
                    latest[0] = number
                    if number >= STEPS_BEFORE_BACKUP:
                        stepped_enough.set()
            except BaseException as error:
                failures.append(error)
                stepped_enough.set()

        thread = threading.Thread(target=stepper)
        thread.start()
        try:
            assert stepped_enough.wait(30)
            for index in range(RACING_BACKUPS):
                before = latest[0]
                backed_up(tmp_path / f"backup-{index}", database_url=url)
                overlaps.append((before, latest[0]))
        finally:
            stop.set()
            thread.join(30)
    assert not failures, f"the stepping thread failed: {failures[0]!r}"
    assert all(after > before for before, after in overlaps), f"no steps during a backup: {overlaps}"

    for index, (before, _) in enumerate(overlaps):
        with service_client(sqlite_url(tmp_path / f"backup-{index}" / DATABASE)) as copy:
            document = checkpoint(copy, session_id)
        number = document["step"]
        where = f"backup {index}, at step {number}"
        assert number >= before, f"{where}: older than a step answered before the backup began ({before})"
        assert_same_params(document["params"], answered[number], where)
        core = core_optimizer(create)
        for replayed in range(1, number + 1):
            core.step(grads(RACING_PARAMS, 10, replayed))
        assert_same_state_dict(document["state_dict"], core.state_dict(), DTYPE)


def test_a_destination_that_already_holds_a_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    live = tmp_path / "live"
    url = sqlite_url(live / DATABASE)
    destination = tmp_path / "backup"
    with service_client(url) as client:
        create_session(client, body("rprop", SMALL_PARAMS, 20))
    backed_up(destination, database_url=url)
    before = tree(destination)

    for occupied in (destination, live):
        result = run_backup(occupied, database_url=url)

        assert result.returncode != 0, result.stdout
        assert "already holds a database" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
    assert tree(destination) == before


def test_a_postgresql_database_is_refused_with_a_pointer_to_pg_dump(tmp_path: Path) -> None:
    destination = tmp_path / "backup"

    result = run_backup(destination, database_url="postgresql+psycopg://optim@127.0.0.1:1/optim", via_env=True)

    assert result.returncode != 0, result.stdout
    assert "pg_dump" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not destination.exists()


def test_a_database_that_does_not_exist_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / DATABASE
    destination = tmp_path / "backup"

    result = run_backup(destination, database_url=sqlite_url(missing), via_env=True)

    assert result.returncode != 0, result.stdout
    assert "no SQLite database" in result.stderr, result.stderr
    assert not missing.exists()
    assert not destination.exists()


def test_the_documented_restore_brings_back_the_backup_though_a_crash_left_a_newer_wal(tmp_path: Path) -> None:
    """docs/deployment.md's restore: with the server stopped, every ``optim.sqlite3*`` replaced by
    the backup's ``optim.sqlite3`` and ``optim.sqlite3-arrays/``, and no ``-wal`` or ``-shm`` left."""
    live = tmp_path / "live"
    url = sqlite_url(live / DATABASE)
    destination = tmp_path / "backup"
    json = {"Content-Type": "application/json"}
    server = ServerProcess(url, log_dir=tmp_path, env={"OPTIM_ARRAY_FILES_MIN_BYTES": str(THRESHOLD)}).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:

            def stepped(session_id: str, size: int, seed: int, number: int) -> None:
                body = dumps({"grads": grads(size, seed, number)})
                response = client.post(f"/v1/sessions/{session_id}/step", content=body, headers=json)
                assert response.status_code == 200, response.text[:2000]

            sizes = {1: LARGE_PARAMS, 2: SMALL_PARAMS}
            ids = {}
            for seed, size in sizes.items():
                response = client.post("/v1/sessions", content=dumps(body("rmsprop", size, seed)), headers=json)
                assert response.status_code == 201, response.text[:2000]
                ids[seed] = response.json()["id"]
                for number in (1, 2):
                    stepped(ids[seed], size, seed, number)
            backed_up_checkpoints = {seed: client.get(f"/v1/sessions/{ids[seed]}/checkpoint").json() for seed in ids}

            result = run_backup(destination, database_url=url)
            assert result.returncode == 0, f"backup failed ({result.returncode}): {result.stdout}{result.stderr}"

            for seed, size in sizes.items():
                for number in (3, 4, 5):
                    stepped(ids[seed], size, seed, number)
            response = client.post("/v1/sessions", content=dumps(body("rprop", SMALL_PARAMS, 3)), headers=json)
            assert response.status_code == 201, response.text[:2000]
            created_after = response.json()["id"]
        server.kill()
    finally:
        server.close()
    wal = live / f"{DATABASE}-wal"
    assert wal.exists(), "the crash should leave a WAL newer than the backup"
    assert wal.stat().st_size > 0, "the crash should leave a WAL newer than the backup"

    for path in live.glob(f"{DATABASE}*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    shutil.copy2(destination / DATABASE, live / DATABASE)
    shutil.copytree(destination / f"{DATABASE}-arrays", live / f"{DATABASE}-arrays")

    with service_client(url, array_files_min_bytes=THRESHOLD) as restored:
        for seed, session_id in ids.items():
            assert ok(restored.get(f"/v1/sessions/{session_id}/checkpoint")) == backed_up_checkpoints[seed]
            again = ok(
                send(restored, "POST", f"/v1/sessions/{session_id}/step", {"grads": grads(sizes[seed], seed, 3)})
            )
            assert again["step"] == 3
        assert restored.get(f"/v1/sessions/{created_after}").status_code == 404
