"""/docs (Swagger UI) and /redoc work offline: every script, style and font comes from the server, and a
browser that may reach nothing else shows every operation of the API."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, expect

from tests.e2e.browser import OffOrigin, origin
from tests.e2e.browser import browser as browser  # the fixtures
from tests.e2e.browser import context as context
from tests.e2e.server_process import ServerProcess, sqlite_url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("docs")
    with ServerProcess(sqlite_url(directory / "optim.sqlite3"), log_dir=directory) as running:
        yield running


def summaries(server: ServerProcess) -> list[str]:
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    return [operation["summary"] for path in document["paths"].values() for operation in path.values()]


def test_swagger_ui_lists_every_operation_with_nothing_from_another_origin(
    server: ServerProcess, context: BrowserContext, tmp_path: Path
) -> None:
    network = OffOrigin(context, origin(server.base_url))
    page = context.new_page()

    page.goto(f"{server.base_url}/docs")

    operations = summaries(server)
    expect(page.locator(".opblock")).to_have_count(len(operations))
    for summary in operations:
        expect(page.locator(".opblock-summary-description", has_text=summary).first).to_be_visible()
    assert network.sent_elsewhere() == []
    assert any(request.url.endswith("/static/swagger-ui/swagger-ui-bundle.js") for request in network.requests)


def test_redoc_lists_every_operation_with_nothing_from_another_origin(
    server: ServerProcess, context: BrowserContext
) -> None:
    network = OffOrigin(context, origin(server.base_url))
    page = context.new_page()

    page.goto(f"{server.base_url}/redoc")

    for summary in summaries(server):
        expect(page.locator("h2", has_text=summary).first).to_be_attached()
    assert network.sent_elsewhere() == []
    assert any(request.url.endswith("/static/redoc/redoc.standalone.js") for request in network.requests)
