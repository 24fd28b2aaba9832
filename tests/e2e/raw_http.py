"""HTTP/1.1 over a bare socket: what a client's connection sees, byte for byte, keep-alive included."""

import socket

from tests.e2e.server_process import HOST

Answer = tuple[int, dict[str, str], bytes]


def parse_head(received: bytes) -> Answer:
    """The status, headers (lowercase names) and the bytes after the head, of a response's first bytes."""
    head, body = received.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def read_answer(connection: socket.socket, *, head_only: bool = False) -> Answer:
    """One whole response from ``connection``: status, headers (lowercase names), body (none if ``head_only``)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection before answering"
        received += chunk
    status, headers, body = parse_head(received)
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection in the middle of a response"
        body += chunk
    assert len(body) == length, f"{len(body) - length} bytes more than the answer holds: {body[:200]!r}"
    return status, headers, body


def request(
    connection: socket.socket,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Send one request on ``connection`` and read its whole response."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    connection.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + (body or b""))
    return read_answer(connection, head_only=method == "HEAD")


def closed(connection: socket.socket) -> bool:
    """Whether the server closed ``connection`` (after what it sent is read)."""
    connection.settimeout(5)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True
