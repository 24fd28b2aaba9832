"""OpenTelemetry traces: off unless configured; when on, each request's span carries the request's id.

The spans go to the SDK's in-memory exporter, set as the process's tracer provider (which the service uses
when one is set, as it would ``opentelemetry-instrument``'s).
"""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.observability.tracing import CONFIGURING_VARIABLES, REQUEST_ID_ATTRIBUTE
from tests.api.conftest import ClientFactory, create_session, ok, step

BODY = {"optimizer": "rmsprop", "params": {"w": [1.0, 2.0]}}


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider, exporting to memory (a provider is set once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    for name in (*CONFIGURING_VARIABLES, "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    exporter.clear()
    yield exporter
    exporter.clear()


def server_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER]


def test_a_request_s_span_carries_the_id_the_client_gave(
    make_client: ClientFactory, spans: InMemorySpanExporter
) -> None:
    client = make_client(otel=True)

    ok(client.get("/healthz", headers={"X-Request-ID": "trace-me-1"}))

    (span,) = server_spans(spans)
    assert span.attributes is not None
    assert span.attributes[REQUEST_ID_ATTRIBUTE] == "trace-me-1"
    assert span.name == "GET /healthz"


def test_a_step_s_span_carries_the_id_the_server_chose(make_client: ClientFactory, spans: InMemorySpanExporter) -> None:
    client = make_client(otel=True)
    created = create_session(client, BODY)
    spans.clear()

    answer = step(client, created.id, {"w": [0.5, 0.5]})

    ok(answer)
    (span,) = server_spans(spans)
    assert span.attributes is not None
    assert span.attributes[REQUEST_ID_ATTRIBUTE] == answer.headers["x-request-id"]
    assert span.name == "POST /v1/sessions/{session_id}/step"


def test_the_standard_service_name_variable_turns_tracing_on(
    make_client: ClientFactory, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "optim-test")
    client = make_client()

    ok(client.get("/healthz"))

    assert len(server_spans(spans)) == 1


def test_without_configuration_nothing_is_traced(client: TestClient, spans: InMemorySpanExporter) -> None:
    ok(client.get("/healthz"))

    assert [(span.name, span.kind) for span in spans.get_finished_spans()] == []


def test_a_disabled_sdk_traces_nothing_even_when_asked(
    make_client: ClientFactory, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    client = make_client(otel=True)

    ok(client.get("/healthz"))

    assert [(span.name, span.kind) for span in spans.get_finished_spans()] == []
