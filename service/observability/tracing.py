"""OpenTelemetry traces, off unless configured: a span for every request, carrying the request's id.

Tracing is on when ``OPTIM_OTEL`` is true, or when the standard environment asks for it
(``OTEL_SERVICE_NAME``, ``OTEL_TRACES_EXPORTER`` or an ``OTEL_EXPORTER_OTLP_*ENDPOINT``), unless
``OTEL_SDK_DISABLED`` is true. It needs the ``otel`` extra (``pip install 'optim-service[otel]'``); the
packages are imported only then. Spans go to the tracer provider already set in the process (by
``opentelemetry-instrument``, say), else to one of the SDK's that exports them as ``OTEL_TRACES_EXPORTER``
says: ``otlp`` (the default; OTLP over HTTP, configured by the ``OTEL_EXPORTER_OTLP_*`` variables),
``console`` or ``none``.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any

REQUEST_ID_ATTRIBUTE = "optim.request_id"
"""The span attribute holding the request's id (its ``X-Request-ID``)."""
CONFIGURING_VARIABLES = (
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
DEFAULT_SERVICE_NAME = "optim-service"

log = logging.getLogger("service")


class TracingUnavailable(Exception):
    """Tracing was asked for, and the ``otel`` extra is not installed."""


def tracing_wanted(enabled: bool) -> bool:
    """Whether to trace: ``enabled`` (OPTIM_OTEL) or the standard variables, unless the SDK is disabled."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return enabled or any(os.environ.get(name) for name in CONFIGURING_VARIABLES)


@dataclass(frozen=True)
class Tracing:
    provider: Any
    """The ``TracerProvider`` spans go to."""
    owned: bool
    """Made here (and so to be shut down, which exports the spans still buffered, when the app stops)."""

    def shutdown(self) -> None:
        if self.owned:
            self.provider.shutdown()


def configured_tracing(enabled: bool) -> Tracing | None:
    """The process's tracing when it is wanted (``tracing_wanted``), else None. Asked for by ``OPTIM_OTEL``
    without the ``otel`` extra, it raises ``TracingUnavailable``; by the OTEL_* variables alone, it warns."""
    if not tracing_wanted(enabled):
        return None
    try:
        return set_up_tracing()
    except TracingUnavailable as missing:
        if enabled:
            raise
        log.warning("%s; serving without traces", missing)
        return None


def set_up_tracing() -> Tracing:
    """The tracer provider of the process: the one already set, else a new SDK one, set as the global one.

    Raises ``TracingUnavailable`` without the ``otel`` extra."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as missing:
        raise TracingUnavailable(
            f"tracing is configured, but {missing.name} is not installed: pip install 'optim-service[otel]'"
        ) from None
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return Tracing(provider=current, owned=False)
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        exporter: SpanExporter | None = None
        match name.strip().lower():
            case "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter()
            case "console":
                exporter = ConsoleSpanExporter()
            case "none" | "":
                pass
            case other:
                log.warning("OTEL_TRACES_EXPORTER names %r, which this service does not export to", other)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return Tracing(provider=provider, owned=True)
