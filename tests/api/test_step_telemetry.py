"""Step telemetry, as docs/api.md states it ("Step telemetry" and "History"), checked from outside.

Every step answers `metrics`: the norms of the gradients sent, of the change and of the params after it
(over the stepped params only, in float64), each group's `lr`, the client's `loss`, and the algorithm's
spread (Rprop's step sizes and sign changes, RMSprop's effective learning rates), each recomputed here
with numpy from the grads sent and the params and state_dict read before and after the step. The
history at /v1/sessions/{id}/metrics keeps them: oldest first, paged by `since` and `limit`, as JSON
or CSV, its tenant's only, thinned as documented, gone with its session. Runs on both engines.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.api.conftest import (
    SAFETENSORS,
    ClientFactory,
    assert_problem,
    binary,
    create_session,
    get_params,
    get_state_dict,
    held,
    ok,
    read_safetensors,
    send,
    to_safetensors,
)
from tests.tenancy import bearer, create_key

RELATIVE = 1e-12
"""How closely the norms (and the effective learning rates, a division each) follow numpy's float64."""
GROUPS = [{"params": ["w", "c"], "lr": 0.01}, {"params": ["b"], "lr": 0.05}]
SHAPES: dict[str, tuple[int, ...]] = {"w": (3, 4), "c": (2,), "b": (6,)}
SKIPPED = "c"
"""Left out of the second step's grads: a param torch would see with grad=None."""
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "rprop": {"etas": [0.4, 1.3], "step_sizes": [1e-4, 5.0]},
    "rmsprop": {"alpha": 0.9, "eps": 1e-3, "weight_decay": 0.1, "momentum": 0.5},
    "rmsprop-centered": {"alpha": 0.9, "eps": 1e-3, "weight_decay": 0.1, "centered": True},
}
"""Off the defaults: RMSprop's weight decay changes the gradient the step uses, but not the one measured;
an eps this large weighs in the effective learning rate."""
ONE_PARAM = {"optimizer": "rprop", "params": {"w": [1.0, -2.0, 3.0]}}
LINK_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


# Steps, with a loss when given: in the body (JSON) or in the file's __metadata__ (safetensors).


def step_with_loss(
    client: TestClient, session_id: str, grads: Mapping[str, Any], loss: Any = None, **headers: str
) -> Any:
    url = f"/v1/sessions/{session_id}/step"
    if binary():
        fields = {} if loss is None else {"loss": loss}
        content = to_safetensors(grads, fields)
        return client.post(
            url, content=content, headers={"Content-Type": SAFETENSORS, "Accept": SAFETENSORS, **headers}
        )
    body = {"grads": grads} | ({} if loss is None else {"loss": loss})
    return send(client, "POST", url, body, headers=headers)


def binary_step(client: TestClient, session_id: str, grads: Mapping[str, Any], metadata: dict[str, str]) -> Any:
    """A safetensors step whose metadata is given as the file holds it (strings, not JSON values)."""
    content = safetensors.numpy.save({name: np.asarray(value) for name, value in grads.items()}, metadata=metadata)
    return client.post(
        f"/v1/sessions/{session_id}/step",
        content=content,
        headers={"Content-Type": SAFETENSORS, "Accept": SAFETENSORS},
    )


def history(client: TestClient, session_id: str, **params: Any) -> Any:
    return client.get(f"/v1/sessions/{session_id}/metrics", params=params)


def all_history(client: TestClient, session_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Every kept step's row, every page read."""
    items: list[dict[str, Any]] = []
    since = 0
    while True:
        page = ok(history(client, session_id, since=since, limit=limit))
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        since = page["next_cursor"]


def kept_steps(client: TestClient, session_id: str) -> list[int]:
    return [item["step"] for item in all_history(client, session_id)]


def without_time(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "time"}


# What numpy says the metrics are.


@dataclass
class Observed:
    """One step seen from outside: what was sent, and the session read before and after it."""

    grads: dict[str, np.ndarray]
    before: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    state_before: dict[str, dict[str, np.ndarray]]
    state_after: dict[str, dict[str, np.ndarray]]
    groups: list[dict[str, Any]]


def read_params(client: TestClient, session_id: str, dtype: str) -> dict[str, np.ndarray]:
    return {name: held(value, dtype) for name, value in ok(get_params(client, session_id))["params"].items()}


def read_state(client: TestClient, session_id: str, dtype: str) -> tuple[dict[str, dict[str, np.ndarray]], list[Any]]:
    """The state_dict's entries by param name (through the groups' param_names), and its groups."""
    state_dict = ok(get_state_dict(client, session_id))
    names = {
        str(index): name
        for group in state_dict["param_groups"]
        for index, name in zip(group["params"], group["param_names"], strict=True)
    }
    state = {
        names[str(index)]: {key: held(value, dtype) for key, value in entry.items() if key != "step"}
        for index, entry in state_dict["state"].items()
    }
    return state, state_dict["param_groups"]


def flat64(arrays: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[name], dtype=np.float64).reshape(-1) for name in names])


def norm(values: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(values, dtype=np.float64))))


def spread(values: np.ndarray) -> dict[str, float]:
    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def expected_metrics(optimizer: str, observed: Observed, loss: float | None) -> dict[str, Any]:
    stepped = list(observed.grads)
    expected: dict[str, Any] = {
        "grad_norm": norm(flat64(observed.grads, stepped)),
        "update_norm": norm(flat64(observed.after, stepped) - flat64(observed.before, stepped)),
        "param_norm": norm(flat64(observed.after, stepped)),
        "lr": [group["lr"] for group in observed.groups],
        "loss": loss,
    }
    if optimizer == "rprop":
        expected["step_size"] = spread(flat64({n: observed.state_after[n]["step_size"] for n in stepped}, stepped))
        grads = flat64(observed.grads, stepped)
        previous = [observed.state_before.get(name, {}).get("prev") for name in stepped]
        prev = np.concatenate(
            [
                np.zeros(observed.grads[n].size) if p is None else p.astype(np.float64).reshape(-1)
                for n, p in zip(stepped, previous, strict=True)
            ]
        )
        expected["sign_change_fraction"] = float(np.count_nonzero(grads * prev < 0)) / grads.size
        return expected
    lrs: list[np.ndarray] = []
    for name in stepped:
        group = next(group for group in observed.groups if name in group["param_names"])
        entry = observed.state_after[name]
        variance = entry["square_avg"]
        if group["centered"]:
            variance = variance - entry["grad_avg"] * entry["grad_avg"]
        denominator = np.sqrt(variance) + variance.dtype.type(group["eps"])  # the params' dtype, as the step has it
        lrs.append(group["lr"] / denominator.astype(np.float64).reshape(-1))
    expected["effective_lr"] = spread(np.concatenate(lrs))
    return expected


def assert_close(actual: Any, expected: Any, where: str) -> None:
    """Equal JSON values, floats within RELATIVE of numpy's (0 exactly)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} vs {expected!r}"
        assert sorted(actual) == sorted(expected), f"{where}: {actual!r} vs {expected!r}"
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} vs {expected!r}"
        assert len(actual) == len(expected), f"{where}: {actual!r} vs {expected!r}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert isinstance(actual, int | float), f"{where}: {actual!r}"
        assert not isinstance(actual, bool), f"{where}: {actual!r}"
        assert abs(actual - expected) <= RELATIVE * abs(expected), f"{where}: {actual!r}, numpy says {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r}, expected {expected!r}"


def session_body(optimizer: str, dtype: str, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "optimizer": optimizer.removesuffix("-centered"),
        "dtype": dtype,
        "params": {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()},
        "hyperparameters": HYPERPARAMETERS[optimizer],
        "param_groups": GROUPS,
    }


def step_grads(number: int, dtype: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Exactly representable in the session's dtype, so that "as received" is one set of numbers; the
    second step skips SKIPPED and sends an exact zero (neither sign)."""
    grads = {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}
    if number == 2:
        del grads[SKIPPED]
        grads["b"][0] = 0
    return grads


@pytest.mark.usefixtures("transport")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", ["rprop", "rmsprop", "rmsprop-centered"])
def test_each_step_answers_metrics_that_numpy_computes_from_the_grads_sent_and_the_session_read_around_it(
    client: TestClient, optimizer: str, dtype: str
) -> None:
    rng = np.random.default_rng([7, len(optimizer), len(dtype)])
    created = create_session(client, session_body(optimizer, dtype, rng))
    for number in range(1, 5):
        grads = step_grads(number, dtype, rng)
        loss = None if number == 3 else 1.0 / number
        before = read_params(client, created.id, dtype)
        state_before, _ = read_state(client, created.id, dtype)

        answer = ok(step_with_loss(client, created.id, grads, loss))

        state_after, groups = read_state(client, created.id, dtype)
        observed = Observed(grads, before, read_params(client, created.id, dtype), state_before, state_after, groups)
        assert answer["step"] == number
        assert_close(answer["metrics"], expected_metrics(optimizer, observed, loss), f"step {number}'s metrics")


@pytest.mark.parametrize("optimizer", ["rprop", "rmsprop"])
def test_a_safetensors_answer_carries_the_metrics_as_a_json_string_in_its_metadata_equal_to_the_json_answers(
    client: TestClient, optimizer: str
) -> None:
    rng = np.random.default_rng(11)
    body = session_body(optimizer, "float32", rng)
    twins = [create_session(client, body).id for _ in range(2)]
    for number in range(1, 4):
        grads = step_grads(number, "float32", rng)
        json_answer = ok(send(client, "POST", f"/v1/sessions/{twins[0]}/step", {"grads": grads, "loss": 0.5 * number}))
        response = binary_step(client, twins[1], grads, {"loss": json.dumps(0.5 * number)})
        assert response.status_code == 200, response.text
        _, metadata = read_safetensors(response.content)
        assert isinstance(metadata.get("metrics"), str), metadata
        assert json.loads(metadata["step"]) == number, metadata
        assert json.loads(metadata["metrics"]) == json_answer["metrics"], (metadata, json_answer["metrics"])
        assert json_answer["metrics"]["loss"] == 0.5 * number


@pytest.mark.usefixtures("transport")
def test_the_loss_sent_with_a_step_is_in_its_answer_and_its_history_row_and_null_without_one(
    client: TestClient,
) -> None:
    created = create_session(client, ONE_PARAM)
    losses = [2.5, None, -0.125, 1e-300, 3.0]
    answers = [ok(step_with_loss(client, created.id, {"w": [1.0, -1.0, 0.5]}, loss))["metrics"] for loss in losses]

    assert [metrics["loss"] for metrics in answers] == losses
    items = all_history(client, created.id)
    assert [item["loss"] for item in items] == losses
    assert [without_time(item) for item in items] == [
        {"step": number, **metrics} for number, metrics in enumerate(answers, start=1)
    ]


def _session_now(client: TestClient, session_id: str) -> tuple[int, bytes, list[dict[str, Any]]]:
    """The session's step, its params' exact bytes, and its history."""
    params = client.get(f"/v1/sessions/{session_id}/params", headers={"Accept": SAFETENSORS})
    summary = ok(client.get(f"/v1/sessions/{session_id}"))
    assert params.status_code == 200, params.text
    return summary["step"], params.content, all_history(client, session_id)


def assert_refused_and_nothing_changes(client: TestClient, request: Callable[[str], Any], status: int) -> None:
    """`request(session_id)` on a session stepped once is `status`, naming `loss` when 422, and the
    session's step, params and history are as they were."""
    created = create_session(client, ONE_PARAM)
    ok(step_with_loss(client, created.id, {"w": [1.0, 1.0, 1.0]}, 1.0))
    before = _session_now(client, created.id)

    problem = assert_problem(request(created.id), status)

    if status == 422:
        assert any("loss" in [str(part) for part in error["loc"]] for error in problem.get("errors", [])), problem
    assert _session_now(client, created.id) == before


@pytest.mark.parametrize(
    ("loss", "status"),
    [
        pytest.param(b'"x"', 422, id="string"),
        pytest.param(b'"0.5"', 422, id="number-in-a-string"),
        pytest.param(b'"NaN"', 422, id="nan-in-a-string"),
        pytest.param(b"true", 422, id="true"),
        pytest.param(b"[1.0]", 422, id="list"),
        pytest.param(b'{"value": 1.0}', 422, id="object"),
        pytest.param(b"1e999", 400, id="too-large-for-a-double-is-a-malformed-body"),
    ],
)
def test_a_json_loss_that_is_not_a_finite_number_is_refused_naming_loss_and_changes_nothing(
    module_client: TestClient, loss: bytes, status: int
) -> None:
    raw = b'{"grads": {"w": [1.0, 1.0, 1.0]}, "loss": ' + loss + b"}"
    assert_refused_and_nothing_changes(
        module_client,
        lambda session_id: send(module_client, "POST", f"/v1/sessions/{session_id}/step", raw=raw),
        status,
    )


@pytest.mark.parametrize(
    "loss", ["NaN", "nan", "inf", "-Infinity", "Infinity", "1e999", '"x"', '"0.5"', "x", "true", "[1]", ""]
)
def test_a_safetensors_loss_that_is_not_a_finite_number_is_422_naming_loss_and_changes_nothing(
    module_client: TestClient, loss: str
) -> None:
    grads = {"w": np.ones(3, np.float32)}
    assert_refused_and_nothing_changes(
        module_client, lambda session_id: binary_step(module_client, session_id, grads, {"loss": loss}), 422
    )


# History.


def _stepped(client: TestClient, steps: int, losses: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """A two-group Rprop session stepped `steps` times; its id and the answers' metrics."""
    body = {"optimizer": "rprop", "params": {"w": [1.0, 2.0], "b": [0.5]}, "param_groups": [
        {"params": ["w"], "lr": 0.1}, {"params": ["b"], "lr": 0.2}]}  # fmt: skip
    session_id = create_session(client, body).id
    answers = []
    for number in range(1, steps + 1):
        grads = {"w": [(-1.0) ** number, 0.5], "b": [0.25 * number]}
        loss = 10.0 / number if losses and number % 3 else None
        answers.append(ok(step_with_loss(client, session_id, grads, loss))["metrics"])
    return session_id, answers


def test_history_lists_every_step_oldest_first_as_its_answer_said_with_the_time_it_was_kept(
    client: TestClient,
) -> None:
    session_id, answers = _stepped(client, 7)

    response = history(client, session_id)
    page = ok(response)
    assert page["next_cursor"] is None
    assert "link" not in response.headers
    assert [without_time(item) for item in page["items"]] == [
        {"step": number, **metrics} for number, metrics in enumerate(answers, start=1)
    ]
    times = [datetime.fromisoformat(item["time"].replace("Z", "+00:00")) for item in page["items"]]
    assert all(moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0 for moment in times)  # type: ignore[union-attr]
    assert times == sorted(times)


def test_since_is_exclusive_and_limit_bounds_a_page(client: TestClient) -> None:
    session_id, _ = _stepped(client, 7)

    assert [item["step"] for item in ok(history(client, session_id, since=3))["items"]] == [4, 5, 6, 7]
    assert [item["step"] for item in ok(history(client, session_id, since=3, limit=2))["items"]] == [4, 5]
    assert [item["step"] for item in ok(history(client, session_id, since=0, limit=1))["items"]] == [1]
    assert ok(history(client, session_id, since=7)) == {"items": [], "next_cursor": None}
    assert ok(history(client, session_id, since=1000)) == {"items": [], "next_cursor": None}


def test_next_cursor_and_the_link_header_chain_the_pages_to_the_end(client: TestClient) -> None:
    session_id, answers = _stepped(client, 7)

    seen: list[dict[str, Any]] = []
    response = history(client, session_id, limit=3)
    pages = 0
    while True:
        page = ok(response)
        pages += 1
        seen.extend(page["items"])
        if page["next_cursor"] is None:
            assert "link" not in response.headers, response.headers
            break
        assert page["next_cursor"] == page["items"][-1]["step"]
        link = LINK_NEXT.search(response.headers.get("link", ""))
        assert link is not None, response.headers
        by_cursor = history(client, session_id, since=page["next_cursor"], limit=3)
        response = client.get(link.group(1))
        assert ok(response) == ok(by_cursor)
    assert pages == 3
    assert [without_time(item) for item in seen] == [
        {"step": number, **metrics} for number, metrics in enumerate(answers, start=1)
    ]


def _flattened(item: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in item.items():
        if isinstance(value, list):
            flat.update({f"{key}.{index}": entry for index, entry in enumerate(value)})
        elif isinstance(value, dict):
            flat.update({f"{key}.{name}": entry for name, entry in value.items()})
        else:
            flat[key] = value
    return flat


@pytest.mark.parametrize("optimizer", ["rprop", "rmsprop"])
def test_accept_text_csv_answers_the_page_as_one_csv_table_with_the_nested_entries_flattened(
    client: TestClient, optimizer: str
) -> None:
    rng = np.random.default_rng(3)
    session_id = create_session(client, session_body(optimizer, "float64", rng)).id
    for number in range(1, 6):
        ok(
            step_with_loss(
                client, session_id, step_grads(number, "float64", rng), None if number == 2 else 0.1 * number
            )
        )
    items = ok(history(client, session_id, since=1, limit=3))["items"]

    response = client.get(f"/v1/sessions/{session_id}/metrics?since=1&limit=3", headers={"Accept": "text/csv"})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0].strip() == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    expected = [_flattened(item) for item in items]
    assert {"lr.0", "lr.1", f"{'step_size' if optimizer == 'rprop' else 'effective_lr'}.median"} <= set(expected[0])
    assert len(rows) == len(expected) == 3
    for row, flat in zip(rows, expected, strict=True):
        assert sorted(row) == sorted(flat), (list(row), list(flat))
        for column, value in flat.items():
            if value is None:
                assert row[column] == "", (column, row)
            elif isinstance(value, str):
                assert row[column] == value, (column, row)
            else:
                assert float(row[column]) == value, (column, row[column], value)
    assert rows[0]["loss"] == "", "step 2 was sent without a loss"
    link = LINK_NEXT.search(response.headers.get("link", ""))
    assert link is not None, response.headers
    assert "since=4" in link.group(1), response.headers


@pytest.mark.parametrize("accept", ["image/png", SAFETENSORS, "text/html"])
def test_an_accept_the_history_cannot_answer_is_406(client: TestClient, accept: str) -> None:
    session_id, _ = _stepped(client, 2)
    assert_problem(client.get(f"/v1/sessions/{session_id}/metrics", headers={"Accept": accept}), 406)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=-1", "since"),
        ("since=x", "since"),
        ("since=1.5", "since"),
        ("limit=0", "limit"),
        ("limit=-3", "limit"),
        ("limit=10001", "limit"),
        ("limit=many", "limit"),
    ],
)
def test_a_bad_since_or_limit_is_422_naming_it(module_client: TestClient, query: str, field: str) -> None:
    session_id = create_session(module_client, ONE_PARAM).id
    assert_problem(module_client.get(f"/v1/sessions/{session_id}/metrics?{query}"), 422, ["query", field])


def test_the_largest_limit_is_accepted(module_client: TestClient) -> None:
    session_id = create_session(module_client, ONE_PARAM).id
    ok(send(module_client, "POST", f"/v1/sessions/{session_id}/step", {"grads": {"w": [1.0, 1.0, 1.0]}}))
    assert len(ok(history(module_client, session_id, limit=10_000))["items"]) == 1


def test_another_tenants_history_is_404_exactly_as_a_missing_session_and_an_admin_key_reads_it(
    new_database: Callable[[], str], make_client: ClientFactory
) -> None:
    url = new_database()
    client = make_client(url)
    key_a, key_b, admin = create_key(url, "team-a"), create_key(url, "team-b"), create_key(url, "ops", admin=True)
    created = ok(send(client, "POST", "/v1/sessions", ONE_PARAM, headers=bearer(key_a)), 201)
    step_url = f"/v1/sessions/{created['id']}/step"
    ok(send(client, "POST", step_url, {"grads": {"w": [1.0, 1.0, 1.0]}, "loss": 0.5}, headers=bearer(key_a)))
    metrics_url = f"/v1/sessions/{created['id']}/metrics"

    own = ok(client.get(metrics_url, headers=bearer(key_a)))
    assert [item["loss"] for item in own["items"]] == [0.5]
    for accept in ("application/json", "text/csv"):
        headers = {**bearer(key_b), "Accept": accept, "X-Request-ID": "one-id"}
        refused = assert_problem(client.get(metrics_url, headers=headers), 404)
        missing = assert_problem(client.get("/v1/sessions/NoSuchSession0/metrics", headers=headers), 404)
        assert refused["detail"].replace(created["id"], "NoSuchSession0") == missing["detail"]
        assert {**refused, "detail": ""} == {**missing, "detail": ""}
    assert ok(client.get(metrics_url, headers=bearer(admin))) == own


def _rows_naming(database_url: str, session_id: str) -> dict[str, int]:
    """For every table with a session_id column, how many of its rows name the session."""
    engine = sa.create_engine(database_url)
    try:
        inspector = sa.inspect(engine)
        counts = {}
        with engine.connect() as connection:
            for table in inspector.get_table_names():
                if "session_id" in {column["name"] for column in inspector.get_columns(table)}:
                    query = sa.text(f'SELECT count(*) FROM "{table}" WHERE session_id = :id')
                    counts[table] = connection.execute(query, {"id": session_id}).scalar_one()
        return counts
    finally:
        engine.dispose()


def test_deleting_a_session_deletes_its_history(new_database: Callable[[], str], make_client: ClientFactory) -> None:
    url = new_database()
    client = make_client(url)
    session_id, _ = _stepped(client, 4)
    assert sum(_rows_naming(url, session_id).values()) >= 4

    ok(client.delete(f"/v1/sessions/{session_id}"), 204)

    assert_problem(history(client, session_id), 404)
    assert_problem(client.get(f"/v1/sessions/{session_id}/metrics", headers={"Accept": "text/csv"}), 404)
    assert _rows_naming(url, session_id) == dict.fromkeys(_rows_naming(url, session_id), 0)
    other, _ = _stepped(client, 1)
    assert kept_steps(client, other) == [1]


# Retention.

RECENT = 5
EVERY = 3


def documented_kept(steps: int, recent: int, every: int) -> list[int]:
    """The rows docs/api.md says a session keeps after `steps` steps: thinned in the transaction of
    every `every`-th step to its last `recent` steps and the multiples of `every` before them."""
    kept: list[int] = []
    for number in range(1, steps + 1):
        kept.append(number)
        if number % every == 0:
            kept = [step for step in kept if step > number - recent or step % every == 0]
    return kept


def test_documented_kept_is_the_last_steps_and_every_kth_before_them_right_after_a_thinning() -> None:
    assert documented_kept(18, 5, 3) == [3, 6, 9, 12, 14, 15, 16, 17, 18]
    assert documented_kept(20, 5, 3) == [3, 6, 9, 12, 14, 15, 16, 17, 18, 19, 20]


def test_history_keeps_the_last_steps_and_every_kth_step_before_them(make_client: ClientFactory) -> None:
    client = make_client(metrics_recent_steps=RECENT, metrics_every=EVERY)
    created = create_session(client, ONE_PARAM)
    for number in range(1, 24):
        ok(step_with_loss(client, created.id, {"w": [1.0, -1.0, float(number)]}, float(number)))
        kept = all_history(client, created.id)
        assert [item["step"] for item in kept] == documented_kept(number, RECENT, EVERY), f"after step {number}"
        assert all(item["loss"] == float(item["step"]) for item in kept)
        if number % EVERY == 0:
            last = list(range(max(1, number - RECENT + 1), number + 1))
            before = list(range(EVERY, number - RECENT + 1, EVERY))
            assert [item["step"] for item in kept] == before + last, f"after step {number}"


# Idempotency-Key replays.


@pytest.mark.usefixtures("transport")
def test_a_replayed_step_answers_the_first_answers_metrics_and_adds_no_history_row(client: TestClient) -> None:
    created = create_session(client, ONE_PARAM)
    first = step_with_loss(client, created.id, {"w": [1.0, -1.0, 0.5]}, 0.75, **{"Idempotency-Key": "one"})
    first_answer = ok(first)
    ok(step_with_loss(client, created.id, {"w": [-1.0, -1.0, 0.5]}, 0.25, **{"Idempotency-Key": "two"}))
    kept = all_history(client, created.id)

    replay = step_with_loss(client, created.id, {"w": [1.0, -1.0, 0.5]}, 0.75, **{"Idempotency-Key": "one"})

    assert replay.status_code == 200, replay.text
    assert replay.content == first.content
    assert ok(replay)["metrics"] == first_answer["metrics"]
    assert first_answer["metrics"]["loss"] == 0.75
    assert all_history(client, created.id) == kept
    assert [item["step"] for item in kept] == [1, 2]
    assert ok(client.get(created.url))["step"] == 2


def test_the_same_key_with_another_loss_is_another_body(client: TestClient) -> None:
    created = create_session(client, ONE_PARAM)
    ok(step_with_loss(client, created.id, {"w": [1.0, -1.0, 0.5]}, 0.75, **{"Idempotency-Key": "one"}))
    refused = step_with_loss(client, created.id, {"w": [1.0, -1.0, 0.5]}, 0.5, **{"Idempotency-Key": "one"})
    assert_problem(refused, 422)
    assert kept_steps(client, created.id) == [1]


def test_a_replay_of_a_step_the_history_no_longer_keeps_answers_null_metrics(make_client: ClientFactory) -> None:
    client = make_client(metrics_recent_steps=1, metrics_every=2)
    created = create_session(client, ONE_PARAM)
    first = ok(step_with_loss(client, created.id, {"w": [1.0, -1.0, 0.5]}, 0.75, **{"Idempotency-Key": "one"}))
    ok(step_with_loss(client, created.id, {"w": [1.0, 1.0, 1.0]}, 0.5))
    assert kept_steps(client, created.id) == [2]

    replay = ok(step_with_loss(client, created.id, {"w": [1.0, -1.0, 0.5]}, 0.75, **{"Idempotency-Key": "one"}))

    assert replay["metrics"] is None
    assert {key: value for key, value in replay.items() if key != "metrics"} == {
        key: value for key, value in first.items() if key != "metrics"
    }
    assert kept_steps(client, created.id) == [2]


def test_after_the_retention_settings_are_lowered_the_next_thinning_keeps_what_they_document(
    new_database: Callable[[], str], make_client: ClientFactory
) -> None:
    url = new_database()
    roomy = make_client(url, metrics_recent_steps=30, metrics_every=3)
    created = create_session(roomy, ONE_PARAM)
    for number in range(1, 31):
        ok(step_with_loss(roomy, created.id, {"w": [1.0, -1.0, float(number)]}))
    assert kept_steps(roomy, created.id) == list(range(1, 31))

    tight = make_client(url, metrics_recent_steps=RECENT, metrics_every=EVERY)
    for number in range(31, 34):
        ok(step_with_loss(tight, created.id, {"w": [1.0, -1.0, float(number)]}))

    assert kept_steps(tight, created.id) == [*range(EVERY, 33 - RECENT + 1, EVERY), *range(33 - RECENT + 1, 34)]


def test_a_metric_that_is_not_finite_is_null_in_the_answer_and_the_history_and_the_step_stands(
    client: TestClient,
) -> None:
    # Params past 1e154: their squares, and so param_norm, overflow float64; the step itself is ordinary.
    created = create_session(client, {"optimizer": "rmsprop", "dtype": "float64", "params": {"w": [1e200, 2.0]}})

    answer = ok(step_with_loss(client, created.id, {"w": [1.0, 0.5]}, 0.5))

    assert answer["step"] == 1
    assert answer["metrics"]["param_norm"] is None
    assert answer["metrics"]["grad_norm"] == pytest.approx(float(np.hypot(1.0, 0.5)), rel=RELATIVE)
    [item] = all_history(client, created.id)
    assert item["param_norm"] is None
    assert without_time(item) == {"step": 1, **answer["metrics"]}
