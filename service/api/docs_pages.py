"""/docs (Swagger UI) and /redoc: FastAPI's pages, with the libraries from the package's own files
(static/README.md names their versions) instead of a CDN, and no web fonts.

A Content-Security-Policy lets them load nothing from another origin, so that they work offline, and
stay so whatever a new version of either library would fetch (ReDoc 2 shows its maker's logo from a
CDN: the policy refuses it, and the page shows the link without it). Swagger UI's inline start-up script
is allowed by its hash; both libraries style their elements with inline styles.
"""

import base64
import hashlib
import re

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse

router = APIRouter(include_in_schema=False)
OPENAPI_PATH = "/openapi.json"
SWAGGER_UI_PARAMETERS = {
    # FastAPI's defaults, and no validator: Swagger UI would send the document to validator.swagger.io.
    "deepLinking": True,
    "showExtensions": True,
    "showCommonExtensions": True,
    "validatorUrl": None,
}
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _root(request: Request) -> str:
    """The prefix the app is mounted under, behind a proxy that keeps it: the pages' links start with it."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _script_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def same_origin_only(page: HTMLResponse) -> HTMLResponse:
    """``page`` with a policy that lets it load from its own origin only, its inline scripts by their hashes."""
    inline_scripts = " ".join(_script_hash(script) for script in INLINE_SCRIPT.findall(bytes(page.body).decode()))
    page.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'self' {inline_scripts}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return same_origin_only(
        get_swagger_ui_html(
            openapi_url=root + OPENAPI_PATH,
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=f"{root}/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return same_origin_only(
        get_redoc_html(
            openapi_url=root + OPENAPI_PATH,
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=f"{root}/static/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon.svg",
            with_google_fonts=False,
        )
    )
