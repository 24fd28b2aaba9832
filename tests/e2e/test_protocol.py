"""What only a real server shows of the protocol: HEAD on the wire, and a method no
route takes."""

import socket
from collections.abc import Iterator

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
