"""ETags and If-Match: a session's version is its entity tag."""

from service.sessions.service import Versions


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
        if inner is not None and inner.isdecimal() and inner == str(int(inner)):
            versions.add(int(inner))
    return frozenset(versions)
