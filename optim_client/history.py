"""A session's step telemetry history (``GET /v1/sessions/{id}/metrics``), read a page at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from optim_client.client import Client

PAGE_SIZE = 1000
"""The service's own default page; it answers at most 10,000 items a page."""


def metrics_items(
    client: Client, session_url: str, *, since: int, limit: int | None, page_size: int
) -> Iterator[dict[str, Any]]:
    """The kept steps' metrics after step ``since``, oldest first, following ``next_cursor`` to the last page
    or until ``limit`` items have come."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    remaining = limit
    cursor: int | None = since
    while cursor is not None and remaining != 0:
        asked = page_size if remaining is None else min(page_size, remaining)
        page = client.call("GET", f"{session_url}/metrics?{urlencode({'since': cursor, 'limit': asked})}").document
        items: list[dict[str, Any]] = page["items"]
        yield from items
        if remaining is not None:
            remaining -= len(items)
        cursor = page["next_cursor"]
