"""Methods as RFC 9110 has them: ``HEAD`` on every ``GET`` route, conditional ``GET``, ``OPTIONS`` on
every path, and ``Allow`` naming every method a path takes.

FastAPI declares one route per method, so several routes share a path: Starlette's router answers a
405 with the methods of the first of them only, and ``OPTIONS`` with a 405. ``allowed_methods`` asks
every route. What a path allows depends on its template alone, so ``OPTIONS`` needs no API key and
tells nothing about the session an id names.
"""

from collections.abc import Sequence

from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Receive, Scope, Send

from service.api.conditional import conditional
from service.api.middleware import HttpMiddleware

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
"""The methods a route of the service may take; HEAD and OPTIONS come with them."""


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route takes on the scope's path (with HEAD beside GET, and OPTIONS); none if no
    route has the path.

    Each method is asked of the router's routes as a request of it would be (included routers answer for
    theirs), through nothing but ``BaseRoute.matches``."""
    allowed = [
        method
        for method in METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    if not allowed:
        return []
    if "GET" in allowed:
        allowed.insert(1, "HEAD")
    return [*allowed, "OPTIONS"]


class Methods(HttpMiddleware):
    """``HEAD`` is served as ``GET`` without the body (same status and headers); a ``GET`` or ``HEAD`` with
    ``If-None-Match`` may be answered 304 (``conditional``); ``OPTIONS`` on a path some route has is
    answered 204 with ``Allow``. Every other method passes straight through: one layer, not three, for
    the step."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "GET" or method == "HEAD":
            if_none_match = next((value for name, value in scope["headers"] if name == b"if-none-match"), None)
            if if_none_match is not None:
                send = conditional(send, if_none_match)
            if method == "HEAD":
                scope, send = {**scope, "method": "GET"}, _without_body(send)
            await self.app(scope, receive, send)
            return
        if method == "OPTIONS":
            allowed = allowed_methods(scope["app"].router.routes, scope)
            if allowed:
                await Response(status_code=204, headers={"Allow": ", ".join(allowed)})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _without_body(send: Send) -> Send:
    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return send_head
