"""HTTP connections with bounds: on the time a client may take, and on how many a process holds.

uvicorn's HTTP protocol closes a keep-alive connection that stays idle after a
response, and nothing else: a connection that never sends a request, one whose
request head arrives a byte at a time, and one whose body stops halfway are held
for good. Enough of them use up the process's open files, and from then on no new
client is accepted. This subclass adds what nginx and Go's ``http.Server`` have:

- the head of each request must arrive whole within ``header_timeout`` of the
  connection opening, or of the last response (``client_header_timeout``);
- a body may pause for at most ``body_timeout`` between two reads (``client_body_timeout``);
- a process holds at most ``max_connections``; past it, the connection idle the
  longest (between requests, or before its first) is closed to make room, as
  nginx reuses idle keep-alive connections, and only when none is idle is the new
  connection answered 503 and closed.

A request the parser refuses (a malformed request line or header, a method it does not
know) never reaches the app; it is answered here as a problem too (400 or 501), where
uvicorn answers text/plain, and the connection is closed.

It extends the protocol rather than replacing it: parsing, flow control and the
ASGI cycle stay uvicorn's.
"""

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.request_ids import new_request_id
from service.problem_types import PROBLEM_TYPES, type_uri


def closing_problem(slug: str, detail: str, **headers: str) -> bytes:
    """A whole HTTP/1.1 response, for the connection to write before it closes: a problem of type ``slug``
    with a new request id (as ``instance`` and ``X-Request-ID``), and ``Connection: close``."""
    kind = PROBLEM_TYPES[slug]
    request_id = new_request_id()
    body = orjson.dumps(
        {"type": type_uri(slug), "title": kind.title, "status": kind.status, "detail": detail, "instance": request_id}
    )
    head = [
        f"HTTP/1.1 {kind.status} {HTTPStatus(kind.status).phrase}",
        "content-type: application/problem+json",
        f"x-request-id: {request_id}",
        *(f"{name.lower().replace('_', '-')}: {value}" for name, value in headers.items()),
        "connection: close",
        f"content-length: {len(body)}",
    ]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


def busy_response() -> bytes:
    """What a connection gets when the process holds as many as it may and none of them is idle."""
    return closing_problem(
        "too-many-connections", "every connection this server process holds is in use; retry", retry_after="1"
    )


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000


class _Idle:
    """The process's idle connections, oldest first."""

    def __init__(self) -> None:
        self._connections: OrderedDict[int, BoundedHttpProtocol] = OrderedDict()

    def add(self, connection: "BoundedHttpProtocol") -> None:
        self._connections[id(connection)] = connection
        self._connections.move_to_end(id(connection))

    def discard(self, connection: "BoundedHttpProtocol") -> None:
        self._connections.pop(id(connection), None)

    def oldest(self, other_than: "BoundedHttpProtocol") -> "BoundedHttpProtocol | None":
        for connection in self._connections.values():
            if connection is not other_than:
                return connection
        return None


class BoundedHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    _idle: ClassVar[_Idle] = _Idle()

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type["BoundedHttpProtocol"]:
        """This protocol with ``limits`` (uvicorn takes a protocol class, and builds one per connection)."""
        return type("BoundedHttpProtocol", (cls,), {"limits": limits, "_idle": _Idle()})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self.idle_since = time.monotonic()

    # The connection's life.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._make_room():
            transport.write(busy_response())
            transport.close()
            return
        self._now_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle.discard(self)
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, but for what it answers a request the parser refuses: text/plain there.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            self._refuse("method-not-implemented", "the request's method is not one this server knows")
        except httptools.HttpParserError:
            self._refuse("malformed-request", "the request line or headers are not valid HTTP/1.1")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._idle.discard(self)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._set_deadline(self.limits.body_timeout, self._on_body_timeout)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._set_deadline(self.limits.body_timeout, self._on_body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._now_idle()

    # Helpers.

    def _refuse(self, slug: str, detail: str) -> None:
        """Answer a request that never reached the app with a problem, and close: the parser cannot go on."""
        self.logger.warning("Invalid HTTP request received: %s.", detail)
        self.transport.write(closing_problem(slug, detail))
        self.transport.close()

    def _now_idle(self) -> None:
        self.idle_since = time.monotonic()
        self._idle.add(self)
        self._set_deadline(self.limits.header_timeout, self._on_header_timeout)

    def _make_room(self) -> bool:
        """Close the oldest idle connection while this process holds too many; False if none is idle."""
        while len(self.connections) > self.limits.max_connections:
            oldest = self._idle.oldest(other_than=self)
            if oldest is None:
                return False
            self._idle.discard(oldest)
            oldest.transport.close()
            self.connections.discard(oldest)
        return True

    def _set_deadline(self, seconds: float, expire: Any) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, expire)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_header_timeout(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _on_body_timeout(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The application has not read what arrived: the client is not the slow one.
            self._set_deadline(self.limits.body_timeout, self._on_body_timeout)
            return
        self.transport.close()
