"""Large bodies against a real server: a JSON body over its limit is refused before it is read, whether
its length is declared or it comes chunked, and the memory a large body took goes back afterwards."""

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from tests.e2e.server_process import HOST, ServerProcess, sqlite_url
from tests.e2e.test_json_workers import children

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the tests read the server's memory from /proc")

MIB = 1 << 20
MAX_JSON_BODY_BYTES = 1 * MIB
MAX_BODY_BYTES = 256 * MIB
LARGE_BODY_BYTES = 200 * MIB
ANSWER_SECONDS = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"OPTIM_MAX_JSON_BODY_BYTES": str(MAX_JSON_BODY_BYTES), "OPTIM_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, env=env) as running:
        yield running


def _session(server: ServerProcess) -> str:
    response = httpx.post(f"{server.base_url}/v1/sessions", json={"optimizer": "rprop", "params": {"w": [1.0, 2.0]}})
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


def _head(server: ServerProcess, path: str, media_type: str, length: str) -> bytes:
    framing = f"Content-Length: {length}" if length != "chunked" else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {media_type}\r\n{framing}\r\n\r\n".encode()


def _answer(connection: socket.socket) -> tuple[int, dict[str, object]]:
    """The status and problem of the answer on ``connection`` (the server closes it after a 413)."""
    received = b""
    while b"\r\n\r\n" not in received or not received.endswith(b"}"):
        chunk = connection.recv(1 << 16)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), received[:1000]
    problem: dict[str, object] = json.loads(body)
    return int(head.split(b" ", 2)[1]), problem


def test_a_json_body_declared_over_the_json_limit_is_refused_before_any_of_it_is_sent(server: ServerProcess) -> None:
    session_id = _session(server)

    with socket.create_connection((HOST, server.port), timeout=ANSWER_SECONDS) as connection:
        connection.sendall(_head(server, f"/v1/sessions/{session_id}/step", "application/json", str(1 << 30)))
        status, problem = _answer(connection)

    assert status == 413
    assert "safetensors" in str(problem["detail"])


def test_a_chunked_json_body_is_refused_as_soon_as_it_is_over_the_json_limit(server: ServerProcess) -> None:
    session_id = _session(server)
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    total = 256 * MIB
    sent = 0
    stop = threading.Event()

    with socket.create_connection((HOST, server.port), timeout=ANSWER_SECONDS) as connection:
        connection.sendall(_head(server, f"/v1/sessions/{session_id}/step", "application/json", "chunked"))

        def send_until_stopped() -> None:
            nonlocal sent
            try:
                while sent < total and not stop.is_set():
                    connection.sendall(chunk)
                    sent += 64 * 1024
            except OSError:
                pass  # the server answered and closed the connection

        sender = threading.Thread(target=send_until_stopped)
        sender.start()
        status, problem = _answer(connection)
        stop.set()
        sender.join()

    assert status == 413
    assert "safetensors" in str(problem["detail"])
    assert sent < total / 4, f"the client sent {sent} bytes before the answer"


def _resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_the_memory_a_large_body_took_goes_back_once_it_is_answered(server: ServerProcess) -> None:
    assert server.pid is not None
    (worker,) = children(server.pid)
    session_id = _session(server)
    wrong_shape = save({"w": np.ones(LARGE_BODY_BYTES // 4, np.float32)})
    with httpx.Client(base_url=server.base_url, timeout=ANSWER_SECONDS) as client:
        client.post(f"/v1/sessions/{session_id}/step", json={"grads": {"w": [1.0, 1.0]}}).raise_for_status()
        baseline = _resident_bytes(worker)

        response = client.post(
            f"/v1/sessions/{session_id}/step",
            content=wrong_shape,
            headers={"Content-Type": "application/vnd.safetensors"},
        )

    assert response.status_code == 422, response.text
    allowed = baseline + LARGE_BODY_BYTES // 4
    deadline = time.monotonic() + ANSWER_SECONDS
    while _resident_bytes(worker) > allowed and time.monotonic() < deadline:
        time.sleep(0.1)
    kept = _resident_bytes(worker) - baseline
    assert kept <= LARGE_BODY_BYTES // 4, f"{kept / MIB:.0f} MiB kept after a body of {LARGE_BODY_BYTES / MIB:.0f} MiB"
