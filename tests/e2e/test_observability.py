"""What a real server tells about itself: metrics summed over its worker processes, and its log lines.

``serve --workers 2`` with ``OPTIM_LOG_FORMAT=json``: steps sent on fresh connections land on both workers
(the kernel spreads connections over their sockets), and a scrape of either counts them all; every line the
server writes is one JSON object, the access line of a step with its route, status, duration, session, step
and request id. The default text log has the request's id on its access line too.
"""

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.server_process import ServerProcess, sqlite_url

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="workers share the port with SO_REUSEPORT")

WORKERS = 2
STEPS = 40
REPLAYS = 4
STARTUP_TIMEOUT = 30.0
STEP_ROUTE = "/v1/sessions/{session_id}/step"
BODY = {"optimizer": "rprop", "params": {"w": [1.0, 2.0, 3.0]}}
GRADS = {"grads": {"w": [0.5, -0.5, 0.25]}}


def log_lines(server: ServerProcess) -> list[str]:
    """What the server wrote, without the line the test helper writes before it."""
    return [line for line in server.log_tail(1 << 24).splitlines() if line and not line.startswith("=== ")]


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_lines(server)]


def wait_until_every_worker_serves(server: ServerProcess) -> None:
    """Until both workers have logged the end of their startup (connections go to those that listen)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        started = {line["process"] for line in json_lines(server) if line["message"] == "Application startup complete."}
        if len(started) == WORKERS:
            return
        assert time.monotonic() < deadline, f"not every worker started:\n{server.log_tail()}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("observed")
    with ServerProcess(
        sqlite_url(directory / "optim.sqlite3"), log_dir=directory, workers=WORKERS, env={"OPTIM_LOG_FORMAT": "json"}
    ) as running:
        wait_until_every_worker_serves(running)
        yield running


@pytest.fixture(scope="module")
def stepped(server: ServerProcess) -> str:
    """A session stepped STEPS times, REPLAYS of them sent twice with their Idempotency-Key, each request on a
    connection of its own, with the request id ``step-N`` (``replay-N`` for the second sending)."""
    created = httpx.post(f"{server.base_url}/v1/sessions", json=BODY)
    assert created.status_code == 201, created.text
    session_id: str = created.json()["id"]
    url = f"{server.base_url}/v1/sessions/{session_id}/step"
    for index in range(STEPS):
        headers = {"X-Request-ID": f"step-{index}", "Idempotency-Key": f"key-{index}"}
        assert httpx.post(url, json=GRADS, headers=headers).status_code == 200
        if index < REPLAYS:
            again = {**headers, "X-Request-ID": f"replay-{index}"}
            assert httpx.post(url, json=GRADS, headers=again).status_code == 200
    return session_id


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{server.base_url}/metrics")  # a new connection: either worker may answer
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def access_lines(server: ServerProcess, route: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(server) if line["logger"] == "service.access" and line["route"] == route]


def test_each_worker_s_scrape_counts_the_steps_both_workers_served(server: ServerProcess, stepped: str) -> None:
    served_by = Counter(line["process"] for line in access_lines(server, STEP_ROUTE))
    assert len(served_by) == WORKERS, f"the steps all went to one worker: {served_by}"

    scrapes = [scrape(server) for _ in range(8)]

    answered_by = Counter(line["process"] for line in access_lines(server, "/metrics"))
    assert len(answered_by) == WORKERS, f"one worker answered every scrape: {answered_by}"
    for samples in scrapes:
        steps = {"optimizer": "rprop", "transport": "json"}
        assert samples[("optim_steps_total", frozenset({**steps, "outcome": "ok"}.items()))] == STEPS
        assert samples[("optim_steps_total", frozenset({**steps, "outcome": "replayed"}.items()))] == REPLAYS
        assert samples[("optim_idempotent_replays_total", frozenset())] == REPLAYS
        assert samples[("optim_commit_duration_seconds_count", frozenset())] == STEPS
        request = {"method": "POST", "route": STEP_ROUTE, "status": "200"}
        assert samples[("optim_http_requests_total", frozenset(request.items()))] == STEPS + REPLAYS
        assert samples[("optim_sessions", frozenset())] == 1


def test_every_log_line_is_a_json_object_and_each_step_s_access_line_has_its_fields(
    server: ServerProcess, stepped: str
) -> None:
    lines = json_lines(server)

    for line in lines:
        assert {"time", "level", "logger", "message", "request_id", "process"} <= set(line), line
    by_id = {line["request_id"]: line for line in access_lines(server, STEP_ROUTE)}
    for index in range(STEPS):
        line = by_id[f"step-{index}"]
        assert line["method"] == "POST"
        assert line["status"] == 200
        assert line["session_id"] == stepped
        assert line["step"] == index + 1
        assert isinstance(line["duration_ms"], float)
        assert line["level"] == "INFO"
    for index in range(REPLAYS):
        assert by_id[f"replay-{index}"]["step"] == index + 1
    assert not [line for line in lines if line["logger"] == "service.access" and line["request_id"] is None]


def test_the_text_log_has_the_request_id_on_the_access_line(tmp_path: Path) -> None:
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path) as server:
        assert httpx.get(f"{server.base_url}/nowhere", headers={"X-Request-ID": "text-1"}).status_code == 404
        server.stop()
        lines = log_lines(server)

    (access,) = [line for line in lines if "[request text-1]" in line]
    assert "] [INFO] GET unmatched 404 " in access
