"""What the service tells operators about itself: Prometheus metrics (``metrics.py``), what each request did
(``requests.py``), the log's formats (``logs.py``) and, when configured, OpenTelemetry traces (``tracing.py``).

Imports nothing of the service above it; the HTTP layer's middleware (``api/instrumentation.py``) and the
domain's observer (``sessions/observer.py``) feed it."""
