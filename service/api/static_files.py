"""The package's own web files, under ``service/api/static/``: the dashboard's script and style, and the
libraries it and the API docs use, vendored (static/README.md names their versions) so that every page
works offline.

Only files of the types below are served, each by its path under the directory as it was when first
asked: no path from a request is ever joined to the file system. Every answer carries a strict
Content-Security-Policy (``PAGE_HEADERS``); the dashboard's page and its files are the service's own
origin only.
"""

import functools
from pathlib import Path

from starlette.responses import FileResponse

STATIC_DIRECTORY = Path(__file__).parent / "static"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
"""What is served, by suffix. Not HTML: the one page is answered by its own route, with its own headers."""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated each time (ETag, Last-Modified): the paths carry no version, and an upgrade changes the files.
    "Cache-Control": "no-cache",
}


@functools.cache
def served_files() -> dict[str, Path]:
    """Every file that may be served, by its path under the directory (``uplot/uPlot.esm.js``)."""
    return {
        path.relative_to(STATIC_DIRECTORY).as_posix(): path
        for path in sorted(STATIC_DIRECTORY.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


def static_file(relative_path: str) -> FileResponse | None:
    """The file at ``relative_path`` under the directory, if it is one that may be served."""
    path = served_files().get(relative_path)
    if path is None:
        return None
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=PAGE_HEADERS)


def page(relative_path: str) -> FileResponse:
    """An HTML page of the package's, with the same headers as its files."""
    return FileResponse(STATIC_DIRECTORY / relative_path, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
