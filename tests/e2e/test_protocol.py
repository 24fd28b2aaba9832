"""What only a real server shows of the protocol: HEAD on the wire, a method no route takes, and the
Host check of a server bound to loopback."""

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.raw_http import request
from tests.e2e.server_process import HOST, ServerProcess, sqlite_url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("protocol")
    with ServerProcess(sqlite_url(directory / "optim.sqlite3"), log_dir=directory) as started:
        yield started


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
