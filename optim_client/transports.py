"""The two wire formats for arrays, chosen per client: safetensors ("binary", the default) or JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from optim_client import json_codec, safetensors_codec

Transport = Literal["binary", "json"]
TRANSPORTS: tuple[Transport, ...] = ("binary", "json")


class Codec(Protocol):
    @property
    def media_type(self) -> str: ...

    def encode(self, document: Mapping[str, Any], *, root: str | None = None) -> bytes: ...


def codec_for(transport: Transport) -> Codec:
    if transport == "binary":
        return safetensors_codec.SafetensorsCodec()
    if transport == "json":
        return json_codec.JsonCodec()
    raise ValueError(f"Invalid transport: {transport!r} (choose one of {', '.join(TRANSPORTS)})")


def decode(content: bytes, content_type: str | None, *, root: str | None = None) -> dict[str, Any]:
    """A response body as a document, read as its Content-Type says (whatever was asked for)."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type == safetensors_codec.MEDIA_TYPE:
        return safetensors_codec.decode_safetensors(content, root=root)
    return json_codec.decode_json(content)
