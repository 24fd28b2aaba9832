"""An in-process optim-service over a fresh SQLite database, and helpers to talk to it.

The tests reach the service only through HTTP (fastapi's TestClient is an httpx.Client that
calls the ASGI app in-process), so everything they check is what a real client would see.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from optim_core import RMSprop, Rprop
from service.app import create_app
from service.config import Settings
from tests.databases import ENGINES, NO_POSTGRES, fresh_database, postgres_base_url

PROBLEM_KEYS = ("type", "title", "status", "detail")


def strict_json(text: str | bytes) -> Any:
    """Parse JSON as RFC 8259 defines it: the NaN / Infinity tokens Python accepts are errors."""

    def reject(token: str) -> Any:
        raise ValueError(f"not JSON: the response contains the token {token}")

    return json.loads(text, parse_constant=reject)


def to_json(value: Any) -> Any:
    """Arrays (and anything holding them) as JSON values: nested lists, a bare float for 0-d."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Mapping):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def dumps(value: Any) -> bytes:
    return json.dumps(to_json(value), allow_nan=False).encode()


def send(
    client: TestClient,
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """One request; `body` is sent as JSON, `raw` as it is (both with Content-Type application/json
    unless `headers` says otherwise)."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if raw is None and body is None:
        return client.request(method, url, headers=dict(headers or {}))
    content = raw if raw is not None else dumps(body)
    return client.request(method, url, content=content, headers=all_headers)


def ok(response: Any, status: int = 200) -> Any:
    """The parsed body of a successful response (asserting its status and media type)."""
    assert response.status_code == status, f"{response.status_code} {response.text[:2000]}"
    if status == 204:
        return None
    assert response.headers["content-type"].split(";")[0].strip() == "application/json", response.headers
    return strict_json(response.content)


def assert_problem(response: Any, status: int, loc: list[Any] | None = None, message: str | None = None) -> Any:
    """An RFC 9457 problem: the status, application/problem+json, type/title/status/detail, and
    when `loc` is given an `errors` entry whose loc starts with it (and contains `message`, if given)."""
    text = response.text[:2000]
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {text}"
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    assert media_type == "application/problem+json", f"Content-Type {media_type!r}: {text}"
    problem = strict_json(response.content)
    assert isinstance(problem, dict), text
    for key in PROBLEM_KEYS:
        assert key in problem, f"problem without {key!r}: {text}"
    assert problem["status"] == status, text
    assert isinstance(problem["type"], str), text
    assert isinstance(problem["title"], str), text
    assert isinstance(problem["detail"], str), text
    if loc is not None:
        errors = problem.get("errors")
        assert isinstance(errors, list), f"no errors list: {text}"
        assert all(isinstance(error, dict) and {"loc", "msg"} <= set(error) for error in errors), text
        matching = [error for error in errors if list(error["loc"][: len(loc)]) == loc]
        assert matching, f"no error at {loc}: {text}"
        if message is not None:
            assert any(message in error["msg"] for error in matching) or message in problem["detail"], (
                f"no error at {loc} saying {message!r}: {text}"
            )
    elif message is not None:
        assert message in response.text, f"{message!r} not in {text}"
    return problem


@dataclass
class Created:
    """A session as POST /v1/sessions returned it."""

    id: str
    body: dict[str, Any]
    etag: str
    location: str

    @property
    def url(self) -> str:
        return f"/v1/sessions/{self.id}"


def create_session(client: TestClient, body: Mapping[str, Any]) -> Created:
    response = send(client, "POST", "/v1/sessions", body)
    created = ok(response, 201)
    return Created(id=created["id"], body=created, etag=response.headers["etag"], location=response.headers["location"])


def step(client: TestClient, session_id: str, grads: Mapping[str, Any], **headers: str) -> Any:
    return send(client, "POST", f"/v1/sessions/{session_id}/step", {"grads": grads}, headers=headers)


def checkpoint(client: TestClient, session_id: str) -> dict[str, Any]:
    """The session's checkpoint, parsed: a snapshot of everything the session holds."""
    snapshot: dict[str, Any] = ok(client.get(f"/v1/sessions/{session_id}/checkpoint"))
    return snapshot


def arrays(values: Mapping[str, Any], dtype: str) -> dict[str, np.ndarray]:
    """JSON arrays read back as the contract says: np.asarray(value, dtype)."""
    return {name: np.asarray(value, dtype=np.dtype(dtype)) for name, value in values.items()}


def assert_same_bits(actual: np.ndarray, expected: np.ndarray, where: str = "") -> None:
    """Equal dtype, shape and bits (signed zeros included)."""
    message = f"{where}\nactual   {actual!r}\nexpected {expected!r}"
    assert actual.dtype == expected.dtype, message
    assert actual.shape == expected.shape, message
    assert actual.tobytes() == expected.tobytes(), message


def assert_same_param_bits(actual: Mapping[str, Any], expected: Mapping[str, np.ndarray], dtype: str) -> None:
    """JSON params (as the service returned them) hold exactly `expected`'s bits."""
    assert sorted(actual) == sorted(expected)
    for name, value in arrays(actual, dtype).items():
        assert_same_bits(value, np.asarray(expected[name]), f"param {name!r}")


def assert_same_state_dict(actual: Mapping[str, Any], expected: Mapping[str, Any], dtype: str) -> None:
    """Two state_dicts in torch's JSON layout hold the same things: keys in the same order, equal
    hyperparameters (ints may stand for floats, bools may not), equal steps (floats), and arrays
    of exactly the same bits once read as `dtype`."""
    assert list(actual) == ["state", "param_groups"], list(actual)
    assert list(expected) == ["state", "param_groups"], list(expected)
    assert len(actual["param_groups"]) == len(expected["param_groups"])
    for index, (group, expected_group) in enumerate(zip(actual["param_groups"], expected["param_groups"], strict=True)):
        assert list(group) == list(expected_group), (
            f"group {index}: keys {list(group)}, expected {list(expected_group)}"
        )
        for key, value in expected_group.items():
            assert_same_json(group[key], value, f"param_groups[{index}][{key!r}]")
    assert sorted(actual["state"]) == sorted(expected["state"]), (sorted(actual["state"]), sorted(expected["state"]))
    for index, expected_entry in expected["state"].items():
        entry = actual["state"][index]
        assert sorted(entry) == sorted(expected_entry), f"state[{index}]: {sorted(entry)} vs {sorted(expected_entry)}"
        assert type(entry["step"]) is float, f"state[{index}]['step'] = {entry['step']!r} is not a float"
        assert entry["step"] == expected_entry["step"], f"state[{index}]['step']: {entry['step']}"
        for key, value in expected_entry.items():
            if key != "step":
                assert_same_bits(
                    np.asarray(entry[key], dtype=dtype), np.asarray(value, dtype=dtype), f"state[{index}][{key!r}]"
                )


def assert_same_json(actual: Any, expected: Any, where: str = "") -> None:
    """Equal JSON values; ints and floats may stand for each other, bools and null may not."""
    message = f"{where}: {actual!r}, expected {expected!r}"
    if isinstance(expected, list | tuple):
        assert isinstance(actual, list), message
        assert len(actual) == len(expected), message
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_json(a, e, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), message
        assert sorted(actual) == sorted(expected), message
        for key, value in expected.items():
            assert_same_json(actual[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, int | float) and not isinstance(expected, bool):
        assert isinstance(actual, int | float), message
        assert not isinstance(actual, bool), message
        assert actual == expected, message
    else:
        assert type(actual) is type(expected), message
        assert actual == expected, message


def summary_groups(param_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """optim_core's live param_groups as the summary shows them (JSON: tuples become lists)."""
    groups: list[dict[str, Any]] = to_json(param_groups)
    return groups


def _hyperparameter(value: Any) -> Any:
    # JSON has no tuples; the core (like torch) takes etas and step_sizes as tuples.
    return tuple(value) if isinstance(value, list) else value


def core_optimizer(body: Mapping[str, Any]) -> Rprop | RMSprop:
    """optim_core's optimizer built as a POST /v1/sessions body describes it (without state_dict/step)."""
    dtype = np.dtype(body.get("dtype", "float32"))
    params = {name: np.asarray(value, dtype=dtype) for name, value in body["params"].items()}
    defaults = {key: _hyperparameter(value) for key, value in body.get("hyperparameters", {}).items()}
    optimizer = {"rprop": Rprop, "rmsprop": RMSprop}[body["optimizer"]]
    groups = body.get("param_groups")
    if groups is None:
        return optimizer(params, **defaults)
    specs = [
        {
            "params": {name: params[name] for name in group["params"]},
            **{key: _hyperparameter(value) for key, value in group.items() if key != "params"},
        }
        for group in groups
    ]
    return optimizer(specs, **defaults)


ClientFactory = Callable[..., TestClient]


def service_client(database_url: str, **settings: Any) -> TestClient:
    app = create_app(Settings(database_url=database_url, **settings))
    # What a client sees: an unhandled server error is a 500 response, not an exception in the test.
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(params=ENGINES, scope="module")
def engine(request: pytest.FixtureRequest) -> str:
    """Each test runs on SQLite, and again on PostgreSQL when OPTIM_TEST_POSTGRES_URL names one."""
    name: str = request.param
    if name == "postgresql" and postgres_base_url() is None:
        pytest.skip(NO_POSTGRES)
    return name


@pytest.fixture
def new_database(engine: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty databases of the test's engine: files under tmp_path, or schemas dropped at teardown."""
    with ExitStack() as stack:

        def make() -> str:
            return stack.enter_context(fresh_database(engine, tmp_path))

        yield make


@pytest.fixture
def make_client(new_database: Callable[[], str]) -> Iterator[ClientFactory]:
    """Builds services over a database of their own (or the one given) with the given Settings;
    all are shut down at teardown."""
    with ExitStack() as stack:

        def make(database_url: str | None = None, **settings: Any) -> TestClient:
            return stack.enter_context(service_client(database_url or new_database(), **settings))

        yield make


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    """A service with the default Settings over a fresh database."""
    return make_client()


@pytest.fixture(scope="module")
def module_client(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One service for a whole module (hypothesis examples and large tables of independent cases).

    SQLite's synchronous=NORMAL (a Settings choice; still WAL, still every commit) halves the
    time of a write, and these tests do not kill the process."""
    with (
        fresh_database(engine, tmp_path_factory.mktemp("service")) as database_url,
        service_client(database_url, sqlite_synchronous="NORMAL") as test_client,
    ):
        yield test_client
