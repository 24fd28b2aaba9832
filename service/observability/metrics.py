"""The service's Prometheus metrics: what they are, what feeds them, and their text at ``GET /metrics``.

Every label has a small fixed set of values (no session, tenant or raw path), so that the number of
series stays bounded whatever clients send. Under ``optim-service serve`` each worker process writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, set up by
``server/metrics_files.py`` before anything imports prometheus-client) and a scrape of any worker sums
them all; elsewhere (tests, a bare ``uvicorn``) they live in the process's default registry.

``optim_sessions`` is not kept by any process: it is read from storage at each scrape (the sum of the
tenants' session counts, which every creation and deletion keeps in its own transaction).
"""

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.observability.requests import RequestFacts, current_facts

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name; any other is ``other``."""
UNMATCHED = "unmatched"
"""The route label of a path no route has."""
UNKNOWN_OPTIMIZER = "unknown"
"""The optimizer label of a step refused before its session was read (no key, no such session, a bad body)."""

OUTCOMES = ("ok", "replayed", "skipped", "conflict", "rejected", "error")
"""A step's outcome: applied; answered again with its Idempotency-Key's first response; answered without
being applied (non-finite gradients, on a session that skips them); refused because of
the session's or the key's state (409, 412, or a key reused with another body); refused for anything else
the client sent (4xx); failed on the server's side (5xx)."""
REASONS: dict[str, str] = {
    "unauthenticated": "unauthenticated",
    "rate-limited": "rate_limited",
    "quota-exceeded": "quota",
    "body-too-large": "too_large",
    "not-your-session": "forbidden",
    "admin-required": "forbidden",
    "not-found": "not_found",
    "session-not-found": "not_found",
    "precondition-failed": "conflict",
    "idempotency-key-in-flight": "conflict",
    "idempotency-key-reused": "conflict",
    "idempotent-response-expired": "conflict",
    "round-not-found": "not_found",
    "round-moved-on": "conflict",
    "round-answer-expired": "conflict",
    "contribution-changed": "conflict",
    "malformed-request": "invalid",
    "malformed-body": "invalid",
    "malformed-header": "invalid",
    "validation-error": "invalid",
    "not-acceptable": "invalid",
    "unsupported-media-type": "invalid",
    "unsupported-content-encoding": "invalid",
    "method-not-allowed": "invalid",
    "host-not-allowed": "invalid",
    "http-error": "invalid",
}
"""The reason label of each client error's problem type; ``optim_rejected_total`` counts 4xx answers only."""
REASONS_BY_STATUS = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 409: "conflict", 412: "conflict"}
REASONS_BY_STATUS |= {413: "too_large", 429: "rate_limited"}
"""The reason of a 4xx answer that is no problem document of the service (``invalid`` otherwise)."""

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BYTES_BUCKETS = tuple(256 * 4**power for power in range(12))
"""256 B to 1 GiB (the largest body the service reads by default), by fours."""

HTTP_REQUESTS = Counter(
    "optim_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "optim_http_request_duration_seconds",
    "From a request's first byte to its answer's last, by method and route template.",
    ["method", "route"],
    buckets=SECONDS_BUCKETS,
)
REQUEST_BODY_BYTES = Histogram(
    "optim_request_body_bytes", "Bytes of request bodies read, by route template.", ["route"], buckets=BYTES_BUCKETS
)
STEPS = Counter(
    "optim_steps_total",
    "Step requests, by optimizer, body format (json or safetensors) and outcome "
    "(ok, replayed, conflict, rejected, error).",
    ["optimizer", "transport", "outcome"],
)
STEP_DURATION = Histogram(
    "optim_step_duration_seconds",
    "A step applied, in the domain: from asking for its session (waits included) to the end of its commit.",
    buckets=SECONDS_BUCKETS,
)
COMMIT_DURATION = Histogram(
    "optim_commit_duration_seconds", "The commit of a step applied, in storage.", buckets=SECONDS_BUCKETS
)
REPLAYS = Counter(
    "optim_idempotent_replays_total", "Requests answered with the first response of their Idempotency-Key."
)
REJECTED = Counter("optim_rejected_total", "Requests refused with a 4xx status, by reason.", ["reason"])


class StepMetrics:
    """The domain's observer (``sessions/observer.py``): times steps and commits, counts replays, and notes
    what the request's step was for its request's metrics and access line."""

    def step_held(self, optimizer: str) -> None:
        facts = current_facts.get()
        if facts is not None:
            facts.optimizer = optimizer

    def replayed(self, step: int) -> None:
        REPLAYS.inc()
        facts = current_facts.get()
        if facts is not None:
            facts.replayed, facts.step = True, step

    def step_skipped(self) -> None:
        facts = current_facts.get()
        if facts is not None:
            facts.skipped = True

    def step_applied(self, *, step: int, seconds: float, commit_seconds: float) -> None:
        STEP_DURATION.observe(seconds)
        COMMIT_DURATION.observe(commit_seconds)
        facts = current_facts.get()
        if facts is not None:
            facts.step = step


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def rejection_reason(status: int, problem: str | None) -> str:
    """The reason label of a 4xx answer, from its problem type when it has one."""
    if problem is not None and problem in REASONS:
        return REASONS[problem]
    return REASONS_BY_STATUS.get(status, "invalid")


def step_outcome(status: int, facts: RequestFacts) -> str:
    if status < 400:
        return "replayed" if facts.replayed else "skipped" if facts.skipped else "ok"
    if status >= 500 or status == 0:
        return "error"
    return "conflict" if rejection_reason(status, facts.problem) == "conflict" else "rejected"


def record_request(
    *,
    method: str,
    route: str,
    status: int,
    seconds: float,
    body_bytes: int | None,
    facts: RequestFacts,
    step_transport: str | None,
) -> None:
    """Count and time one answered request; ``body_bytes`` if it may have a body, ``step_transport`` (json or
    safetensors) if it was a step."""
    method = method_label(method)
    _child(HTTP_REQUESTS, method, route, str(status)).inc()
    _child(HTTP_DURATION, method, route).observe(seconds)
    if body_bytes is not None:
        _child(REQUEST_BODY_BYTES, route).observe(body_bytes)
    if 400 <= status < 500:
        _child(REJECTED, rejection_reason(status, facts.problem)).inc()
    if step_transport is not None:
        _child(STEPS, facts.optimizer or UNKNOWN_OPTIMIZER, step_transport, step_outcome(status, facts)).inc()


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per label set (every label's values are a bounded set):
    ``labels`` validates and locks on each call, a quarter of the cost of counting a request."""
    return metric.labels(*labels)


class _Sessions:
    """``optim_sessions``, read when scraped: omitted when storage does not answer (``count`` gives None)."""

    def __init__(self, count: Callable[[], int | None]) -> None:
        self._count = count

    def collect(self) -> Iterator[Metric]:
        count = self._count()
        if count is not None:
            yield GaugeMetricFamily("optim_sessions", "Sessions in storage, of every tenant.", value=count)


class _Registered:
    """The metrics of a registry, as one collector of another."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def exposition(count_sessions: Callable[[], int | None], accept: str | None) -> tuple[bytes, str]:
    """Every metric, of every worker process when there are several, in the format ``accept`` asks for
    (Prometheus text or OpenMetrics), and its media type. Reads files and storage: call it off the event loop."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get(MULTIPROCESS_DIRECTORY)
    if directory:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # its __init__ is unannotated
    else:
        registry.register(_Registered(REGISTRY))
    registry.register(_Sessions(count_sessions))
    encode, media_type = choose_encoder(accept or "")
    return encode(registry), media_type
