"""Every request has an id: the client's ``X-Request-ID`` when it is sane, else a new one.

The id goes back in the ``X-Request-ID`` header of every response, is the ``instance`` of every
problem (``service/errors.py``), and is on every log line the service writes while it serves the
request (``RequestIdFilter``). A pure ASGI middleware, the outermost: it costs the hot step a header
scan and a random id, and nothing that reads or copies the body.
"""

import logging
import os
import re
from contextvars import ContextVar

from starlette.types import Message, Receive, Scope, Send

from service.api.middleware import HttpMiddleware

HEADER = b"x-request-id"
MAX_LENGTH = 128
SANE = re.compile(rb"[A-Za-z0-9._~:@!$&'()*+,;=/-]{1,%d}" % MAX_LENGTH)
"""A client's id is kept if it is short and made of characters a URI holds as they are (no space, quote,
``%``, ``#`` or ``?``): the id is then the problem's ``instance`` as it is, a valid URI reference."""

current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
"""The id of the request being served in this context (worker threads of the request inherit it)."""


def new_request_id() -> str:
    """128 random bits as 32 hex digits (as a uuid4's hex, without building the UUID: a tenth of the cost)."""
    return os.urandom(16).hex()


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if it is sane, else a new id."""
    for name, value in scope["headers"]:
        if name == HEADER:
            return value.decode("ascii") if SANE.fullmatch(value) else new_request_id()
    return new_request_id()


class RequestIds(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)
        header = (HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Gives each log record ``request_id`` (``-`` outside a request) and ``request`` (`` [request ID]``,
    or empty outside a request), for a handler's format to show."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id.get()
        record.request_id = request_id or "-"
        record.request = f" [request {request_id}]" if request_id else ""
        return True
