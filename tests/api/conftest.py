"""An in-process optim-service over a fresh SQLite database, and helpers to talk to it.

The tests reach the service only through HTTP (fastapi's TestClient is an httpx.Client that
calls the ASGI app in-process), so everything they check is what a real client would see.

The helpers that carry arrays (create_session, step, get_params, get_state_dict,
put_state_dict, checkpoint) speak the transport of the `transport` fixture: JSON, or
safetensors (application/vnd.safetensors, docs/binary.md) both ways. A test that uses the
fixture (or a module with `pytestmark = pytest.mark.usefixtures("transport")`) runs once per
transport; `ok` turns a binary response back into the document the JSON one would be, with
numpy arrays (of the file's dtype) where JSON has nested lists. Everything else speaks JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from optim_core import Optimizer
from service.app import create_app
from service.config import Settings
from service.problem_types import PROBLEM_TYPES
from tests import optimizers
from tests.databases import fresh_database

PROBLEM_KEYS = ("type", "title", "status", "detail", "instance")
JSON = "application/json"
SAFETENSORS = "application/vnd.safetensors"
TRANSPORTS = ("json", "binary")
TENSOR_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
LOCAL_URL = "http://localhost"
"""Where the tests' clients send their requests: a name a server on loopback answers (TestClient's own,
``testserver``, is not)."""


@dataclass
class _Transport:
    """The transport the array helpers speak: set by the `transport` fixture, JSON otherwise.
    (Module state, not a context variable: tests call the helpers from worker threads too.)"""

    name: str = "json"


_CURRENT = _Transport()


def binary() -> bool:
    """Whether the array helpers speak safetensors in this test."""
    return _CURRENT.name == "binary"


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test once over JSON and once over safetensors (see the module docstring);
    `@pytest.mark.parametrize("transport", ["binary"], indirect=True)` picks one."""
    _CURRENT.name = request.param
    try:
        yield request.param
    finally:
        _CURRENT.name = "json"


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


def media_type(response: Any) -> str:
    return str(response.headers.get("content-type", "")).split(";")[0].strip()


def ok(response: Any, status: int = 200) -> Any:
    """The parsed body of a successful response (asserting its status and media type): JSON, or
    when the request asked for exactly safetensors, a safetensors file read back as the document
    the JSON response would be (see `document_from_safetensors`)."""
    assert response.status_code == status, f"{response.status_code} {response.text[:2000]}"
    if status == 204:
        return None
    if response.request.headers.get("accept") == SAFETENSORS:
        assert media_type(response) == SAFETENSORS, response.headers
        return response_document(response)
    assert media_type(response) == JSON, response.headers
    return strict_json(response.content)


def session_count(client: TestClient) -> int:
    """How many sessions the client's tenant holds, every page of the list counted."""
    count, cursor = 0, None
    while True:
        page = ok(client.get("/v1/sessions", params={"limit": 1000} | ({"cursor": cursor} if cursor else {})))
        count += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return count


def assert_problem(response: Any, status: int, loc: list[Any] | None = None, message: str | None = None) -> Any:
    """An RFC 9457 problem: the status, application/problem+json, type/title/status/detail, a type with
    a page (in PROBLEM_TYPES), the request's id as its instance, and when `loc` is given an `errors`
    entry whose loc starts with it (and contains `message`, if given)."""
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
    assert problem["type"].removeprefix("/problems/") in PROBLEM_TYPES, f"a type without a page: {text}"
    assert problem["instance"] == response.headers["x-request-id"], f"{response.headers}: {text}"
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


# The array helpers: JSON, or in binary safetensors bodies (Content-Type) and answers (Accept).


def _binary_headers(headers: Mapping[str, str], *, answer: bool = True) -> dict[str, str]:
    return {"Content-Type": SAFETENSORS, **({"Accept": SAFETENSORS} if answer else {}), **headers}


def post_session(client: TestClient, body: Mapping[str, Any], **headers: str) -> Any:
    """POST /v1/sessions with `body` (a create body or a checkpoint)."""
    if not binary():
        return send(client, "POST", "/v1/sessions", body, headers=headers)
    return client.post("/v1/sessions", content=create_safetensors(body), headers=_binary_headers(headers))


def create_session(client: TestClient, body: Mapping[str, Any]) -> Created:
    response = post_session(client, body)
    created = ok(response, 201)
    return Created(id=created["id"], body=created, etag=response.headers["etag"], location=response.headers["location"])


def step(client: TestClient, session_id: str, grads: Mapping[str, Any], **headers: str) -> Any:
    url = f"/v1/sessions/{session_id}/step"
    if not binary():
        return send(client, "POST", url, {"grads": grads}, headers=headers)
    return client.post(url, content=step_safetensors(grads), headers=_binary_headers(headers))


def _get_arrays(client: TestClient, url: str) -> Any:
    return client.get(url, headers={"Accept": SAFETENSORS}) if binary() else client.get(url)


def get_params(client: TestClient, session_id: str) -> Any:
    return _get_arrays(client, f"/v1/sessions/{session_id}/params")


def get_state_dict(client: TestClient, session_id: str) -> Any:
    return _get_arrays(client, f"/v1/sessions/{session_id}/state_dict")


def get_checkpoint(client: TestClient, session_id: str) -> Any:
    return _get_arrays(client, f"/v1/sessions/{session_id}/checkpoint")


def put_state_dict(client: TestClient, session_id: str, state_dict: Mapping[str, Any], **headers: str) -> Any:
    """PUT /state_dict; its answer is a summary, which is JSON in either transport."""
    url = f"/v1/sessions/{session_id}/state_dict"
    if not binary():
        return send(client, "PUT", url, state_dict, headers=headers)
    return client.put(url, content=state_dict_safetensors(state_dict), headers=_binary_headers(headers, answer=False))


def checkpoint(client: TestClient, session_id: str) -> dict[str, Any]:
    """The session's checkpoint, parsed: a snapshot of everything the session holds."""
    snapshot: dict[str, Any] = ok(get_checkpoint(client, session_id))
    return snapshot


# Safetensors bodies: the JSON document with its arrays moved into tensors (docs/binary.md).


def tensor(value: Any) -> np.ndarray:
    """An array as a request tensor: a float32 or float64 array as it is; JSON numbers (and any
    other array) as float64, which holds every JSON number exactly and the server casts."""
    array = np.asarray(value)
    if array.dtype not in TENSOR_DTYPES:
        array = np.asarray(value, dtype=np.float64)
    return np.array(array, order="C")


def to_safetensors(tensors: Mapping[str, Any], fields: Mapping[str, Any] | None = None) -> bytes:
    """A safetensors file of `tensors` whose metadata holds `fields`, each as JSON text."""
    metadata = {key: json.dumps(to_json(value), allow_nan=False) for key, value in (fields or {}).items()}
    return safetensors.numpy.save({name: tensor(value) for name, value in tensors.items()}, metadata=metadata or None)


def _split_state(state: Any, prefix: str, tensors: dict[str, Any]) -> Any:
    """A state_dict's "state" without its arrays (every entry's keys but "step"), which go into
    `tensors` as `{prefix}{index}/{key}`."""
    if not isinstance(state, Mapping):
        return state
    kept: dict[str, Any] = {}
    for index, entry in state.items():
        if not isinstance(entry, Mapping):
            kept[index] = entry
            continue
        kept[index] = {key: value for key, value in entry.items() if key == "step"}
        tensors.update({f"{prefix}{index}/{key}": value for key, value in entry.items() if key != "step"})
    return kept


def step_safetensors(grads: Mapping[str, Any]) -> bytes:
    """A step request: the grads by param name, no metadata."""
    return to_safetensors(grads)


def state_dict_safetensors(state_dict: Mapping[str, Any]) -> bytes:
    """A PUT /state_dict body: tensors "state/<i>/<key>"; metadata "param_groups", "state" (the rest)."""
    tensors: dict[str, Any] = {}
    fields = {
        key: _split_state(value, "state/", tensors) if key == "state" else value for key, value in state_dict.items()
    }
    return to_safetensors(tensors, fields)


def create_safetensors(body: Mapping[str, Any]) -> bytes:
    """A create body (or a checkpoint): tensors "params/<name>" and "state_dict/state/<i>/<key>";
    the other fields, and the state_dict's non-array parts, in the metadata."""
    tensors: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for key, value in body.items():
        if key == "params" and isinstance(value, Mapping):
            tensors.update({f"params/{name}": array for name, array in value.items()})
        elif key == "state_dict" and isinstance(value, Mapping):
            fields[key] = {
                k: _split_state(v, "state_dict/state/", tensors) if k == "state" else v for k, v in value.items()
            }
        else:
            fields[key] = value
    params = body.get("params")
    if "param_groups" not in body and isinstance(params, Mapping) and len(params) > 1:
        # The params' order (their state_dict indices) is the body's order in JSON, and the file's
        # order in binary, which safetensors.numpy.save chooses itself (by dtype, then name).
        # Naming the body's order in one group makes both transports build the same optimizer.
        fields["param_groups"] = [{"params": list(params)}]
    return to_safetensors(tensors, fields)


def read_safetensors(content: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors of a safetensors file, in the order its header lists them, and its metadata."""
    loaded = safetensors.numpy.load(content)
    header = strict_json(content[8 : 8 + int.from_bytes(content[:8], "little")])
    metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    return {name: loaded[name] for name in header}, metadata


def document_from_safetensors(content: bytes, root: str | None = None) -> dict[str, Any]:
    """The JSON document a binary body stands for: each metadata value parsed as (strict) JSON,
    each tensor placed at its path (under `root` by name alone, if given), as a numpy array."""
    tensors, metadata = read_safetensors(content)
    document: dict[str, Any] = {key: strict_json(text) for key, text in metadata.items()}
    if root is not None:
        assert root not in document, f"{root!r} in the metadata: {metadata}"
        document[root] = tensors
        return document
    for name, array in tensors.items():
        head, _, rest = name.partition("/")
        path = [head, rest] if head in ("params", "grads") else name.split("/")
        node = document
        for part in path[:-1]:
            node = node.setdefault(part, {})
            assert isinstance(node, dict), f"tensor {name!r} under a metadata value: {metadata}"
        assert path[-1] not in node, f"tensor {name!r} is in the metadata too: {metadata}"
        node[path[-1]] = array
    return document


def _torch_layout(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state_dict's keys in torch's order (a binary file's metadata and tensors have no order between them)."""
    if not {"state", "param_groups"} <= set(state_dict):
        return state_dict
    return {"state": state_dict.pop("state"), "param_groups": state_dict.pop("param_groups"), **state_dict}


_ROOTED = re.compile(r"/v1/sessions(/[^/]+/(step|params))?")


def response_document(response: Any) -> dict[str, Any]:
    """A binary response as the document its JSON twin is: the params by name (create, step,
    GET /params), a state_dict, or a checkpoint."""
    path = response.request.url.path
    root = "params" if _ROOTED.fullmatch(path) else None
    document = document_from_safetensors(response.content, root)
    if path.endswith("/state_dict"):
        document = _torch_layout(document)
    elif path.endswith("/checkpoint") and isinstance(document.get("state_dict"), dict):
        document["state_dict"] = _torch_layout(document["state_dict"])
    return document


def same(actual: Any, expected: Any) -> bool:
    """`actual == expected`, where numpy arrays (read from binary answers) are equal when their
    dtype, shape and bits are; for JSON values this is exactly `==`."""
    if isinstance(actual, np.ndarray) or isinstance(expected, np.ndarray):
        return (
            isinstance(actual, np.ndarray)
            and isinstance(expected, np.ndarray)
            and actual.dtype == expected.dtype
            and actual.shape == expected.shape
            and actual.tobytes() == expected.tobytes()
        )
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(same(actual[key], expected[key]) for key in actual)
    if type(actual) is type(expected) and isinstance(actual, list | tuple):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected, strict=True))
    return bool(actual == expected)


def held(value: Any, dtype: str) -> np.ndarray:
    """An array as the client reads it: a JSON value parsed as the contract says,
    np.asarray(value, dtype); a tensor as it is, which must be of the session's dtype."""
    if isinstance(value, np.ndarray):
        assert value.dtype == np.dtype(dtype), f"a {value.dtype} tensor where the session holds {dtype}"
        return value
    return np.asarray(value, dtype=np.dtype(dtype))


def arrays(values: Mapping[str, Any], dtype: str) -> dict[str, np.ndarray]:
    """Arrays read back as the contract says (see `held`)."""
    return {name: held(value, dtype) for name, value in values.items()}


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
                assert_same_bits(held(entry[key], dtype), np.asarray(value, dtype=dtype), f"state[{index}][{key!r}]")


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


def core_optimizer(body: Mapping[str, Any]) -> Optimizer[Any, Any]:
    """optim_core's optimizer built as a POST /v1/sessions body describes it (without state_dict/step)."""
    dtype = np.dtype(body.get("dtype", "float32"))
    params = {name: np.asarray(value, dtype=dtype) for name, value in body["params"].items()}
    defaults = {key: _hyperparameter(value) for key, value in body.get("hyperparameters", {}).items()}
    groups = body.get("param_groups")
    if groups is not None:
        groups = [{key: _hyperparameter(value) for key, value in group.items()} for group in groups]
    return optimizers.core_optimizer(body["optimizer"], params, defaults, groups)


ClientFactory = Callable[..., TestClient]


def service_client(database_url: str, **settings: Any) -> TestClient:
    """A service over ``database_url``. On SQLite, every session's arrays live in slot files
    (service/store/array_files.py) unless ``array_files_min_bytes`` says otherwise: PostgreSQL
    covers arrays kept in the row."""
    if database_url.startswith("sqlite"):
        settings.setdefault("array_files_min_bytes", 0)
    app = create_app(Settings(database_url=database_url, **settings))
    # What a client sees: an unhandled server error is a 500 response, not an exception in the test.
    return TestClient(app, raise_server_exceptions=False, base_url=LOCAL_URL)


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
