"""An HTTP proxy in front of a real server that records every request and injects faults on demand.

    with FaultProxy(server.base_url) as proxy:
        proxy.inject("POST", "/step", drop_response=True)  # forward the next step, then hang up
        proxy.inject("GET", "/params", status=503, retry_after="1")  # answer the next GET /params itself
        client = Client(proxy.url)

A fault applies to the next request whose method matches and whose path ends with the given
suffix (``times`` requests in all). ``drop_response`` forwards the request, so the server applies
it, and closes the connection without answering: the client sees the connection drop. The
server's answers are recorded too (``answers``), those the proxy dropped included.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import httpx

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "date",
    "server",
}


@dataclass(frozen=True)
class Seen:
    """A request as the proxy received it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Answer:
    """The server's answer to a forwarded request (header names in lower case)."""

    method: str
    path: str
    status: int
    headers: dict[str, str]


@dataclass
class Fault:
    method: str
    path_suffix: str
    drop_response: bool
    status: int | None
    retry_after: str | None
    times: int

    def matches(self, seen: Seen) -> bool:
        return seen.method == self.method and seen.path.split("?")[0].endswith(self.path_suffix)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self._upstream = httpx.Client(base_url=upstream, timeout=30.0)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.answers: list[Answer] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="fault-proxy", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def inject(
        self,
        method: str,
        path_suffix: str,
        *,
        drop_response: bool = False,
        status: int | None = None,
        retry_after: str | None = None,
        times: int = 1,
    ) -> None:
        if drop_response == (status is not None):
            raise ValueError("a fault either drops the response or answers with a status")
        with self._lock:
            self._faults.append(Fault(method, path_suffix, drop_response, status, retry_after, times))

    def requests(self, method: str | None = None, path_suffix: str = "") -> list[Seen]:
        """The requests received so far, optionally only those with this method and path suffix."""
        with self._lock:
            return [
                seen
                for seen in self.seen
                if (method is None or seen.method == method) and seen.path.split("?")[0].endswith(path_suffix)
            ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._upstream.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _received(self, seen: Seen) -> Fault | None:
        """Record ``seen``; the fault it triggers, if any."""
        with self._lock:
            self.seen.append(seen)
            for fault in self._faults:
                if fault.matches(seen):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _forward(self, seen: Seen) -> httpx.Response:
        headers = {name: value for name, value in seen.headers.items() if name not in HOP_BY_HOP}
        response = self._upstream.request(seen.method, seen.path, content=seen.body, headers=headers)
        answer = {name.lower(): value for name, value in response.headers.items()}
        with self._lock:
            self.answers.append(Answer(seen.method, seen.path, response.status_code, answer))
        return response


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._relay()

        def do_POST(self) -> None:
            self._relay()

        def do_PUT(self) -> None:
            self._relay()

        def do_PATCH(self) -> None:
            self._relay()

        def do_DELETE(self) -> None:
            self._relay()

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(self.command, self.path, {name.lower(): value for name, value in self.headers.items()}, body)
            fault = proxy._received(seen)
            if fault is not None and fault.status is not None:
                self._answer_for_the_server(fault)
                return
            response = proxy._forward(seen)
            if fault is not None and fault.drop_response:
                self.close_connection = True  # the server has applied the request; its answer is lost
                return
            self.send_response(response.status_code)
            for name, value in response.headers.multi_items():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        def _answer_for_the_server(self, fault: Fault) -> None:
            assert fault.status is not None
            problem = {
                "type": "/problems/injected",
                "title": "Injected fault",
                "status": fault.status,
                "detail": "the test proxy answered instead of the server",
            }
            payload = json.dumps(problem).encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(payload)))
            if fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the tests read proxy.seen instead

    return Handler
