"""What only a real server shows of the protocol: requests its parser refuses, HEAD on the wire, and the
Host check of a server bound to loopback.

A request line or header the parser cannot read, or a method it does not know, never reaches the
app: the connection answers it with a problem (400 or 501) and closes, saying so.
"""

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.raw_http import closed, read_answer, request
from tests.e2e.server_process import HOST, ServerProcess, sqlite_url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("protocol")
    with ServerProcess(sqlite_url(directory / "optim.sqlite3"), log_dir=directory) as started:
        yield started


@pytest.mark.parametrize(
    ("raw", "status", "slug"),
    [
        (b"BREW /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501, "method-not-implemented"),
        (b"GET /v1/sessions HTTP/1.1 trailing\r\nHost: 127.0.0.1\r\n\r\n", 400, "malformed-request"),
        (b"GET /v1/sessions HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 400, "malformed-request"),
        (b"GET /v1/sessions HTTP/1.1\r\nBad Header\r\n\r\n", 400, "malformed-request"),
        (
            b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
            "malformed-request",
        ),
    ],
    ids=["unknown method", "junk after the version", "unknown version", "header without colon", "two lengths"],
)
def test_a_request_the_parser_refuses_is_a_problem_and_the_connection_closes_saying_so(
    server: ServerProcess, raw: bytes, status: int, slug: str
) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as connection:
        connection.sendall(raw)
        got, headers, body = read_answer(connection)
        assert closed(connection)

    assert got == status, body
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["type"] == f"/problems/{slug}"
    assert problem["instance"] == headers["x-request-id"]
    assert httpx.get(f"{server.base_url}{problem['type']}").status_code == 200


def test_a_method_the_parser_knows_but_no_route_takes_is_405_with_allow(server: ServerProcess) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as connection:
        status, headers, body = request(connection, "/v1/sessions", method="PROPFIND")
        assert request(connection, "/healthz")[0] == 200

    assert status == 405, body
    assert {method.strip() for method in headers["allow"].split(",")} == {"GET", "HEAD", "POST", "OPTIONS"}


def test_head_on_the_wire_has_the_length_of_the_get_and_no_body_and_keeps_the_connection(
    server: ServerProcess,
) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        created = client.post("/v1/sessions", json={"optimizer": "rprop", "params": {"w": [1.0, 2.0]}})
        assert created.status_code == 201, created.text
        url = f"/v1/sessions/{created.json()['id']}/params"
        got = client.get(url)
    with socket.create_connection((HOST, server.port), timeout=10) as connection:
        status, headers, body = request(connection, url, method="HEAD")
        assert request(connection, "/healthz")[0] == 200

    assert status == 200
    assert body == b""
    assert int(headers["content-length"]) == len(got.content)
    assert headers["etag"] == got.headers["etag"]


def test_a_server_on_loopback_answers_its_own_names_and_refuses_others(server: ServerProcess) -> None:
    answered = httpx.get(f"http://localhost:{server.port}/v1/sessions")
    rebound = httpx.get(f"{server.base_url}/v1/sessions", headers={"Host": f"attacker.example:{server.port}"})

    assert answered.status_code == 200, answered.text
    assert rebound.status_code == 421
    assert rebound.headers["content-type"] == "application/problem+json"
    assert rebound.json()["type"] == "/problems/host-not-allowed"


def test_the_allow_list_is_read_from_the_environment(tmp_path: Path) -> None:
    env = {"OPTIM_ALLOWED_HOSTS": "optim.internal"}
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, env=env) as configured:
        named = httpx.get(f"{configured.base_url}/v1/sessions", headers={"Host": "optim.internal"})
        loopback = httpx.get(f"{configured.base_url}/v1/sessions")

    assert named.status_code == 200, named.text
    assert loopback.status_code == 421
