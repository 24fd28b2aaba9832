"""/problems/{slug}: the page each problem's ``type`` names, made from ``PROBLEM_TYPES``."""

import re
from html import escape

from fastapi import APIRouter
from starlette.responses import HTMLResponse

from service.api.openapi import problems
from service.errors import ProblemError
from service.problem_types import PROBLEM_TYPES, ProblemType, type_uri

router = APIRouter(prefix="/problems", tags=["problems"])


class UnknownProblemType(ProblemError):
    slug = "not-found"


def page(slug: str, kind: ProblemType) -> str:
    title = escape(kind.title)
    return (
        '<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8"><title>'
        f"{title}</title></head>\n<body>\n<h1>{title}</h1>\n"
        f"<p>HTTP status {kind.status}. Problem type <code>{escape(type_uri(slug))}</code>.</p>\n"
        f"<p>{_code(escape(kind.about))}</p>\n"
        "<p>Every problem is <code>application/problem+json</code> (RFC 9457): <code>type</code>, <code>title</code>, "
        "<code>status</code>, <code>detail</code>, and <code>instance</code>, the request's id (also in the "
        "<code>X-Request-ID</code> header).</p>\n</body>\n</html>\n"
    )


def _code(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


@router.get(
    "/{slug}",
    summary="What a problem type means",
    operation_id="problem_page",
    response_class=HTMLResponse,
    responses={200: {"description": "A page that explains the problem type."}, **problems(404)},
)
async def problem_page(slug: str) -> HTMLResponse:
    kind = PROBLEM_TYPES.get(slug)
    if kind is None:
        raise UnknownProblemType(f"no problem type {slug!r}; the types are listed in docs/api.md")
    return HTMLResponse(page(slug, kind))
