"""Guarantees only a real server process shows: acknowledged steps survive a crash, and a big step
does not stall the event loop.

Durability: a client streams steps to an RMSprop session (1000 float32 params, momentum) and records
every acknowledged response; the server is SIGKILLed while steps are in flight, after a random 20-60
acknowledged steps, and restarted on the same SQLite file. The session must then hold every
acknowledged step, plus at most the one step that was in flight (the server may have committed it
without getting to acknowledge it), and its params and state must be exactly what optim_core computes
in-process from that many gradients. Every acknowledged response must itself be that replay. On
SQLite it runs twice: with the arrays in the row, and with OPTIM_ARRAY_FILES_MIN_BYTES=0, which puts
them in slot files beside the database (service/store/array_files.py), so that the kills also land
between a slot file's write and the commit that names it.

Liveness: while a step over millions of params is being parsed, computed and stored, GET /healthz
must keep answering promptly (the blocking work runs off the event loop).
"""

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from optim_core import RMSprop
from tests.e2e.server_process import (
    ServerFactory,
    ServerProcess,
    assert_same_params,
    assert_same_state_dict,
    json_body,
    # the server_factory fixture
    server_factory_fixture,  # noqa: F401
)

JSON_HEADERS = {"Content-Type": "application/json"}
DTYPE = np.dtype(np.float32)

# Durability.
SEED = 20_240_521
SHAPES: dict[str, tuple[int, ...]] = {"weight": (30, 30), "bias": (100,)}  # 1000 params
HYPERPARAMETERS: dict[str, Any] = {"lr": 0.01, "alpha": 0.9, "eps": 1e-8, "momentum": 0.9}
CRASHES = 3
KILL_AFTER_ACKS = (20, 60)
MAX_STEPS_PER_ROUND = 2000  # far more than a round sends before its kill; running out is a test failure
SLOT_FILES = {"OPTIM_ARRAY_FILES_MIN_BYTES": "0"}
"""The server's env that puts every session's arrays in slot files (SQLite only; the default keeps these in the row)."""

# Liveness.
BIG_PARAMS = 5_000_000  # a 55 MB JSON body, and as much again in the response
HEALTHZ_BOUND = 0.5
HEALTHZ_SHARE_OF_STEP = 0.25
"""While the big step is in flight, GET /healthz must answer within HEALTHZ_BOUND seconds and within this share of
the step's own duration (a quick step must not hide a stall). A server whose event loop stays free answers in well
under 0.25 s even on a loaded machine; one that parses, computes or encodes on the loop, or in a single call that
holds the GIL for the whole payload, holds a probe for a good part of the step."""
MIN_IN_FLIGHT_PROBES = 3


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng([SEED, 0])
    return {name: rng.standard_normal(shape).astype(DTYPE) for name, shape in SHAPES.items()}


def gradients(step: int) -> dict[str, np.ndarray]:
    """The gradients of step number ``step`` (1-based), the same every time they are asked for."""
    rng = np.random.default_rng([SEED, step])
    return {name: rng.standard_normal(shape).astype(DTYPE) for name, shape in SHAPES.items()}


class Replay:
    """optim_core in-process, stepped with the same gradients as the server: the expected state after n steps."""

    def __init__(self) -> None:
        self.optimizer = RMSprop(initial_params(), **HYPERPARAMETERS)
        self.step = 0

    def advance_to(self, step: int) -> Mapping[str, np.ndarray]:
        assert step >= self.step, "the replay only moves forward"
        while self.step < step:
            self.step += 1
            self.optimizer.step(gradients(self.step))
        return self.optimizer.params


@dataclass
class Stream:
    """One client thread's steps, sent one after the other, from step ``first + 1`` on."""

    base_url: str
    session_id: str
    first: int
    kill_after: int
    acks: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_ack: list[float] = field(default_factory=list)
    enough: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    unexpected: str | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=30.0) as client:
                for step in range(self.first + 1, self.first + MAX_STEPS_PER_ROUND + 1):
                    body = json_body({"grads": gradients(step)})
                    started = time.monotonic()
                    response = client.post(f"/v1/sessions/{self.session_id}/step", content=body, headers=JSON_HEADERS)
                    if response.status_code != 200:
                        self.unexpected = f"step {step}: {response.status_code} {response.text[:1000]}"
                        return
                    self.acks.append(response.json())
                    self.seconds_per_ack.append(time.monotonic() - started)
                    if len(self.acks) == self.kill_after:
                        self.enough.set()
            self.unexpected = f"sent all {MAX_STEPS_PER_ROUND} steps and was never cut off"
        except httpx.TransportError as error:
            self.error = error  # the crash
        finally:
            self.enough.set()


def crash_mid_stream(server: ServerProcess, session_id: str, first: int, kill_after: int, rng: random.Random) -> Stream:
    """Stream steps from ``first + 1`` on; SIGKILL the server soon after ``kill_after`` acknowledgments."""
    stream = Stream(server.base_url, session_id, first, kill_after)
    thread = threading.Thread(target=stream.run, name="step-stream", daemon=True)
    thread.start()
    try:
        assert stream.enough.wait(60), "the client did not get its acknowledgments within 60 s"
        assert stream.unexpected is None, stream.unexpected
        assert stream.error is None, f"the client was cut off before the kill: {stream.error!r}"
        # Land the kill at a random point of the next request's life (sending, computing, committing, answering).
        time.sleep(rng.uniform(0, float(np.median(list(stream.seconds_per_ack)))))
    finally:
        server.kill()
        thread.join(30)
    assert not thread.is_alive(), "the client thread did not notice the crash"
    assert stream.unexpected is None, stream.unexpected
    return stream


def arrays_slot(database_url: str, session_id: str) -> int | None:
    """The slot file the session's row names, or None when its arrays are in the row."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT arrays_slot FROM sessions WHERE id = :id")
            slot: int | None = connection.execute(query, {"id": session_id}).scalar_one()
            return slot
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("engine", "server_env"),
    [
        pytest.param("sqlite", {}, id="sqlite"),
        pytest.param("sqlite", SLOT_FILES, id="sqlite-slot-files"),
        pytest.param("postgresql", {}, id="postgresql"),
    ],
    indirect=["engine"],
)
def test_acknowledged_steps_survive_sigkill_and_the_state_is_an_exact_replay(
    server_factory: ServerFactory, server_env: dict[str, str]
) -> None:
    server = server_factory(env=server_env)
    rng = random.Random(SEED)
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        body = {
            "optimizer": "rmsprop",
            "params": initial_params(),
            "hyperparameters": HYPERPARAMETERS,
            "dtype": "float32",
        }
        response = client.post("/v1/sessions", content=json_body(body), headers=JSON_HEADERS)
        assert response.status_code == 201, response.text[:2000]
        session_id = response.json()["id"]

    replay = Replay()
    stored = 0
    cut_off_mid_request = 0
    for crash in range(1, CRASHES + 1):
        kill_after = rng.randint(*KILL_AFTER_ACKS)
        stream = crash_mid_stream(server, session_id, stored, kill_after, rng)
        if isinstance(stream.error, httpx.ReadError | httpx.RemoteProtocolError | httpx.WriteError):
            cut_off_mid_request += 1
        last_acked = stored + len(stream.acks)
        where = f"crash {crash} (after {len(stream.acks)} acknowledged steps, the last step {last_acked})"
        assert len(stream.acks) >= kill_after, where

        # Every acknowledged response is the replay of exactly that many steps.
        for number, ack in enumerate(stream.acks, start=stored + 1):
            assert ack["step"] == number, f"{where}: the response to step {number} says step {ack['step']}"
            assert_same_params(ack["params"], replay.advance_to(number), f"{where}: the response of step {number}")

        server.start()
        with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
            response = client.get(f"/v1/sessions/{session_id}/params")
            assert response.status_code == 200, f"{where}: {response.status_code} {response.text[:2000]}"
            after_restart = response.json()
            stored = after_restart["step"]
            assert stored >= last_acked, f"{where}: after the restart the session is at step {stored}: steps were lost"
            assert stored <= last_acked + 1, (
                f"{where}: after the restart the session is at step {stored}, but only step {last_acked + 1} "
                "was ever sent after the last acknowledged one"
            )
            expected = replay.advance_to(stored)
            assert_same_params(
                after_restart["params"], expected, f"{where}: GET /params after the restart (step {stored})"
            )

            summary = client.get(f"/v1/sessions/{session_id}").json()
            assert summary["step"] == stored, f"{where}: the summary says step {summary['step']}, /params says {stored}"
            response = client.get(f"/v1/sessions/{session_id}/state_dict")
            assert response.status_code == 200, f"{where}: {response.status_code} {response.text[:2000]}"
            assert_same_state_dict(
                response.json(), replay.optimizer.state_dict(), DTYPE, f"{where}: state_dict after the restart"
            )

    # After the last crash the session goes on exactly as the replay does (its momentum and averages survived).
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        for number in range(stored + 1, stored + 4):
            step_body = json_body({"grads": gradients(number)})
            response = client.post(f"/v1/sessions/{session_id}/step", content=step_body, headers=JSON_HEADERS)
            assert response.status_code == 200, response.text[:2000]
            assert response.json()["step"] == number
            assert_same_params(response.json()["params"], replay.advance_to(number), f"step {number} after the crashes")
    slot = arrays_slot(server.database_url, session_id)
    assert (slot is not None) == (server_env == SLOT_FILES), f"the session's row names slot {slot}"
    print(f"{CRASHES} crashes; {cut_off_mid_request} cut a request off mid-flight; final step {stored + 3}")


@dataclass
class Probe:
    sent: float
    seconds: float
    status: int


def test_healthz_answers_promptly_while_a_step_over_millions_of_params_is_in_flight(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    rng = np.random.default_rng(SEED)
    initial = np.zeros(BIG_PARAMS, DTYPE)
    grads = rng.standard_normal(BIG_PARAMS).astype(DTYPE)
    create_body = orjson.dumps({"optimizer": "rmsprop", "params": {"w": initial}}, option=orjson.OPT_SERIALIZE_NUMPY)
    step_body = orjson.dumps({"grads": {"w": grads}}, option=orjson.OPT_SERIALIZE_NUMPY)

    with httpx.Client(base_url=server.base_url, timeout=120.0) as client:
        response = client.post("/v1/sessions", content=create_body, headers=JSON_HEADERS)
        assert response.status_code == 201, response.text[:2000]
        session_id = response.json()["id"]

    outcome: dict[str, Any] = {}

    def big_step() -> None:
        with httpx.Client(base_url=server.base_url, timeout=120.0) as client:
            outcome["sent"] = time.monotonic()
            try:
                response = client.post(f"/v1/sessions/{session_id}/step", content=step_body, headers=JSON_HEADERS)
            except httpx.HTTPError as error:
                outcome["error"] = error
            else:
                # Only the bytes here: parsing millions of numbers would hold our GIL and slow the probes down.
                outcome["status"], outcome["content"] = response.status_code, response.content
            finally:
                outcome["done"] = time.monotonic()

    probes: list[Probe] = []
    with httpx.Client(base_url=server.base_url, timeout=30.0) as probe_client:
        for _ in range(3):  # warm the connection up
            assert probe_client.get("/healthz").status_code == 200
        thread = threading.Thread(target=big_step, name="big-step", daemon=True)
        thread.start()
        while thread.is_alive():
            sent = time.monotonic()
            status = probe_client.get("/healthz").status_code
            probes.append(Probe(sent, time.monotonic() - sent, status))
            time.sleep(0.02)
        thread.join()

    assert "error" not in outcome, f"the big step failed: {outcome['error']!r}"
    assert outcome["status"] == 200, outcome["content"][:2000]
    result = orjson.loads(outcome["content"])
    assert result["step"] == 1
    expected = RMSprop({"w": initial})
    expected.step({"w": grads})
    assert_same_params(result["params"], expected.params, "the big step's response")

    started, finished = outcome["sent"], outcome["done"]
    duration = finished - started
    allowed = min(HEALTHZ_BOUND, HEALTHZ_SHARE_OF_STEP * duration)
    during = [probe for probe in probes if started <= probe.sent and probe.sent + probe.seconds <= finished]
    summary = (
        f"the step took {duration:.2f} s; {len(during)} probes answered during it, the slowest in "
        f"{max((probe.seconds for probe in probes), default=float('nan')):.3f} s; allowed {allowed:.3f} s"
    )
    print(summary)
    assert all(probe.status == 200 for probe in probes), [probe.status for probe in probes]
    assert len(during) >= MIN_IN_FLIGHT_PROBES, f"healthz did not answer while the step was in flight: {summary}"
    slow = [probe for probe in probes if probe.sent < finished and probe.seconds > allowed]
    assert not slow, (
        f"GET /healthz took {[round(probe.seconds, 3) for probe in slow]} s, sent "
        f"{[round(probe.sent - started, 3) for probe in slow]} s into the step: the event loop was stalled; {summary}"
    )
