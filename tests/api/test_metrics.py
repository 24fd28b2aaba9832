"""GET /metrics: the service's Prometheus metrics, counted as requests are answered (in-process; the sums over
worker processes are in tests/e2e/test_observability.py).

The metrics of an in-process service live in the test process's default registry, which every service of
the process shares: each test reads how much a metric moved while it ran.
"""

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.observability.metrics import REASONS
from service.problem_types import PROBLEM_TYPES
from tests.api.conftest import (
    SAFETENSORS,
    ClientFactory,
    assert_problem,
    binary,
    create_session,
    ok,
    send,
    step,
    step_safetensors,
)
from tests.tenancy import bearer, create_key, run_cli

BODY = {"optimizer": "rprop", "params": {"w": [1.0, 2.0]}}
GRADS = {"w": [0.5, -0.5]}
STEP_ROUTE = "/v1/sessions/{session_id}/step"
METRICS = (
    "optim_http_requests",
    "optim_http_request_duration_seconds",
    "optim_steps",
    "optim_step_duration_seconds",
    "optim_commit_duration_seconds",
    "optim_request_body_bytes",
    "optim_sessions",
    "optim_idempotent_replays",
    "optim_rejected",
)
"""Every metric docs/api.md lists, by family name (a counter's samples end in ``_total``)."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    """Every sample /metrics answers, by name and labels; the text must parse as Prometheus's."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _transport() -> str:
    return "safetensors" if binary() else "json"


def test_the_metrics_parse_as_prometheus_text_and_hold_every_documented_metric(client: TestClient) -> None:
    created = create_session(client, BODY)
    step(client, created.id, GRADS)

    response = client.get("/metrics")

    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert set(METRICS) <= families, set(METRICS) - families


def test_steps_are_counted_by_optimizer_transport_and_outcome_and_replays_are_not_applied_again(
    client: TestClient, transport: str
) -> None:
    created = create_session(client, BODY)
    before = scrape(client)

    step(client, created.id, GRADS)
    first = step(client, created.id, GRADS, **{"Idempotency-Key": "k-1"})
    again = step(client, created.id, GRADS, **{"Idempotency-Key": "k-1"})

    after = scrape(client)
    assert ok(first)["step"] == ok(again)["step"] == 2
    labels = {"optimizer": "rprop", "transport": _transport()}
    assert moved(before, after, "optim_steps_total", **labels, outcome="ok") == 2
    assert moved(before, after, "optim_steps_total", **labels, outcome="replayed") == 1
    assert moved(before, after, "optim_idempotent_replays_total") == 1
    assert moved(before, after, "optim_step_duration_seconds_count") == 2
    assert moved(before, after, "optim_commit_duration_seconds_count") == 2
    request = {"method": "POST", "route": STEP_ROUTE}
    assert moved(before, after, "optim_http_requests_total", **request, status="200") == 3
    assert moved(before, after, "optim_http_request_duration_seconds_count", **request) == 3


def test_a_replayed_creation_is_counted_as_a_replay(client: TestClient) -> None:
    before = scrape(client)

    for _ in range(2):
        send(client, "POST", "/v1/sessions", BODY, headers={"Idempotency-Key": "create-1"})

    assert moved(before, scrape(client), "optim_idempotent_replays_total") == 1


def test_a_step_body_is_measured_in_the_bytes_it_had(client: TestClient) -> None:
    created = create_session(client, BODY)
    body = step_safetensors(GRADS)
    before = scrape(client)

    answer = client.post(f"/v1/sessions/{created.id}/step", content=body, headers={"Content-Type": SAFETENSORS})

    after = scrape(client)
    ok(answer)
    assert moved(before, after, "optim_request_body_bytes_sum", route=STEP_ROUTE) == len(body)
    assert moved(before, after, "optim_request_body_bytes_count", route=STEP_ROUTE) == 1
    labels = {"optimizer": "rprop", "transport": "safetensors", "outcome": "ok"}
    assert moved(before, after, "optim_steps_total", **labels) == 1


def test_refused_steps_are_counted_with_their_outcome_and_reason(make_client: ClientFactory) -> None:
    client = make_client(max_json_body_bytes=1024, tenant_max_sessions=1)
    created = create_session(client, BODY)
    url = f"/v1/sessions/{created.id}/step"
    ok(send(client, "POST", url, {"grads": GRADS}, headers={"Idempotency-Key": "k-1"}))
    before = scrape(client)

    assert_problem(send(client, "POST", url, {"grads": {"nope": [1.0, 2.0]}}), 422)
    assert_problem(send(client, "POST", url, raw=b"[" * 2048), 413)
    assert_problem(send(client, "POST", url, {"grads": GRADS}, headers={"If-Match": '"99"'}), 412)
    assert_problem(send(client, "POST", url, {"grads": {"w": [1.0, 1.0]}}, headers={"Idempotency-Key": "k-1"}), 422)
    assert_problem(send(client, "POST", "/v1/sessions/NoSuchSession/step", {"grads": GRADS}), 404)
    assert_problem(send(client, "POST", "/v1/sessions", BODY), 403)

    after = scrape(client)
    json_step = {"transport": "json"}
    assert moved(before, after, "optim_steps_total", optimizer="rprop", **json_step, outcome="rejected") == 1
    assert moved(before, after, "optim_steps_total", optimizer="rprop", **json_step, outcome="conflict") == 2
    # Refused before its session was read: no optimizer to name.
    assert moved(before, after, "optim_steps_total", optimizer="unknown", **json_step, outcome="rejected") == 2
    expected = {"invalid": 1, "too_large": 1, "conflict": 2, "not_found": 1, "quota": 1, "forbidden": 0}
    for reason, count in expected.items():
        assert moved(before, after, "optim_rejected_total", reason=reason) == count, reason
    assert moved(before, after, "optim_step_duration_seconds_count") == 0


def test_keys_are_refused_with_their_reasons_and_the_metrics_need_an_admin_key(make_client: ClientFactory) -> None:
    client = make_client()
    database = client.app.state.service.settings.database_url  # type: ignore[attr-defined]
    admin = create_key(database, "ops", admin=True)
    user = create_key(database, "slow")
    run_cli(database, "tenants", "set", "slow", "--requests-per-second", "0.001", "--burst", "1")
    before = scrape(client, **bearer(admin))

    ok(client.get("/v1/tenant", headers=bearer(user)))
    assert_problem(client.get("/v1/tenant", headers=bearer(user)), 429)
    assert_problem(client.get("/v1/tenant"), 401)
    assert_problem(client.get("/v1/tenant", headers=bearer("osk_not_a_key")), 401)
    assert_problem(client.get("/metrics"), 401)
    refused = assert_problem(client.get("/metrics", headers=bearer(create_key(database, "ops"))), 403)

    after = scrape(client, **bearer(admin))
    assert refused["type"] == "/problems/admin-required"
    assert moved(before, after, "optim_rejected_total", reason="rate_limited") == 1
    assert moved(before, after, "optim_rejected_total", reason="unauthenticated") == 3
    assert moved(before, after, "optim_rejected_total", reason="forbidden") == 1
    assert moved(before, after, "optim_http_requests_total", method="GET", route="/metrics", status="401") == 1


def test_a_server_without_keys_serves_its_metrics_to_anyone_on_loopback(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 200


def test_routes_are_labelled_by_template_so_no_session_id_or_stray_path_makes_a_series(client: TestClient) -> None:
    created = create_session(client, BODY)
    step(client, created.id, GRADS)
    client.get(f"/v1/sessions/{created.id}")
    client.get("/no/such/path-7c1d")
    client.head(f"/v1/sessions/{created.id}/params")

    response = client.get("/metrics")
    samples = scrape(client)

    assert created.id not in response.text
    assert "path-7c1d" not in response.text
    assert value(samples, "optim_http_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert value(samples, "optim_http_requests_total", method="GET", route="/v1/sessions/{session_id}", status="200")
    head = {"method": "HEAD", "route": "/v1/sessions/{session_id}/params", "status": "200"}
    assert value(samples, "optim_http_requests_total", **head) >= 1


def test_an_unknown_method_is_counted_as_other(client: TestClient) -> None:
    before = scrape(client)

    answer = client.request("BREW", "/healthz")

    labels = {"method": "other", "route": "/healthz", "status": str(answer.status_code)}
    assert moved(before, scrape(client), "optim_http_requests_total", **labels) == 1


def test_the_sessions_gauge_is_what_storage_holds(client: TestClient) -> None:
    ids = [create_session(client, BODY).id for _ in range(3)]
    assert value(scrape(client), "optim_sessions") == 3

    ok(client.delete(f"/v1/sessions/{ids[0]}"), 204)

    assert value(scrape(client), "optim_sessions") == 2


def test_openmetrics_is_answered_when_asked_for(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


@pytest.mark.parametrize("slug", sorted(slug for slug, kind in PROBLEM_TYPES.items() if 400 <= kind.status < 500))
def test_every_client_error_the_service_answers_has_a_reason(slug: str) -> None:
    assert slug in REASONS
