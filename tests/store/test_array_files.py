"""Slot files: on SQLite, a session's arrays of at least ``array_files_min_bytes`` live in
``<database file>-arrays/<session id>.0`` or ``.1`` (service/store/array_files.py).

The row names the slot holding the committed arrays, and a change writes the other slot before
the commit that points the row at it. So whatever a crash leaves in the slot the row does not
name changes nothing; deleted sessions, and sessions back in the row, leave no files once the
service has restarted; and a read that races a write never returns a mix of two states.

Each test builds its own services over a SQLite file under tmp_path (slot files are SQLite's
alone), talks to them over HTTP, and looks at the files and rows directly. The numbers are
always optim_core's, computed in-process from the same gradients.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from service.store.sql import READ_ATTEMPTS
from service.store.sqlite.array_files import ArrayFiles
from tests.api.conftest import (
    arrays,
    assert_same_bits,
    assert_same_param_bits,
    assert_same_state_dict,
    checkpoint,
    core_optimizer,
    create_session,
    get_params,
    get_state_dict,
    ok,
    put_state_dict,
    read_safetensors,
    send,
    service_client,
    step,
    to_json,
)

DTYPE = "float32"
SEED = 51_017
SHAPES: dict[str, tuple[int, ...]] = {"w": (3, 4), "b": (4,)}
EVERYTHING_IN_FILES = 0
NOTHING_IN_FILES = 1 << 30

# Rprop keeps no state until its first step, which adds two arrays the size of the params:
# a threshold between the two sizes moves a session into slot files on its first step.
GROWING_PARAMS = 1000
GROWING_THRESHOLD = 8 * GROWING_PARAMS

RACE_PARAMS = 100_000
RACE_STEPPERS = 3
RACE_STEPS_EACH = 8
RACE_READERS = 3
CONCURRENT_STEPPERS = 8
CONCURRENT_STEPS_EACH = 4


# The database, its rows and its slot files, seen from outside the service.


def sqlite_file(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optim.sqlite3'}"


def slot_directory(database_url: str) -> Path:
    database = Path(str(make_url(database_url).database))
    return database.with_name(f"{database.name}-arrays")


def slot_path(database_url: str, session_id: str, slot: int) -> Path:
    return slot_directory(database_url) / f"{session_id}.{slot}"


def files_beside(database_url: str) -> set[str]:
    """The names of everything in the slot directory."""
    return {path.name for path in slot_directory(database_url).iterdir()}


def both_slots(session_id: str) -> set[str]:
    return {f"{session_id}.0", f"{session_id}.1"}


def stored_row(database_url: str, session_id: str) -> sa.Row[Any] | None:
    """The session's row as the database holds it: step, version, the slot, and the inline arrays' size."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                sa.text(
                    "SELECT step, version, arrays_slot, length(arrays) AS arrays_bytes FROM sessions WHERE id = :id"
                ),
                {"id": session_id},
            ).first()
    finally:
        engine.dispose()


def committed_row(database_url: str, session_id: str) -> sa.Row[Any]:
    row = stored_row(database_url, session_id)
    assert row is not None, f"no row for session {session_id}"
    return row


def assert_slot_holds(path: Path, core: Any, where: str) -> None:
    """The slot file is a safetensors file of exactly ``core``'s params and state arrays (snapshot.py's names)."""
    tensors, _ = read_safetensors(path.read_bytes())
    expected = {f"params/{name}": value for name, value in core.params.items()}
    for index, entry in core.state_dict_arrays()["state"].items():
        expected.update({f"state/{index}/{key}": value for key, value in entry.items() if key != "step"})
    assert sorted(tensors) == sorted(expected), f"{where}: {path.name} holds {sorted(tensors)}"
    for name, value in expected.items():
        assert_same_bits(tensors[name], np.asarray(value), f"{where}: {path.name}, tensor {name!r}")


# Sessions and gradients.


def small_body(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng([SEED, seed])
    params = {name: to_json(rng.standard_normal(shape).astype(DTYPE)) for name, shape in SHAPES.items()}
    return {"optimizer": "rprop", "params": params, "dtype": DTYPE}


def small_grads(number: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The gradients of step ``number``, with sign changes between steps (Rprop's interesting case)."""
    rng = np.random.default_rng([SEED, seed, number])
    return {name: rng.standard_normal(shape).astype(DTYPE) for name, shape in SHAPES.items()}


def step_both(client: TestClient, session_id: str, core: Any, number: int, seed: int = 0) -> dict[str, Any]:
    """Step the session and its in-process twin with the same gradients; the response, checked against the twin."""
    grads = small_grads(number, seed)
    stepped: dict[str, Any] = ok(step(client, session_id, grads))
    core.step(grads)
    assert stepped["step"] == number, f"the response to step {number} says step {stepped['step']}"
    assert_same_param_bits(stepped["params"], core.params, DTYPE)
    return stepped


def params_digest(params: Mapping[str, Any]) -> str:
    """The params by name, dtype, shape and bits: equal digests, equal params."""
    digest = hashlib.sha256()
    for name in sorted(params):
        value = np.asarray(params[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape}:".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def replayed_digests(body: Mapping[str, Any], grads_by_step: Mapping[int, Mapping[str, np.ndarray]]) -> list[str]:
    """The digest of the params after each number of steps, 0 included, applying the grads in step order."""
    assert sorted(grads_by_step) == list(range(1, len(grads_by_step) + 1)), "the step numbers are not 1..n"
    core = core_optimizer(body)
    digests = [params_digest(core.params)]
    for number in range(1, len(grads_by_step) + 1):
        core.step(grads_by_step[number])
        digests.append(params_digest(core.params))
    return digests


def run_together(workers: list[Callable[[], None]]) -> None:
    """Run each worker in a thread of its own, all starting at once; the first exception is raised here."""
    barrier = threading.Barrier(len(workers))

    def run(work: Callable[[], None]) -> None:
        barrier.wait(30)
        work()

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        futures = [pool.submit(run, work) for work in workers]
        for future in futures:
            future.result(timeout=120)


# Placement.


def test_with_no_threshold_a_session_lives_in_slot_files_and_each_step_writes_the_slot_the_row_does_not_name(
    tmp_path: Path,
) -> None:
    url = sqlite_file(tmp_path)
    body = small_body()
    core = core_optimizer(body)
    with service_client(url, array_files_min_bytes=EVERYTHING_IN_FILES) as client:
        created = create_session(client, body)

        row = committed_row(url, created.id)
        assert (row.arrays_slot, row.arrays_bytes) == (0, 0), "a new session's arrays go to slot 0, none in the row"
        assert files_beside(url) == {f"{created.id}.0"}
        assert_slot_holds(slot_path(url, created.id, 0), core, "after create")
        previous = slot_path(url, created.id, 0).read_bytes()

        for number in range(1, 6):
            step_both(client, created.id, core, number)
            row = committed_row(url, created.id)
            slot = number % 2
            where = f"after step {number}"
            assert row.step == number, where
            assert row.arrays_slot == slot, f"{where}: the row names slot {row.arrays_slot}, expected {slot}"
            assert row.arrays_bytes == 0, f"{where}: {row.arrays_bytes} bytes of arrays in the row as well"
            assert files_beside(url) == both_slots(created.id), where
            assert_slot_holds(slot_path(url, created.id, slot), core, where)
            # The step wrote the other slot only: this one still holds the state before it.
            assert slot_path(url, created.id, 1 - slot).read_bytes() == previous, f"{where}: the old slot changed"
            previous = slot_path(url, created.id, slot).read_bytes()
            assert_same_param_bits(ok(get_params(client, created.id))["params"], core.params, DTYPE)

        assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), DTYPE)


def test_a_change_of_hyperparameters_alone_writes_no_slot_file(tmp_path: Path) -> None:
    url = sqlite_file(tmp_path)
    body = small_body()
    core = core_optimizer(body)
    with service_client(url, array_files_min_bytes=EVERYTHING_IN_FILES) as client:
        created = create_session(client, body)
        for number in (1, 2, 3):
            step_both(client, created.id, core, number)
        before = committed_row(url, created.id)
        slots = {slot: slot_path(url, created.id, slot).read_bytes() for slot in (0, 1)}
        assert slots[0] != slots[1]

        ok(send(client, "PATCH", created.url, {"hyperparameters": {"lr": 0.02}}))

        after = committed_row(url, created.id)
        assert after.version == before.version + 1
        assert after.arrays_slot == before.arrays_slot, "a PATCH moved the session to the other slot"
        assert {slot: slot_path(url, created.id, slot).read_bytes() for slot in (0, 1)} == slots
        assert_same_param_bits(ok(get_params(client, created.id))["params"], core.params, DTYPE)


def test_below_the_threshold_arrays_stay_in_the_row_and_no_slot_file_is_written(tmp_path: Path) -> None:
    url = sqlite_file(tmp_path)
    body = small_body()
    core = core_optimizer(body)
    with service_client(url, array_files_min_bytes=NOTHING_IN_FILES) as client:
        created = create_session(client, body)
        for number in (1, 2, 3):
            step_both(client, created.id, core, number)

            row = committed_row(url, created.id)
            assert row.arrays_slot is None, f"after step {number} the row names slot {row.arrays_slot}"
            assert row.arrays_bytes > 0
            assert files_beside(url) == set()

        assert_same_param_bits(ok(get_params(client, created.id))["params"], core.params, DTYPE)
        assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), DTYPE)


def test_a_session_that_grows_past_the_threshold_moves_to_slot_files_and_back_to_the_row_when_it_shrinks(
    tmp_path: Path,
) -> None:
    url = sqlite_file(tmp_path)
    rng = np.random.default_rng([SEED, 7])
    body = {"optimizer": "rprop", "params": {"w": to_json(rng.standard_normal(GROWING_PARAMS).astype(DTYPE))}}
    core = core_optimizer(body)

    def grads() -> dict[str, np.ndarray]:
        return {"w": rng.standard_normal(GROWING_PARAMS).astype(DTYPE)}

    def step_twin(number: int) -> None:
        gradient = grads()
        stepped = ok(step(client, created.id, gradient))
        core.step(gradient)
        assert stepped["step"] == number
        assert_same_param_bits(stepped["params"], core.params, DTYPE)

    with service_client(url, array_files_min_bytes=GROWING_THRESHOLD) as client:
        created = create_session(client, body)
        row = committed_row(url, created.id)
        assert row.arrays_slot is None, "params alone are below the threshold"
        assert 4 * GROWING_PARAMS < row.arrays_bytes < GROWING_THRESHOLD, row.arrays_bytes
        assert files_beside(url) == set()

        step_twin(1)  # Rprop's state appears: three arrays, above the threshold
        row = committed_row(url, created.id)
        assert (row.arrays_slot, row.arrays_bytes) == (0, 0), "the grown session did not move to slot 0"
        assert files_beside(url) == {f"{created.id}.0"}
        assert_slot_holds(slot_path(url, created.id, 0), core, "after step 1")

        step_twin(2)
        assert committed_row(url, created.id).arrays_slot == 1
        assert_slot_holds(slot_path(url, created.id, 1), core, "after step 2")
        assert_same_param_bits(ok(get_params(client, created.id))["params"], core.params, DTYPE)
        assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), DTYPE)

        # Loading a state_dict without state leaves the params alone: below the threshold again.
        emptied = {"state": {}, "param_groups": ok(get_state_dict(client, created.id))["param_groups"]}
        ok(put_state_dict(client, created.id, emptied))
        core.load_state_dict(emptied)
        row = committed_row(url, created.id)
        assert row.arrays_slot is None, f"the shrunk session still names slot {row.arrays_slot}"
        assert 0 < row.arrays_bytes < GROWING_THRESHOLD
        assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), DTYPE)

    with service_client(url, array_files_min_bytes=GROWING_THRESHOLD) as client:
        assert files_beside(url) == set(), "the files of a session back in the row outlived a restart"
        assert_same_param_bits(ok(get_params(client, created.id))["params"], core.params, DTYPE)

        step_twin(3)  # the state grows back: slot files again, from slot 0
        assert committed_row(url, created.id).arrays_slot == 0
        assert files_beside(url) == {f"{created.id}.0"}
        assert_slot_holds(slot_path(url, created.id, 0), core, "after step 3")
        assert_same_state_dict(ok(get_state_dict(client, created.id)), core.state_dict(), DTYPE)


# Crashes.


def torn(committed: bytes) -> bytes:
    """The other slot cut off halfway through a write of the same size."""
    return committed[: len(committed) // 2]


def garbage(committed: bytes) -> bytes:
    """Noise, three times as long as the committed blob."""
    return np.random.default_rng(SEED).bytes(3 * len(committed))


def empty(_committed: bytes) -> bytes:
    """Created, then the crash before a byte was written."""
    return b""


def uncommitted(committed: bytes) -> bytes:
    """A whole, synced blob of other numbers whose commit never happened."""
    tensors, metadata = read_safetensors(committed)
    return bytes(safetensors.numpy.save({name: value + 1 for name, value in tensors.items()}, metadata=metadata))


@pytest.mark.parametrize("damage", [torn, garbage, empty, uncommitted], ids=lambda damage: damage.__name__)
def test_whatever_a_crash_leaves_in_the_slot_the_row_does_not_name_changes_nothing(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    url = sqlite_file(tmp_path)
    body = small_body()
    core = core_optimizer(body)
    with service_client(url) as first:
        created = create_session(first, body)
        for number in (1, 2, 3):
            step_both(first, created.id, core, number)
        params_before = ok(get_params(first, created.id))
        checkpoint_before = checkpoint(first, created.id)

    # The service is down, as after a crash between writing the other slot and the commit.
    row = committed_row(url, created.id)
    assert row.arrays_slot in (0, 1)
    committed = slot_path(url, created.id, row.arrays_slot)
    committed_bytes = committed.read_bytes()
    other = slot_path(url, created.id, 1 - row.arrays_slot)
    other.write_bytes(damage(committed_bytes))

    with service_client(url) as second:
        assert files_beside(url) == both_slots(created.id), "a live session's slot file was removed at startup"
        assert committed.read_bytes() == committed_bytes
        assert ok(get_params(second, created.id)) == params_before
        assert checkpoint(second, created.id) == checkpoint_before
        assert committed_row(url, created.id) == row

        step_both(second, created.id, core, 4)  # writes over the damaged slot
        assert committed_row(url, created.id).arrays_slot == 1 - row.arrays_slot
        assert_slot_holds(other, core, "the damaged slot after step 4")
        assert committed.read_bytes() == committed_bytes
        for number in (5, 6):
            step_both(second, created.id, core, number)

    with service_client(url) as third:
        assert_same_param_bits(ok(get_params(third, created.id))["params"], core.params, DTYPE)
        assert_same_state_dict(ok(get_state_dict(third, created.id)), core.state_dict(), DTYPE)
        assert committed_row(url, created.id).step == 6


def test_delete_removes_the_sessions_slot_files_and_no_others(tmp_path: Path) -> None:
    url = sqlite_file(tmp_path)
    with service_client(url) as client:
        doomed = create_session(client, small_body(1))
        kept_body = small_body(2)
        kept = create_session(client, kept_body)
        kept_core = core_optimizer(kept_body)
        step_both(client, doomed.id, core_optimizer(small_body(1)), 1, seed=1)
        step_both(client, kept.id, kept_core, 1, seed=2)
        assert files_beside(url) == both_slots(doomed.id) | both_slots(kept.id)

        ok(client.delete(doomed.url), 204)

        assert files_beside(url) == both_slots(kept.id)
        assert stored_row(url, doomed.id) is None
        assert client.get(f"{doomed.url}/params").status_code == 404
        assert_same_param_bits(ok(get_params(client, kept.id))["params"], kept_core.params, DTYPE)
        step_both(client, kept.id, kept_core, 2, seed=2)


def test_at_startup_slot_files_that_no_row_names_are_removed_and_live_sessions_files_stay(tmp_path: Path) -> None:
    url = sqlite_file(tmp_path)
    live_body, inline_body = small_body(1), small_body(2)
    live_core, inline_core = core_optimizer(live_body), core_optimizer(inline_body)
    with service_client(url, array_files_min_bytes=EVERYTHING_IN_FILES) as client:
        live = create_session(client, live_body)
        step_both(client, live.id, live_core, 1, seed=1)
    with service_client(url, array_files_min_bytes=NOTHING_IN_FILES) as client:
        assert files_beside(url) == both_slots(live.id), "a restart removed the files of a session in slot files"
        inline = create_session(client, inline_body)
        step_both(client, inline.id, inline_core, 1, seed=2)
        assert committed_row(url, inline.id).arrays_slot is None

    # What crashes leave behind: files of a session whose row never committed (or was deleted),
    # and files of a session whose row holds its arrays; and a file that is no slot file at all.
    directory = slot_directory(url)
    noise = np.random.default_rng(SEED).bytes(100)
    for name in ["ghost.0", "ghost.1", "never-committed.0", *both_slots(inline.id), "notes.txt"]:
        (directory / name).write_bytes(noise)

    with service_client(url, array_files_min_bytes=EVERYTHING_IN_FILES) as client:
        assert files_beside(url) == both_slots(live.id) | {"notes.txt"}
        assert_same_param_bits(ok(get_params(client, live.id))["params"], live_core.params, DTYPE)
        assert_same_param_bits(ok(get_params(client, inline.id))["params"], inline_core.params, DTYPE)
        step_both(client, live.id, live_core, 2, seed=1)
        step_both(client, inline.id, inline_core, 2, seed=2)  # now in files too: this service's threshold is 0
        assert committed_row(url, inline.id).arrays_slot == 0
        assert_slot_holds(slot_path(url, inline.id, 0), inline_core, "the formerly inline session")


# Concurrency.


def hold_reads(monkeypatch: pytest.MonkeyPatch, count: int) -> queue.Queue[threading.Event]:
    """Hold the next ``count`` slot-file reads of the thread that reads first: each waits, just
    before the real read, until the test sets the event it queues."""
    arrivals: queue.Queue[threading.Event] = queue.Queue()
    real_read = ArrayFiles.read
    guard = threading.Lock()
    held = {"thread": 0, "left": count}

    def read(self: ArrayFiles, session_id: str, slot: int) -> bytes:
        with guard:
            held["thread"] = held["thread"] or threading.get_ident()
            hold = held["thread"] == threading.get_ident() and held["left"] > 0
            if hold:
                held["left"] -= 1
        if hold:
            go = threading.Event()
            arrivals.put(go)
            assert go.wait(30), "the test never let a held read go"
        return real_read(self, session_id, slot)

    monkeypatch.setattr(ArrayFiles, "read", read)
    return arrivals


def test_a_read_overtaken_by_two_steps_between_its_row_and_its_slot_reads_again_and_answers_one_whole_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /params reads the row, then the slot it names. Two steps in between rewrite that very
    slot (the first writes the other slot, the second this one): the read must notice, and read again."""
    body = small_body()
    core = core_optimizer(body)
    with service_client(sqlite_file(tmp_path)) as client, ThreadPoolExecutor(max_workers=1) as pool:
        created = create_session(client, body)
        arrivals = hold_reads(monkeypatch, 1)
        reading = pool.submit(lambda: ok(get_params(client, created.id)))
        go = arrivals.get(timeout=30)
        step_both(client, created.id, core, 1)
        step_both(client, created.id, core, 2)
        go.set()
        answer = reading.result(timeout=30)

    assert answer["step"] == 2, f"GET /params answered step {answer['step']} with the slot file of step 2"
    assert_same_param_bits(answer["params"], core.params, DTYPE)


def test_a_read_overtaken_on_every_attempt_reads_under_the_write_lock_which_holds_the_next_step_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After READ_ATTEMPTS reads that writers overtook, the read takes the write lock: a step
    sent meanwhile waits for it, and the read answers the state before that step."""
    body = small_body()
    core = core_optimizer(body)
    with service_client(sqlite_file(tmp_path)) as client, ThreadPoolExecutor(max_workers=2) as pool:
        created = create_session(client, body)
        arrivals = hold_reads(monkeypatch, READ_ATTEMPTS + 1)
        reading = pool.submit(lambda: ok(get_params(client, created.id)))
        number = 0
        for _ in range(READ_ATTEMPTS):
            go = arrivals.get(timeout=30)
            for _ in range(2):
                number += 1
                step_both(client, created.id, core, number)
            go.set()
        locked_read = arrivals.get(timeout=30)
        grads = small_grads(number + 1)
        stepping = pool.submit(lambda: ok(step(client, created.id, grads)))
        # Time for the step to go through, were the read not holding the lock (the step never
        # completes meanwhile when it is, however long this is).
        time.sleep(0.3)
        step_went_through = stepping.done()
        locked_read.set()
        answer = reading.result(timeout=30)
        stepped = stepping.result(timeout=30)

    assert not step_went_through, "a step completed while the last read attempt was in progress: it held no lock"
    assert answer["step"] == number, f"GET /params answered step {answer['step']} after {number} steps"
    assert_same_param_bits(answer["params"], core.params, DTYPE)
    core.step(grads)
    assert stepped["step"] == number + 1
    assert_same_param_bits(stepped["params"], core.params, DTYPE)


def race_body() -> dict[str, Any]:
    rng = np.random.default_rng([SEED, 100])
    return {"optimizer": "rprop", "params": {"w": rng.standard_normal(RACE_PARAMS).astype(DTYPE)}, "dtype": DTYPE}


def race_grads(worker: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng([SEED, 200, worker])
    return [{"w": rng.standard_normal(RACE_PARAMS).astype(DTYPE)} for _ in range(count)]


def describe(digest: str, expected: list[str]) -> str:
    """Which replayed state, if any, a wrong answer is: a stale one, or a mix of two (torn)."""
    if digest in expected:
        return f"the state at step {expected.index(digest)}"
    return "no state the session ever had (torn)"


@pytest.mark.parametrize("transport", ["binary"], indirect=True)
def test_reads_racing_steps_each_return_the_state_at_the_step_they_report(tmp_path: Path, transport: str) -> None:
    """Steps and GET /params on one session of 100k params, all at once. Every answer is the
    replay at the step it reports (the replay orders the gradients by the step numbers the
    server returned). Real contention rarely lands a read exactly between its row and its slot
    file; the two tests above force that interleaving."""
    body = race_body()
    applied: dict[int, dict[str, np.ndarray]] = {}
    answered: list[tuple[int, str]] = []
    read: list[tuple[int, str]] = []
    steps_done = threading.Event()
    remaining = [RACE_STEPPERS]
    lock = threading.Lock()

    with service_client(sqlite_file(tmp_path)) as client:
        created = create_session(client, body)

        def stepper(worker: int) -> Callable[[], None]:
            def work() -> None:
                try:
                    for grads in race_grads(worker, RACE_STEPS_EACH):
                        stepped = ok(step(client, created.id, grads))
                        with lock:
                            applied[stepped["step"]] = grads
                            answered.append((stepped["step"], params_digest(arrays(stepped["params"], DTYPE))))
                finally:
                    with lock:
                        remaining[0] -= 1
                        if remaining[0] == 0:
                            steps_done.set()

            return work

        def reader() -> None:
            while not steps_done.is_set():
                document = ok(get_params(client, created.id))
                with lock:
                    read.append((document["step"], params_digest(arrays(document["params"], DTYPE))))

        run_together([*(stepper(worker) for worker in range(RACE_STEPPERS)), *([reader] * RACE_READERS)])
        final = ok(get_params(client, created.id))

    total = RACE_STEPPERS * RACE_STEPS_EACH
    assert sorted(applied) == list(range(1, total + 1)), f"step numbers {sorted(applied)}"
    expected = replayed_digests(body, applied)
    assert final["step"] == total
    assert params_digest(arrays(final["params"], DTYPE)) == expected[total], "the final params are not the replay"
    wrong_steps = [(number, describe(digest, expected)) for number, digest in answered if digest != expected[number]]
    assert not wrong_steps, f"step responses that are not the replay at their step: {wrong_steps}"
    wrong_reads = [(number, describe(digest, expected)) for number, digest in read if digest != expected[number]]
    assert not wrong_reads, (
        f"{len(wrong_reads)} of {len(read)} GET /params returned params that are not the state at the step they "
        f"report, e.g. (reported step, what they were): {wrong_reads[:10]}"
    )
    seen = {number for number, _ in read}
    assert len(seen - {0, total}) >= 3, f"the reads did not overlap the steps (they saw steps {sorted(seen)})"


@pytest.mark.parametrize("transport", ["json", "binary"], indirect=True)
def test_each_of_many_concurrent_steps_answers_the_params_of_its_own_step(tmp_path: Path, transport: str) -> None:
    """A step's response is rendered from the optimizer's own memory after the commit; the next
    step, already waiting, changes that memory in place once it gets the optimizer. Eight
    clients stepping at once: every response holds the params of the step it reports."""
    body = race_body()
    applied: dict[int, dict[str, np.ndarray]] = {}
    answered: list[tuple[int, str]] = []
    lock = threading.Lock()

    with service_client(sqlite_file(tmp_path)) as client:
        created = create_session(client, body)

        def stepper(worker: int) -> Callable[[], None]:
            def work() -> None:
                for grads in race_grads(worker, CONCURRENT_STEPS_EACH):
                    stepped = ok(step(client, created.id, grads))
                    digest = params_digest(arrays(stepped["params"], DTYPE))
                    with lock:
                        applied[stepped["step"]] = grads
                        answered.append((stepped["step"], digest))

            return work

        run_together([stepper(worker) for worker in range(CONCURRENT_STEPPERS)])

    total = CONCURRENT_STEPPERS * CONCURRENT_STEPS_EACH
    assert sorted(applied) == list(range(1, total + 1)), f"step numbers {sorted(applied)}"
    expected = replayed_digests(body, applied)
    wrong = [(number, describe(digest, expected)) for number, digest in sorted(answered) if digest != expected[number]]
    assert not wrong, (
        f"{len(wrong)} of {total} step responses hold params other than their step's, "
        f"e.g. (reported step, what they were): {wrong[:10]}"
    )


def test_with_commits_that_a_power_loss_may_undo_new_arrays_stay_in_the_row(tmp_path: Path) -> None:
    # synchronous=NORMAL may lose commits on power loss: a later step could then have overwritten the
    # slot that the surviving row names, so slot files are used only when every commit is durable.
    database_url = f"sqlite:///{tmp_path / 'optim.sqlite3'}"
    rng = np.random.default_rng(3)
    body = {"optimizer": "rmsprop", "params": {"w": rng.standard_normal(64).astype(np.float32)}}
    with service_client(database_url, array_files_min_bytes=0, sqlite_synchronous="NORMAL") as client:
        created = create_session(client, body)
        ok(step(client, created.id, {"w": rng.standard_normal(64).astype(np.float32)}))
    assert committed_row(database_url, created.id).arrays_slot is None
    assert not list((tmp_path / "optim.sqlite3-arrays").glob(f"{created.id}.*"))
