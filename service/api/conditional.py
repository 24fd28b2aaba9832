"""Conditional reads: a ``GET`` (or ``HEAD``) whose ``If-None-Match`` names the answer's ETag is answered
``304 Not Modified``, with the ETag and no body (RFC 9110, 13.1.2).

As Django's ``ConditionalGetMiddleware``, it compares the ETag the route answered with, so no route
decides it on its own; ``methods.Methods`` applies it to every ``GET`` and ``HEAD`` that has the header.
"""

from starlette.types import Message, Send

KEPT_ON_304 = frozenset({b"etag", b"vary", b"cache-control", b"content-location", b"expires", b"date"})
"""The headers a 304 carries over from the 200 it stands for (RFC 9110, 15.4.5)."""


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` by the weak comparison (``*`` matches any)."""
    wanted = _opaque(etag)
    return any(tag.strip() == "*" or _opaque(tag) == wanted for tag in if_none_match.split(","))


def conditional(send: Send, if_none_match: bytes) -> Send:
    """``send``, turning a 200 whose ETag ``if_none_match`` names into a 304 without a body."""
    condition = if_none_match.decode("latin-1")
    not_modified = False

    async def send_conditionally(message: Message) -> None:
        nonlocal not_modified
        if message["type"] == "http.response.start" and message["status"] == 200:
            headers = message.get("headers", ())
            etag = next((value for name, value in headers if name == b"etag"), None)
            if etag is not None and none_match(condition, etag.decode("latin-1")):
                not_modified = True
                kept = [(name, value) for name, value in headers if name in KEPT_ON_304]
                message = {"type": "http.response.start", "status": 304, "headers": kept}
        elif message["type"] == "http.response.body" and not_modified:
            message = {"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)}
        await send(message)

    return send_conditionally
