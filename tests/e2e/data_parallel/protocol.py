"""A worker's HTTP: contribution bodies (JSON or safetensors), their answers, and replicas to send them to.

Only httpx, numpy and safetensors: this is what a worker of any framework would write against the
API as docs/api.md states it, without the SDK.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import safetensors.numpy

JSON = "application/json"
SAFETENSORS = "application/vnd.safetensors"
TRANSPORTS = {"json": JSON, "safetensors": SAFETENSORS}
REQUEST_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
"""Longer than any wait the server holds a contribution for (OPTIM_ROUND_WAIT_SECONDS) on a loaded machine."""
GIVE_UP_AFTER = 120.0
"""Seconds a request may keep failing over (connection errors, 503) before the worker gives up."""


def contribution_body(
    transport: str,
    grads: Mapping[str, np.ndarray],
    *,
    worker: str,
    based_on_step: int,
    weight: float,
    loss: float,
) -> bytes:
    """A step request with the contribution's fields: in the JSON document, or in safetensors' metadata."""
    if transport == "json":
        document = {
            "grads": {name: value.tolist() for name, value in grads.items()},
            "worker": worker,
            "based_on_step": based_on_step,
            "weight": weight,
            "loss": loss,
        }
        return json.dumps(document, allow_nan=False).encode()
    metadata = {"worker": worker, "based_on_step": str(based_on_step), "weight": repr(weight), "loss": repr(loss)}
    body: bytes = safetensors.numpy.save(dict(grads), metadata=metadata)
    return body


@dataclass(frozen=True)
class Reply:
    """A decoded answer: its status, its JSON document (a safetensors answer's metadata, parsed), its params."""

    status: int
    document: dict[str, Any]
    params: dict[str, np.ndarray] | None
    location: str | None
    version: str | None


def decode(response: httpx.Response, dtype: str) -> Reply:
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    params: dict[str, np.ndarray] | None = None
    if media_type == SAFETENSORS:
        tensors, metadata = read_safetensors(response.content)
        document: dict[str, Any] = {key: _metadata_value(value) for key, value in metadata.items()}
        params = tensors
    else:
        document = response.json()
        if isinstance(document.get("params"), dict):
            params = {name: np.asarray(value, dtype=dtype) for name, value in document["params"].items()}
    etag = response.headers.get("etag")
    version = etag.strip('"').split(".")[0] if etag else None
    return Reply(response.status_code, document, params, response.headers.get("location"), version)


def read_safetensors(content: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    header_length = int.from_bytes(content[:8], "little")
    header = json.loads(content[8 : 8 + header_length])
    metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    loaded = safetensors.numpy.load(content)
    return {name: loaded[name] for name in header}, metadata


def _metadata_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class Replicas:
    """The servers a worker may send to. A request goes to the one asked for; if it cannot be reached
    (a connection error, a lost answer) or answers 503, the same request goes to the next, and so on."""

    def __init__(self, base_urls: list[str]) -> None:
        self.base_urls = base_urls
        self.clients = [httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) for url in base_urls]
        self.failovers = 0
        self.die_on_answer: Path | None = None
        """When set, the process writes this file and SIGKILLs itself as soon as an answer's head arrives."""
        for client in self.clients:
            client.event_hooks["response"] = [self._maybe_die]

    def request(
        self,
        method: str,
        path: str,
        *,
        prefer: int = 0,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        deadline = time.monotonic() + GIVE_UP_AFTER
        attempt = 0
        while True:
            client = self.clients[(prefer + attempt) % len(self.clients)]
            attempt += 1
            try:
                response = client.request(method, path, content=content, headers=dict(headers or {}))
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code != 503:
                    return response
                problem = f"503: {response.text[:300]}"
            self.failovers += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path} kept failing for {GIVE_UP_AFTER} s; the last time: {problem}")
            time.sleep(0.05 if attempt % len(self.clients) else 0.25)

    def get_json(self, path: str, *, prefer: int = 0) -> dict[str, Any]:
        response = self.request("GET", path, prefer=prefer)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
        document: dict[str, Any] = response.json()
        return document

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def _maybe_die(self, response: httpx.Response) -> None:
        marker = self.die_on_answer
        if marker is not None:
            marker.write_text(f"{response.status_code}\n")
            os.kill(os.getpid(), signal.SIGKILL)
