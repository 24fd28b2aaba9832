"""The Host header must name this server: a defence against DNS rebinding.

A web page can make a browser send requests to any address, the user's own loopback included, under a
name the page's site controls (that it points at 127.0.0.1 once the page is loaded). The browser then
treats the server as that site's own. The name stays in the Host header, so a server that answers only
its own names cannot be reached this way.

The allow-list is ``OPTIM_ALLOWED_HOSTS``: comma-separated names, ``*.example.com`` for any subdomain,
``*`` for any host; ports do not matter. Unset, it is the loopback names (``localhost``, ``127.0.0.1``,
``[::1]`` and the bound address) on a loopback address, and any host elsewhere, where every request needs
an API key that a web page does not have and a proxy in front may use names the server cannot know. The
health probes are not checked: an orchestrator calls them by the pod's address.

A pure ASGI middleware; a host that is not allowed is answered ``421 Misdirected Request``.
"""

import functools
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.middleware import HttpMiddleware
from service.api.paths import route_path
from service.errors import problem_response
from service.tenancy.startup import is_loopback

ANY = "*"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
UNCHECKED_PATHS = frozenset({"/healthz", "/readyz"})


def host_name(host: str) -> str:
    """A Host header's (or an allow-list entry's) name: lowercase, without port or trailing dot; an IPv6
    address in brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[: host.find("]") + 1] if "]" in host else host
    elif host.count(":") > 1:  # a bare IPv6 address, as an allow-list may give it
        name = f"[{host}]"
    else:
        name = host.partition(":")[0]
    return name.rstrip(".")


def allowed_hosts(setting: str | None, *, bind_host: str) -> frozenset[str] | None:
    """The host names the server answers (patterns ``*.domain`` included); None for any."""
    if setting is None:
        if not is_loopback(bind_host):
            return None
        names: Iterable[str] = (*LOOPBACK_NAMES, bind_host)
    else:
        names = (name for name in setting.split(",") if name.strip())
    allowed = frozenset(host_name(name) for name in names)
    return None if ANY in allowed else allowed


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    if host is None:
        return False
    name = host_name(host)
    if name in allowed:
        return True
    return any(
        pattern.startswith("*.") and name.endswith(pattern[1:]) and len(name) > len(pattern) - 1 for pattern in allowed
    )


@functools.lru_cache(maxsize=1024)
def _raw_host_allowed(raw: bytes | None, allowed: frozenset[str]) -> bool:
    """``host_allowed`` of a Host header's bytes, remembered: a client sends the same one every time."""
    return host_allowed(None if raw is None else raw.decode("latin-1"), allowed)


class AllowedHosts(HttpMiddleware):
    def __init__(self, app: ASGIApp, *, hosts: frozenset[str]) -> None:
        super().__init__(app)
        self._hosts = hosts

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if route_path(scope) in UNCHECKED_PATHS:
            await self.app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == b"host"), None)
        if _raw_host_allowed(raw, self._hosts):
            await self.app(scope, receive, send)
            return
        host = None if raw is None else raw.decode("latin-1")
        response = problem_response(
            slug="host-not-allowed",
            detail=f"this server does not serve the host {host!r}; it serves {', '.join(sorted(self._hosts))} "
            "(OPTIM_ALLOWED_HOSTS)",
        )
        await response(scope, receive, send)
