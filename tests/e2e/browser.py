"""A real headless Chromium for the web pages' tests, driven by Playwright.

The browser is the system's (Debian's ``chromium`` package at /usr/bin/chromium, or OPTIM_TEST_CHROMIUM),
not one Playwright downloads. Where it is missing the tests skip, saying how to install it (and fail under
OPTIM_TEST_NO_SKIP=1, as in CI, whose .ci/run installs it).

``OffOrigin`` records every request a page makes and refuses, unsent, any to another origin than the
server's: a page that needs the network fails as it would offline, and the test names what it asked for.
(A request the page's Content-Security-Policy stops never reaches the network; Chromium reports it as
failed with ``csp``.)
Screenshots go to OPTIM_TEST_ARTIFACTS (tests/artifacts/ by default, which git ignores).
"""

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, Route, expect, sync_playwright

CHROMIUM = Path(os.environ.get("OPTIM_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("OPTIM_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))
NO_CHROMIUM = (
    f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium) or name one with OPTIM_TEST_CHROMIUM"
)
WAIT_MS = 15_000
"""How long a page may take to show what a test waits for (a poll of the page's runs every second or five)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.skip(NO_CHROMIUM)
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class OffOrigin:
    """Every request of a browser context; any to another origin than ``allowed_origin`` is refused."""

    def __init__(self, context: BrowserContext, allowed_origin: str) -> None:
        self.allowed_origin = allowed_origin
        self.requests: list[Request] = []
        context.on("request", self._record)
        context.route("**/*", self._route)

    def _record(self, request: Request) -> None:
        self.requests.append(request)

    def _route(self, route: Route) -> None:
        if origin(route.request.url) == self.allowed_origin:
            route.continue_()
        else:
            route.abort("blockedbyclient")

    def sent_elsewhere(self) -> list[str]:
        """Requests to another origin that the page sent (and this refused), but not those that the page's own
        Content-Security-Policy stopped before sending; ``data:`` and ``blob:`` URLs stay in the page."""
        return [
            request.url
            for request in self.requests
            if urlsplit(request.url).scheme not in ("data", "blob")
            and origin(request.url) != self.allowed_origin
            and request.failure != "csp"
        ]


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        opened.close()


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot under the artifacts directory; its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
