"""The web pages and their files (service/api/pages.py, docs_pages.py): served from the package to anyone the
Host allow-list admits, without a key, under a Content-Security-Policy that keeps them to the server's
origin, and absent from the OpenAPI document. The browser tests (tests/e2e/test_dashboard.py,
test_docs_pages.py) show what a person sees."""

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import service_client
from tests.tenancy import create_key


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A server that has a key, so that /v1 needs one."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pages') / 'optim.sqlite3'}"
    create_key(url, "acme")
    with service_client(url) as test_client:
        yield test_client


def policy(header: str) -> dict[str, list[str]]:
    directives = (directive.split() for directive in header.split(";") if directive.strip())
    return {name: sources for name, *sources in directives}


def test_the_dashboard_is_served_without_a_key_under_a_policy_of_its_own_origin_only(client: TestClient) -> None:
    assert client.get("/v1/sessions").status_code == 401

    page = client.get("/ui/")

    assert page.status_code == 200, page.text
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'data-testid="sessions"' in page.text
    csp = policy(page.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_the_dashboard_without_its_slash_is_redirected_to_it(client: TestClient) -> None:
    answer = client.get("/ui", follow_redirects=False)

    assert answer.status_code in (307, 308)
    assert answer.headers["location"].endswith("/ui/")


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/static/dashboard/dashboard.js", "text/javascript; charset=utf-8"),
        ("/static/dashboard/dashboard.css", "text/css; charset=utf-8"),
        ("/static/uplot/uPlot.esm.js", "text/javascript; charset=utf-8"),
        ("/static/swagger-ui/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        ("/static/redoc/redoc.standalone.js", "text/javascript; charset=utf-8"),
        ("/static/favicon.svg", "image/svg+xml"),
    ],
)
def test_the_pages_files_are_served_with_their_media_type_and_no_sniffing(
    client: TestClient, path: str, media_type: str
) -> None:
    answer = client.get(path)

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == media_type
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "etag" in answer.headers


@pytest.mark.parametrize(
    "path",
    [
        "/static/nothing.js",
        "/static/uplot/LICENSE",
        "/static/dashboard/index.html",
        "/static/../pages.py",
        "/static/%2e%2e/static_files.py",
        "/static//etc/passwd",
        "/static/",
    ],
)
def test_only_the_pages_own_files_are_served(client: TestClient, path: str) -> None:
    answer = client.get(path)

    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "/problems/not-found"


def test_a_file_not_changed_since_the_browser_read_it_is_not_sent_again(client: TestClient) -> None:
    first = client.get("/static/uplot/uPlot.esm.js")

    again = client.get("/static/uplot/uPlot.esm.js", headers={"If-None-Match": first.headers["etag"]})

    assert again.status_code == 304
    assert again.content == b""


def test_the_pages_take_get_head_and_options_only(client: TestClient) -> None:
    refused = client.post("/ui/", json={})

    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD, OPTIONS"
    assert client.options("/static/uplot/uPlot.esm.js").headers["allow"] == "GET, HEAD, OPTIONS"
    assert client.head("/ui/").status_code == 200


def test_a_host_the_server_does_not_answer_gets_no_page(client: TestClient) -> None:
    for path in ("/ui/", "/static/uplot/uPlot.esm.js", "/docs"):
        assert client.get(path, headers={"Host": "rebound.example"}).status_code == 421


@pytest.mark.parametrize(("path", "library"), [("/docs", "/static/swagger-ui/"), ("/redoc", "/static/redoc/")])
def test_the_api_docs_load_their_library_from_the_server_and_nothing_from_elsewhere(
    client: TestClient, path: str, library: str
) -> None:
    page = client.get(path)

    assert page.status_code == 200, page.text
    assert library in page.text
    assert "/openapi.json" in page.text
    assert re.findall(r"(?:src|href)=\"(https?:[^\"]*)\"", page.text) == []
    assert "fonts.googleapis.com" not in page.text
    csp = policy(page.headers["content-security-policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "data:"]


def test_swagger_uis_inline_start_up_script_is_allowed_by_its_hash_and_no_other(client: TestClient) -> None:
    page = client.get("/docs")

    (script,) = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy(page.headers["content-security-policy"])["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert '"validatorUrl": null' in script


def test_the_pages_follow_the_prefix_of_a_proxy_that_keeps_it(tmp_path: Path) -> None:
    with service_client(f"sqlite:///{tmp_path / 'optim.sqlite3'}") as client:
        client.app.root_path = "/optim"  # type: ignore[attr-defined]
        page = client.get("/docs")

    assert 'src="/optim/static/swagger-ui/swagger-ui-bundle.js"' in page.text
    assert "url: '/optim/openapi.json'" in page.text


def test_the_pages_are_not_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    pages = ("/ui", "/static", "/docs", "/redoc")
    assert [path for path in paths if path.startswith(pages)] == []
    assert "/v1/sessions/{session_id}/step" in paths
