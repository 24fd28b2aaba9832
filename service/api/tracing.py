"""A span for every request (OpenTelemetry's FastAPI instrumentation), with the request's id on it.

Installed by ``create_app`` only when tracing is configured (``observability/tracing.py``): without it,
nothing of OpenTelemetry is imported, and requests pass no layer of it.
"""

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.middleware import HttpMiddleware
from service.api.request_ids import current_request_id
from service.observability.tracing import REQUEST_ID_ATTRIBUTE, Tracing


class RequestIdOnSpan(HttpMiddleware):
    """Just inside ``RequestIds``: the request's id on the request's span (the instrumentation's
    middleware, outside every other, has made it the current span)."""

    def __init__(self, app: ASGIApp) -> None:
        from opentelemetry import trace

        super().__init__(app)
        self._current_span = trace.get_current_span

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = current_request_id.get()
        if request_id is not None:
            self._current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
        await self.app(scope, receive, send)


def trace_requests(app: FastAPI, tracing: Tracing) -> None:
    """A span for every request to ``app``, with its id: add ``RequestIds`` after this, so that it is the
    outer of the two."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # The spans of each message sent and received would cost a large step more than its arithmetic.
    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracing.provider, exclude_spans=["receive", "send"])
    app.add_middleware(RequestIdOnSpan)
