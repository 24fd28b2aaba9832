"""ETags and If-Match: a session's version is its entity tag, one per representation.

The JSON and the safetensors answers of one version are different bytes, so they carry different
strong ETags: ``"7"`` for JSON (as every ETag was before safetensors had its own) and
``"7.safetensors"``. If-Match names the version, in whichever form the client was handed.
"""

from service.sessions.service import Versions
from service.wire.media_types import JSON, SAFETENSORS

REPRESENTATION_SUFFIXES = {JSON: "", SAFETENSORS: ".safetensors"}

MAX_VERSION_DIGITS = 19


def etag(version: int, media_type: str = JSON) -> str:
    return f'"{version}{REPRESENTATION_SUFFIXES[media_type]}"'


def expected_versions(if_match: str | None) -> Versions:
    """The versions an If-Match header accepts: None for any (no header, or ``*``), else those it names
    (a tag that names no version of this service matches none)."""
    if if_match is None:
        return None
    tags = {tag.strip() for tag in if_match.split(",")}
    if "*" in tags:
        return None
    versions = set()
    for tag in tags:
        inner = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else None
        if inner is not None:
            inner = _without_representation(inner)
        # A version is a 64-bit integer: longer digit strings are not read (Python refuses past 4300 digits).
        if inner is None or len(inner) > MAX_VERSION_DIGITS or not (inner.isascii() and inner.isdecimal()):
            continue
        if inner == str(int(inner)):
            versions.add(int(inner))
    return frozenset(versions)


def _without_representation(inner: str) -> str:
    for suffix in REPRESENTATION_SUFFIXES.values():
        if suffix and inner.endswith(suffix):
            return inner[: -len(suffix)]
    return inner
