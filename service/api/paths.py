"""A request's path as the app's routes see it."""

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """The path without the root path the app is mounted under (behind a proxy that keeps its prefix)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path
