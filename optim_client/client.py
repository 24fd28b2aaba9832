"""The connection to an optim-service: HTTP, retries, and the wire format of arrays."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import httpx

from optim_client.api_keys import API_KEY_VARIABLE, bearer_key
from optim_client.errors import AuthenticationError
from optim_client.json_codec import MEDIA_TYPE as JSON
from optim_client.json_codec import JsonCodec
from optim_client.retry import RetryPolicy
from optim_client.retrying import send_with_retries
from optim_client.transports import Transport, codec_for, decode

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
DEFAULT_ROUND_TIMEOUT = 1800.0
"""Seconds a contribution waits for its round to close, as torch.distributed waits for its peers by default."""


@dataclass(frozen=True)
class Reply:
    """A successful response: its document (arrays as numpy arrays or nested lists), ETag, status and Location."""

    document: dict[str, Any]
    etag: str | None
    status: int = 200
    location: str | None = None


@dataclass(frozen=True)
class Body:
    """A request body, encoded: sent again byte for byte when its request is repeated."""

    content: bytes
    media_type: str


class Client:
    """A connection to one optim-service; share it between sessions, close it when done.

    ``transport`` is the format arrays travel in: ``"binary"`` (safetensors, the default: exact and
    compact) or ``"json"`` (nested lists). ``timeout`` is in seconds or an ``httpx.Timeout``; ``retry``
    says how often and how patiently connection errors, 5xx and 429 are retried (other 4xx never are).
    ``api_key`` (by default ``$OPTIM_API_KEY``, if set) goes with every request as
    ``Authorization: Bearer``; it is never shown, in a repr, a message or a log record.
    ``round_timeout`` is how many seconds a worker's contribution waits, in all, for its round of a
    synchronous session to close (None: as long as it takes); each wait for the service's answer is
    bounded by ``timeout`` as any request is.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        transport: Transport = "binary",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        round_timeout: float | None = DEFAULT_ROUND_TIMEOUT,
    ) -> None:
        if round_timeout is not None and not round_timeout >= 0:
            raise ValueError(f"Invalid round_timeout: {round_timeout} (seconds, at least 0, or None)")
        self.transport: Transport = transport
        self.retry = retry or RetryPolicy()
        self.round_timeout = round_timeout
        self._codec = codec_for(transport)
        self._json = JsonCodec()
        auth = bearer_key(api_key)
        self._sends_key = auth is not None
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=dict(headers or {}), auth=auth)

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, transport={self.transport!r})"

    def healthy(self) -> bool:
        """Whether the service answers ``GET /healthz`` with 200 right now (one attempt, no retries)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def sessions(self, *, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every session's summary, oldest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            query = urlencode({"limit": page_size, **({"cursor": cursor} if cursor else {})})
            page = self.call("GET", f"/v1/sessions?{query}").document
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def encode(self, document: Mapping[str, Any], *, root: str | None = None, json_only: bool = False) -> Body:
        """``document`` as a body in the client's transport (JSON when ``json_only``), its arrays under
        ``root`` named by name alone in a binary body."""
        codec = self._json if json_only else self._codec
        return Body(codec.encode(document, root=root), codec.media_type)

    def call(
        self,
        method: str,
        path: str,
        *,
        document: Mapping[str, Any] | None = None,
        body: Body | None = None,
        root: str | None = None,
        arrays_back: bool = False,
        response_root: str | None = None,
        json_only: bool = False,
        headers: Mapping[str, str] | None = None,
        done_on_retry: Collection[int] = (),
    ) -> Reply:
        """One API call, retried as the policy says; an error status raises the matching ``OptimServiceError``.

        The body is ``body``, or ``document`` encoded as ``encode`` does with ``root`` and ``json_only``;
        ``arrays_back`` asks for the response in the client's transport (a binary response names the
        arrays under ``response_root`` by name alone). ``done_on_retry`` is as ``send_with_retries``
        takes it.
        """
        all_headers = dict(headers or {})
        if document is not None:
            body = self.encode(document, root=root, json_only=json_only)
        if body is not None:
            all_headers["Content-Type"] = body.media_type
        all_headers["Accept"] = self._codec.media_type if arrays_back else JSON
        request = self._http.build_request(method, path, content=body.content if body else None, headers=all_headers)
        try:
            response = send_with_retries(self._http, request, self.retry, done_on_retry=frozenset(done_on_retry))
        except AuthenticationError as refused:
            refused.explain(
                "The key this client sends (api_key, or $" + API_KEY_VARIABLE + ") was not accepted"
                if self._sends_key
                else "This client sends no API key: pass Client(api_key=...) or set $" + API_KEY_VARIABLE
            )
            raise
        etag, location = response.headers.get("etag"), response.headers.get("location")
        if response.status_code == 204 or not response.is_success:
            return Reply({}, etag, response.status_code, location)
        document = decode(response.content, response.headers.get("content-type"), root=response_root)
        return Reply(document, etag, response.status_code, location)
