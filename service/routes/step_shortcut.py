"""POST /v1/sessions/{id}/step, served before FastAPI's routing.

The step is the request a training loop makes thousands of times, and at 1k
params FastAPI's own work per request (matching the path against every route,
solving the endpoint's dependencies, its exit stacks) costs about a third of a
millisecond: more than the optimizer's arithmetic. This middleware recognises the
step's path and calls the same endpoint function the route declares, so the
route, its OpenAPI description and its behaviour stay one thing. Errors are
answered by the app's own exception handlers; what they do not handle goes on to
the outer middleware, as it would from the route.
"""

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.routes.sessions import router, step_session

STEP_ROUTE = next(route for route in router.routes if isinstance(route, APIRoute) and route.endpoint is step_session)
"""The route the shortcut stands in for: its path pattern is the one matched here."""

ExceptionHandler = Callable[[Request, Exception], Any]
"""As the app keeps them: returning a response, or an awaitable of one."""


def _route_path(scope: Scope) -> str:
    """The path the app's routes see: without the root path it is mounted at, as Starlette strips it."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] == "/":
        return path[len(root_path) :]
    return path


def _handler_for(handlers: Mapping[Any, ExceptionHandler], error: Exception) -> ExceptionHandler | None:
    """The app's handler for ``error``'s class or its nearest base, as Starlette looks them up; the
    catch-all ``Exception`` handler is the outer middleware's, as it is for the routes."""
    for cls in type(error).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


class StepShortcut:
    def __init__(self, app: ASGIApp, exception_handlers: Mapping[Any, ExceptionHandler]) -> None:
        self.app = app
        self._handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = (
            STEP_ROUTE.path_regex.match(_route_path(scope))
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if matched is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await step_session(matched["session_id"], request)
        except Exception as error:
            handler = _handler_for(self._handlers, error)
            if handler is None:
                raise
            answered = handler(request, error)
            response = await answered if inspect.isawaitable(answered) else answered
        await response(scope, receive, send)
