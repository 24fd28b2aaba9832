"""Idempotency-Key records are bounded overall: by age, and by the bytes of first responses over all sessions.

Per session, a count of keys and a byte budget of responses already bound them
(test_step.py). Over the whole database, records older than their time to live are
forgotten, and beyond a total of response bytes the oldest responses are dropped (their
keys stay, so a retry is refused with 409 rather than applied again). A background
sweep does both; the tests read the database to see it done.
"""

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import sqlalchemy as sa

from tests.api.conftest import ClientFactory, assert_problem, create_session, ok, same, step

SWEEP_SECONDS = 0.1


def records(database_url: str) -> list[Any]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            query = "SELECT session_id, key, length(params) AS size FROM idempotency_records ORDER BY seq"
            return list(connection.execute(sa.text(query)))
    finally:
        engine.dispose()


def eventually(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_records_older_than_their_time_to_live_are_forgotten(
    new_database: Callable[[], str], make_client: ClientFactory
) -> None:
    url = new_database()
    client = make_client(url, idempotency_key_ttl_seconds=1.0, idempotency_sweep_seconds=SWEEP_SECONDS)
    created = create_session(client, {"optimizer": "rprop", "params": {"w": [1.0, 2.0]}})
    ok(step(client, created.id, {"w": [1.0, 1.0]}, **{"Idempotency-Key": "early"}))
    assert [row.key for row in records(url)] == ["early"]

    time.sleep(1.0)
    ok(step(client, created.id, {"w": [1.0, 1.0]}, **{"Idempotency-Key": "late"}))

    eventually(lambda: [row.key for row in records(url)] == ["late"], "the early record is forgotten, the late kept")


def test_first_responses_beyond_the_total_over_all_sessions_are_dropped_oldest_first_and_retries_get_409(
    new_database: Callable[[], str], make_client: ClientFactory
) -> None:
    url = new_database()
    # Each response holds 1000 float32 params (4000 bytes and a header): three fit in 13000 bytes.
    client = make_client(
        url,
        idempotency_total_response_bytes=13_000,
        idempotency_sweep_seconds=SWEEP_SECONDS,
        idempotency_response_bytes_kept=1 << 20,
    )
    rng = np.random.default_rng(3)
    sessions = [
        create_session(client, {"optimizer": "rmsprop", "params": {"w": rng.standard_normal(1000)}}) for _ in range(2)
    ]
    sent = [(sessions[index % 2], f"key-{index}", {"w": rng.standard_normal(1000)}) for index in range(6)]
    firsts = [ok(step(client, session.id, grads, **{"Idempotency-Key": key})) for session, key, grads in sent]

    def kept() -> list[int]:
        return [row.size for row in records(url)]

    eventually(lambda: sum(kept()) <= 13_000, "the responses kept fit in the total")
    sizes = kept()
    assert len(sizes) == 6, "every key is still known"
    assert all(size == 0 for size in sizes[:3]), sizes
    assert all(size > 0 for size in sizes[3:]), sizes

    for session, key, grads in sent[:2]:  # their sessions have moved on since: the responses are gone
        assert_problem(step(client, session.id, grads, **{"Idempotency-Key": key}), 409)
    replays = [ok(step(client, session.id, grads, **{"Idempotency-Key": key})) for session, key, grads in sent[3:]]
    assert same(replays, firsts[3:])
    assert [ok(client.get(session.url))["step"] for session in sessions] == [3, 3]


def test_a_session_keeps_the_records_of_its_newest_versions_and_forgets_the_rest(
    new_database: Callable[[], str], make_client: ClientFactory
) -> None:
    url = new_database()
    client = make_client(url, idempotency_keys_kept=3)
    created = create_session(client, {"optimizer": "rprop", "params": {"w": [1.0, 2.0]}})
    for key in ["a", "b", "c"]:
        ok(step(client, created.id, {"w": [1.0, 1.0]}, **{"Idempotency-Key": key}))
    assert [row.key for row in records(url)] == ["a", "b", "c"]

    ok(client.patch(created.url, json={"hyperparameters": {"lr": 0.02}}))  # a version without a record
    ok(step(client, created.id, {"w": [1.0, 1.0]}, **{"Idempotency-Key": "d"}))

    # Versions 2, 3, 4 were steps a, b, c; 5 the PATCH; 6 step d: the newest three are 4, 5 and 6.
    assert [row.key for row in records(url)] == ["c", "d"], "only the newest three versions' records are kept"
    before = ok(client.get(created.url))["step"]
    replayed = ok(step(client, created.id, {"w": [1.0, 1.0]}, **{"Idempotency-Key": "d"}))
    assert replayed["step"] == before == 4
