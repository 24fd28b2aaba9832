"""The dashboard at /ui/, and the files it and the API's docs (docs_pages.py) load from /static/: all from
the package, nothing from another origin.

Neither needs an API key (they are not under /v1): the dashboard asks for one when the API answers 401.
Neither is in the OpenAPI document, which describes the API, not its pages.
"""

from fastapi import APIRouter
from starlette.responses import FileResponse

from service.api.static_files import page, static_file
from service.errors import ProblemError

router = APIRouter(include_in_schema=False)


class NoSuchFile(ProblemError):
    slug = "not-found"


@router.get("/ui/")
async def dashboard() -> FileResponse:
    return page("dashboard/index.html")


@router.get("/static/{path:path}")
async def static(path: str) -> FileResponse:
    response = static_file(path)
    if response is None:
        raise NoSuchFile(f"no file {path!r} under /static/")
    return response
