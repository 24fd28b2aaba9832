"""The API key a client sends: given to ``Client`` or read from ``OPTIM_API_KEY``, sent as a bearer
token on every request, and never shown (not in a repr, a message or a log record)."""

from __future__ import annotations

import os
from collections.abc import Generator

import httpx

API_KEY_VARIABLE = "OPTIM_API_KEY"


class BearerKey(httpx.Auth):
    """``Authorization: Bearer <key>`` on every request; its repr hides the key."""

    def __init__(self, key: str) -> None:
        self._authorization = f"Bearer {key}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._authorization
        yield request

    def __repr__(self) -> str:
        return "BearerKey(<hidden>)"


def bearer_key(api_key: str | None) -> BearerKey | None:
    """The key to send: ``api_key`` if given, else ``OPTIM_API_KEY`` if set and not empty, else none.

    A key that an HTTP header cannot carry is a ``ValueError`` that does not show it (HTTP libraries
    quote a refused header's value in their errors).
    """
    source = "api_key"
    if api_key is None:
        api_key, source = os.environ.get(API_KEY_VARIABLE, "").strip() or None, API_KEY_VARIABLE
        if api_key is None:
            return None
    if not api_key:
        raise ValueError("api_key is empty; pass None to send no key (or to read OPTIM_API_KEY)")
    if not (api_key.isascii() and api_key.isprintable()) or any(character.isspace() for character in api_key):
        raise ValueError(
            f"the API key from {source} holds a space or a character HTTP headers cannot carry (it is not shown "
            "here); keys look like osk_<id>_<secret>"
        )
    return BearerKey(api_key)
