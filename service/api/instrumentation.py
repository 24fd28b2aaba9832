"""Each request counted, timed and logged: the metrics of ``observability/metrics.py`` and one access line.

A pure ASGI middleware just inside ``RequestIds`` (so that its line has the request's id) and outside
everything else (so that it sees every answer, a 401, a 421 or a 500 included). It labels a request by its
route's template (``/v1/sessions/{session_id}/step``), never by its path (``RouteTemplates``).
"""

import logging
import re
import time
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.middleware import HttpMiddleware
from service.api.paths import route_path
from service.api.sessions import STEP_ROUTE
from service.observability.logs import access_log, log_access
from service.observability.metrics import UNMATCHED, record_request
from service.observability.requests import RequestFacts, current_facts
from service.sessions.service import SESSION_ID
from service.wire.media_types import SAFETENSORS

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RouteTemplates:
    """The templates of an app's routes, to name the route of a request the router did not see (refused
    before it, or seen in a copy of its scope: a HEAD): the documented paths and the app's own routes."""

    def __init__(self) -> None:
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    def of(self, scope: Scope) -> tuple[str, dict[str, Any]]:
        """The template of the route that served (or would serve) the request, and its path parameters."""
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return str(route.path), scope.get("path_params", {})
        path = route_path(scope)
        for pattern, template in self._compiled(scope["app"]):
            match = pattern.fullmatch(path)
            if match is not None:
                return template, match.groupdict()
        return UNMATCHED, {}

    def _compiled(self, app: Any) -> list[tuple[re.Pattern[str], str]]:
        if self._patterns is None:
            templates = [*app.openapi()["paths"], *(route.path for route in app.routes if hasattr(route, "path"))]
            self._patterns = [(compile_path(template)[0], template) for template in dict.fromkeys(templates)]
        return self._patterns


def _transport(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return "safetensors" if value.decode("latin-1").lower().startswith(SAFETENSORS) else "json"
    return "json"


class Instrumentation(HttpMiddleware):
    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self._routes = RouteTemplates()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        facts = RequestFacts()
        token = current_facts.set(facts)
        status = 0
        """0 until an answer starts: a request the client left before it was answered keeps it."""
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        finally:
            current_facts.reset(token)
            self._observe(scope, facts, status, time.perf_counter() - started, received)

    def _observe(self, scope: Scope, facts: RequestFacts, status: int, seconds: float, received: int) -> None:
        method = scope["method"]
        route, path_params = self._routes.of(scope)
        record_request(
            method=method,
            route=route,
            status=status,
            seconds=seconds,
            body_bytes=received if method in BODY_METHODS else None,
            facts=facts,
            step_transport=_transport(scope) if route == STEP_ROUTE.path and method == "POST" else None,
        )
        if access_log.isEnabledFor(logging.INFO):
            session_id = path_params.get("session_id")
            log_access(
                method=method,
                route=route,
                status=status,
                seconds=seconds,
                session_id=session_id if isinstance(session_id, str) and SESSION_ID.fullmatch(session_id) else None,
                step=facts.step,
            )
