"""Connections to a real server: errors keep them open, idle and slow ones are bounded, floods do not lock clients out.

Raw sockets show what a client's connection sees: whether a keep-alive connection
still carries a request after an error, and when the server closes one that sends
nothing, sends its head a byte at a time, or stops its body halfway. A server limited
to 1024 open files, flooded with 2000 idle connections, still answers a new client.

Errors are injected into the real server through ``sitecustomize`` (which Python
imports at startup): the store's ``get`` fails for two session ids, one with a bug and
one with a storage failure, and the step has a bug for the first.
"""

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from service.store.sqlite.file_locks import LockFile, session_lock
from tests.e2e.raw_http import parse_head, request
from tests.e2e.server_process import HOST, ServerProcess, sqlite_url

INJECTED = """
from service.sessions.service import Sessions
from service.store import StorageUnavailable
from service.store.sql import SqlSessionStore

_get = SqlSessionStore.get


def get(self, session_id, *, with_arrays):
    if session_id == "injected-bug":
        raise RuntimeError("an injected bug")
    if session_id == "injected-storage-failure":
        raise StorageUnavailable("injected: the disk answered with an I/O error", before_commit=True)
    return _get(self, session_id, with_arrays=with_arrays)


SqlSessionStore.get = get
_step = Sessions.step


def step(self, **arguments):
    if arguments["session_id"] == "injected-bug":
        raise RuntimeError("an injected bug in the step")
    return _step(self, **arguments)


Sessions.step = step
"""
FLOOD = 2000
OPEN_FILES = 1024
TIMEOUT_SECONDS = 1.0


@pytest.fixture
def injected(tmp_path: Path) -> Iterator[ServerProcess]:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(INJECTED)
    env = {"PYTHONPATH": str(hooks)}
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, env=env) as server:
        yield server


@pytest.mark.parametrize(
    ("session_id", "status"), [("injected-bug", 500), ("injected-storage-failure", 503)], ids=["bug", "storage"]
)
def test_an_error_answer_keeps_the_keep_alive_connection_open_for_the_next_request(
    injected: ServerProcess, session_id: str, status: int
) -> None:
    with socket.create_connection((HOST, injected.port), timeout=10) as connection:
        got, headers, body = request(connection, f"/v1/sessions/{session_id}")
        assert got == status, body
        assert headers["content-type"] == "application/problem+json"
        assert headers.get("connection") != "close"
        if status == 503:
            assert int(headers["retry-after"]) >= 0
        assert request(connection, "/healthz")[0] == 200


def test_a_bug_in_a_step_with_a_body_is_a_500_problem_that_keeps_the_connection_and_names_its_log_line(
    injected: ServerProcess,
) -> None:
    body = json.dumps({"grads": {"w": [1.0] * 10_000}}).encode()
    headers = {"Content-Type": "application/json", "X-Request-ID": "step-bug-1"}
    with socket.create_connection((HOST, injected.port), timeout=10) as connection:
        got, answer_headers, answer = request(
            connection, "/v1/sessions/injected-bug/step", method="POST", body=body, headers=headers
        )
        assert got == 500, answer
        assert answer_headers["content-type"] == "application/problem+json"
        assert answer_headers.get("connection") != "close"
        assert answer_headers["x-request-id"] == json.loads(answer)["instance"] == "step-bug-1"
        assert request(connection, "/healthz")[0] == 200
    logged = [line for line in injected.log_tail().splitlines() if "unhandled error" in line]
    assert logged, injected.log_tail()
    assert all("[request step-bug-1]" in line for line in logged), logged


def closed_within(connection: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``connection`` (reading what it sends meanwhile); fails past ``seconds``."""
    started = time.monotonic()
    connection.settimeout(seconds)
    with contextlib.suppress(ConnectionResetError):
        while connection.recv(65536):
            pass
    return time.monotonic() - started


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"OPTIM_HEADER_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "OPTIM_BODY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)}
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, env=env) as server:
        yield server


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(impatient: ServerProcess) -> None:
    with socket.create_connection((HOST, impatient.port), timeout=10) as connection:
        assert closed_within(connection, 10 * TIMEOUT_SECONDS) >= TIMEOUT_SECONDS * 0.9


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off_after_the_header_timeout(impatient: ServerProcess) -> None:
    head = f"POST /v1/sessions HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {'a' * 100}".encode()
    with socket.create_connection((HOST, impatient.port), timeout=10) as connection:
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in head:
                connection.sendall(bytes([byte]))
                time.sleep(0.05)
        sent_for = time.monotonic() - started
        assert sent_for < 10 * TIMEOUT_SECONDS + 1, f"the server let the head trickle in for {sent_for:.1f} s"
        closed_within(connection, 10 * TIMEOUT_SECONDS)


def test_a_body_that_stops_halfway_is_closed_after_the_body_timeout(impatient: ServerProcess) -> None:
    head = f"POST /v1/sessions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
    head += "Content-Length: 100\r\n\r\n"
    with socket.create_connection((HOST, impatient.port), timeout=10) as connection:
        connection.sendall(head.encode() + b'{"optimizer": ')
        assert closed_within(connection, 10 * TIMEOUT_SECONDS) >= TIMEOUT_SECONDS * 0.9


def test_with_2000_idle_connections_held_open_a_new_client_still_gets_its_step_answered(tmp_path: Path) -> None:
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, open_files=OPEN_FILES) as server:
        flood: list[socket.socket] = []
        try:
            for _ in range(FLOOD):
                connection = socket.socket()
                connection.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    connection.connect((HOST, server.port))
                flood.append(connection)
            time.sleep(1.0)  # the server accepts what it can of them
            with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
                created = client.post("/v1/sessions", json={"optimizer": "rprop", "params": {"w": [1.0]}})
                assert created.status_code == 201, created.text
                stepped = client.post(f"/v1/sessions/{created.json()['id']}/step", json={"grads": {"w": [1.0]}})
                assert stepped.status_code == 200, stepped.text
                assert stepped.json()["step"] == 1
        finally:
            for connection in flood:
                connection.close()


def blocked_lock_waits() -> int:
    """Lock requests that wait for a lock another holds, in the whole system (``->`` lines of /proc/locks)."""
    return sum(line.split()[1] == "->" for line in Path("/proc/locks").read_text().splitlines())


def test_when_every_connection_a_process_may_hold_is_busy_a_new_one_is_answered_503(tmp_path: Path) -> None:
    database = tmp_path / "optim.sqlite3"
    env = {"OPTIM_MAX_CONNECTIONS": "2", "OPTIM_LOCK_TIMEOUT_SECONDS": "20"}
    with ServerProcess(sqlite_url(database), log_dir=tmp_path, env=env) as server:
        with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
            ids = [
                client.post("/v1/sessions", json={"optimizer": "rprop", "params": {"w": [1.0]}}).json()["id"]
                for _ in range(2)
            ]
        locks = LockFile(database.with_name(database.name + "-locks"))
        answers: list[int] = []

        def step(session_id: str) -> None:
            with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
                answers.append(client.post(f"/v1/sessions/{session_id}/step", json={"grads": {"w": [1.0]}}).status_code)

        # Two steps wait for their sessions, which this process holds: both connections are busy,
        # once the server's two lock requests wait in the kernel.
        with ExitStack() as held:
            waiting_before = blocked_lock_waits()
            for session_id in ids:
                held.enter_context(locks.held(session_lock(session_id), timeout=10, what="the session"))
            busy = [threading.Thread(target=step, args=(session_id,)) for session_id in ids]
            for thread in busy:
                thread.start()
            deadline = time.monotonic() + 30
            while blocked_lock_waits() < waiting_before + 2:
                assert time.monotonic() < deadline, "the steps never waited for their sessions"
                time.sleep(0.01)
            with socket.create_connection((HOST, server.port), timeout=10) as connection:
                connection.settimeout(10)
                answered = b""
                while chunk := connection.recv(65536):
                    answered += chunk
        for thread in busy:
            thread.join(30)
        locks.close()
        status, headers, body = parse_head(answered)
        assert status == 503
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert json.loads(body)["instance"] == headers["x-request-id"]
        assert json.loads(body)["type"] == "/problems/too-many-connections"
        assert answers == [200, 200]
