"""API keys: ``Client(api_key=...)``, else ``$OPTIM_API_KEY``, goes with every request as a bearer token, against
a real server that requires keys; a refused key raises ``AuthenticationError`` at once; and the key is never
shown: not in a repr, an exception's message or a log record, httpx's own DEBUG records included."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from optim_client import AuthenticationError, Client, OptimClientError, RemoteRprop, Session
from optim_client.api_keys import API_KEY_VARIABLE
from tests.client.conftest import FAST_RETRY
from tests.client.fault_proxy import FaultProxy
from tests.client.reference import initial_params
from tests.databases import fresh_database
from tests.e2e.server_process import ServerFactory, free_port
from tests.tenancy import create_key

WRONG_KEY = "osk_0123456789ab_" + "x" * 43
"""A key in the service's format that no server issued."""


@dataclass(frozen=True)
class KeyedServer:
    base_url: str
    key: str


@pytest.fixture(scope="module")
def keyed(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    """A server that requires keys (one exists: tenant team-a's), on SQLite and on PostgreSQL."""
    directory = tmp_path_factory.mktemp("keyed")
    with fresh_database(engine, directory) as database_url, ServerFactory(directory, lambda: database_url) as servers:
        server = servers(start=False)
        key = create_key(database_url, "team-a")
        server.start()
        yield KeyedServer(server.base_url, key)


@pytest.fixture
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)


@pytest.fixture
def keyed_proxy(keyed: KeyedServer) -> Iterator[FaultProxy]:
    with FaultProxy(keyed.base_url) as started:
        yield started


@pytest.mark.usefixtures("no_key_in_the_environment")
def test_the_api_key_goes_with_every_request_as_a_bearer_token(keyed: KeyedServer, keyed_proxy: FaultProxy) -> None:
    with Client(keyed_proxy.url, api_key=keyed.key, retry=FAST_RETRY) as client:
        session = Session.create(client, optimizer="rprop", params=initial_params("float32"))
        session.step({"s": 1.0})
        assert session.id in {summary["id"] for summary in client.sessions()}
    assert len(keyed_proxy.seen) == 3
    assert {seen.headers["authorization"] for seen in keyed_proxy.seen} == {f"Bearer {keyed.key}"}


def test_without_api_key_the_client_sends_optim_api_key(keyed: KeyedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_VARIABLE, keyed.key)
    with Client(keyed.base_url, retry=FAST_RETRY) as client:
        session = Session.create(client, optimizer="rprop", params=initial_params("float32"))
        assert session.step_count == 0


@pytest.mark.usefixtures("no_key_in_the_environment")
def test_no_key_for_a_server_that_requires_one_raises_authentication_error_saying_how_to_send_one(
    keyed: KeyedServer, keyed_proxy: FaultProxy
) -> None:
    with Client(keyed_proxy.url, retry=FAST_RETRY) as client, pytest.raises(AuthenticationError) as raised:
        Session.create(client, optimizer="rprop", params=initial_params("float32"))
    assert raised.value.status == 401
    assert "Client(api_key=...)" in str(raised.value)
    assert API_KEY_VARIABLE in str(raised.value)
    assert len(keyed_proxy.seen) == 1


@pytest.mark.usefixtures("no_key_in_the_environment")
def test_a_wrong_key_raises_authentication_error_at_once_and_is_not_retried(
    keyed: KeyedServer, keyed_proxy: FaultProxy
) -> None:
    with (
        Client(keyed_proxy.url, api_key=WRONG_KEY, retry=FAST_RETRY) as client,
        pytest.raises(AuthenticationError) as raised,
    ):
        Session.create(client, optimizer="rprop", params=initial_params("float32"))
    assert raised.value.status == 401
    assert "was not accepted" in str(raised.value)
    assert len(keyed_proxy.seen) == 1, "a 401 is final"


@pytest.mark.usefixtures("no_key_in_the_environment")
def test_the_key_is_in_no_repr_exception_or_log_record(
    keyed: KeyedServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's and httpcore's included
    shown: list[str] = []
    errors: list[OptimClientError] = []
    with Client(keyed.base_url, api_key=keyed.key, retry=FAST_RETRY) as client:
        session = Session.create(client, optimizer="rprop", params={"w": np.zeros(3, np.float32)})
        optimizer = RemoteRprop({"w": np.zeros(3, np.float32)}, client=client)
        optimizer.step(grads={"w": np.ones(3, np.float32)})
        session.step({"w": np.ones(3)})
        shown += [repr(client), repr(session), repr(optimizer), str(vars(client)), str(vars(session))]
        try:
            Session.open(client, "NoSuchSession0")
        except OptimClientError as error:
            errors.append(error)
    for api_key, url in [(keyed.key, f"http://127.0.0.1:{free_port()}"), (keyed.key[:-1] + "y", keyed.base_url)]:
        with Client(url, api_key=api_key, retry=FAST_RETRY) as client:
            try:
                Session.create(client, optimizer="rprop", params={"x": 1.0})
            except OptimClientError as error:
                errors.append(error)
    monkeypatch.setenv(API_KEY_VARIABLE, keyed.key)
    with Client(keyed.base_url) as from_the_environment:
        shown.append(repr(from_the_environment))

    assert [type(error).__name__ for error in errors] == [
        "NotFoundError",
        "ServiceUnreachableError",
        "AuthenticationError",
    ]
    shown += [str(error) for error in errors] + [repr(error) for error in errors]
    shown += [record.getMessage() for record in caplog.records]
    shown += [caplog.text]
    assert any(record.name.startswith("httpx") for record in caplog.records), "httpx's records were not captured"
    secret = keyed.key.split("_", 2)[2]  # osk_<id>_<secret>; the secret may hold "_" itself
    assert not [text for text in shown if secret in text]


@pytest.mark.parametrize("api_key", ["osk_abc_S3CRET\nX-Injected: 1", "osk_abc S3CRET", "osk_abc_S3CRÉT", ""])
def test_a_key_a_header_cannot_carry_is_refused_before_sending_without_being_shown(api_key: str) -> None:
    with pytest.raises(ValueError, match="api_key") as raised:
        Client("http://127.0.0.1:9", api_key=api_key)
    assert "S3CR" not in str(raised.value)
