"""ETags and If-Match: a session's version is its entity tag."""

from service.sessions.service import Versions

MAX_VERSION_DIGITS = 19


def etag(version: int) -> str:
    return f'"{version}"'


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
        # A version is a 64-bit integer: longer digit strings are not read (Python refuses past 4300 digits).
        if inner is None or len(inner) > MAX_VERSION_DIGITS or not (inner.isascii() and inner.isdecimal()):
            continue
        if inner == str(int(inner)):
            versions.add(int(inner))
    return frozenset(versions)
