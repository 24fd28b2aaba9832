"""One real server process for the client tests, clients for both transports, and a fault-injecting proxy.

The server is started once per test session (``python -m service serve`` on a free port, SQLite in a
temporary directory) by ``tests/service/server_process.py``; every test makes sessions of its own.
With ``OPTIM_CLIENT_TEST_URL`` set, the tests use the server already running there instead (another
database engine, a deployed service).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from optim_client import Client, RetryPolicy
from optim_client.transports import TRANSPORTS, Transport
from tests.client.fault_proxy import FaultProxy
from tests.e2e.server_process import ServerProcess, sqlite_url

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=5.0, jitter=False)
"""Retries as the defaults would make them, minus the waiting: 0.01 s, then 0.02 s, then 0.04 s."""


@dataclass(frozen=True)
class Server:
    base_url: str


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    external = os.environ.get("OPTIM_CLIENT_TEST_URL")
    if external:
        yield Server(external.rstrip("/"))
        return
    directory = tmp_path_factory.mktemp("client-server")
    with ServerProcess(sqlite_url(directory / "optim.sqlite3"), log_dir=directory) as process:
        yield Server(process.base_url)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    value: Transport = request.param
    return value


@pytest.fixture
def client(server: Server, transport: Transport) -> Iterator[Client]:
    with Client(server.base_url, transport=transport, retry=FAST_RETRY) as connected:
        yield connected


@pytest.fixture
def service(server: Server) -> Iterator[httpx.Client]:
    """Plain HTTP straight to the server, to read what it holds without the SDK (or the proxy)."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as raw:
        yield raw


@pytest.fixture
def proxy(server: Server) -> Iterator[FaultProxy]:
    with FaultProxy(server.base_url) as started:
        yield started


@pytest.fixture
def sleeps() -> list[float]:
    """The delays the proxied client's retries waited, in order (recorded, not slept)."""
    return []


@pytest.fixture
def proxied_client(proxy: FaultProxy, transport: Transport, sleeps: list[float]) -> Iterator[Client]:
    """A client that reaches the server through the proxy; its retries record their delays in ``sleeps``."""
    retry = RetryPolicy(attempts=4, base_delay=0.01, max_delay=5.0, jitter=False, sleep=sleeps.append)
    with Client(proxy.url, transport=transport, retry=retry) as connected:
        yield connected
