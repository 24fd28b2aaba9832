"""Content negotiation: which media types a request body may have, and which one an answer takes (Accept)."""

from collections.abc import Sequence

from service.errors import NotAcceptable, UnsupportedContentEncoding, UnsupportedMediaType
from service.wire.media_types import ARRAY_TYPES

CONTENT_CODINGS = ("identity",)
"""The content codings a request body may have: none but the body as it is."""


def body_media_type(content_type: str | None, allowed: Sequence[str] = ARRAY_TYPES) -> str:
    """The request body's media type, when it is one of ``allowed``; else 415.

    A body without Content-Type is refused, not read as JSON: a web page may send any site a POST
    without one, or with text/plain, and no preflight asks first (a CORS "simple" request).
    """
    if content_type is None:
        raise UnsupportedMediaType(f"Content-Type is required: the body must be one of {', '.join(allowed)}")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in allowed:
        raise UnsupportedMediaType(f"the body must be one of {', '.join(allowed)}; got {media_type!r}")
    return media_type


def check_content_encoding(content_encoding: str | None) -> None:
    """415 (with ``Accept-Encoding``) unless the body has no content coding but ``identity``."""
    if content_encoding is None:
        return
    codings = [coding.strip().lower() for coding in content_encoding.split(",") if coding.strip()]
    unsupported = [coding for coding in codings if coding not in CONTENT_CODINGS]
    if unsupported:
        raise UnsupportedContentEncoding(
            f"the body's Content-Encoding {content_encoding!r} is not one this server decodes; send it without "
            f"one (or as {', '.join(CONTENT_CODINGS)})",
            headers={"Accept-Encoding": ", ".join(CONTENT_CODINGS)},
        )


def negotiate(accept: str | None, offered: Sequence[str] = ARRAY_TYPES) -> str:
    """The offered media type the Accept header prefers (ties go to the first offered); else 406.

    Each offered type takes the quality of the most specific range matching it
    (``type/subtype`` over ``type/*`` over ``*/*``), as RFC 9110 says. No Accept header means any
    type; one present but empty lists no acceptable type, so it is 406 like any other that matches none.
    """
    if accept is None:
        return offered[0]
    ranges = [_parse_range(entry) for entry in accept.split(",") if entry.strip()]
    best, best_quality = None, 0.0
    for media_type in offered:
        matching = [
            (specificity, quality)
            for media_range, quality in ranges
            if (specificity := _specificity(media_range, media_type)) is not None
        ]
        quality = max(matching)[1] if matching else 0.0
        if quality > best_quality:
            best, best_quality = media_type, quality
    if best is None:
        raise NotAcceptable(f"this resource is available as {', '.join(offered)}; Accept was {accept!r}")
    return best


def _parse_range(entry: str) -> tuple[str, float]:
    media_range, *parameters = (part.strip() for part in entry.split(";"))
    quality = 1.0
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0
    return media_range.lower(), quality


def _specificity(media_range: str, media_type: str) -> int | None:
    if media_range == media_type:
        return 2
    kind, _, subtype = media_range.partition("/")
    if subtype == "*" and media_type.startswith(f"{kind}/"):
        return 1
    return 0 if media_range == "*/*" else None
