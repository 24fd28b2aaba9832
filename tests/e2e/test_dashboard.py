"""The dashboard at /ui/, in a real browser against a real server: the caller's sessions, the selected one's
curves growing as steps arrive (without a reload), its param groups and its checkpoint; and, on a server
with keys, the key asked for once, kept in sessionStorage, and never put in a URL.

A screenshot of the dashboard goes to OPTIM_TEST_ARTIFACTS (tests/artifacts/ by default).
"""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.browser import OffOrigin, origin, screenshot
from tests.e2e.browser import browser as browser  # the fixtures
from tests.e2e.browser import context as context
from tests.e2e.server_process import ServerProcess, sqlite_url
from tests.tenancy import bearer, create_key

KEY_ITEM = "optim-service.api-key"
SESSION = {
    "optimizer": "rmsprop",
    "params": {"w": [[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]], "b": [0.0, 1.0]},
    "param_groups": [{"params": ["w"], "lr": 0.01}, {"params": ["b"], "lr": 0.05, "momentum": 0.9}],
}


def loss_at(step: int) -> float:
    """The loss a test reports at ``step``: few digits, so that the page shows it exactly as Python writes it."""
    return round(4.0 * 0.93**step, 4)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path) as running:
        yield running


def create_session(api: httpx.Client) -> str:
    created = api.post("/v1/sessions", json=SESSION)
    assert created.status_code == 201, created.text
    session_id: str = created.json()["id"]
    return session_id


def step(api: httpx.Client, session_id: str, steps: range) -> None:
    for number in steps:
        grads = {"w": [[0.1 * number, -0.2, 0.3], [0.05, 0.025, -0.1]], "b": [0.01, -0.01]}
        stepped = api.post(f"/v1/sessions/{session_id}/step", json={"grads": grads, "loss": loss_at(number)})
        assert stepped.status_code == 200, stepped.text
        assert stepped.json()["step"] == number


def open_session(page: Page, session_id: str) -> None:
    row = page.locator(f'[data-testid="session-row"][data-session-id="{session_id}"]')
    expect(row).to_be_visible()
    row.get_by_role("button", name=session_id).click()
    expect(page.get_by_test_id("session-id")).to_have_text(session_id)


def test_the_dashboard_shows_a_sessions_curves_growing_as_steps_arrive(
    server: ServerProcess, context: BrowserContext, tmp_path: Path
) -> None:
    network = OffOrigin(context, origin(server.base_url))
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        session_id = create_session(api)
        step(api, session_id, range(1, 31))
        page = context.new_page()
        page.goto(f"{server.base_url}/ui/")

        row = page.locator(f'[data-testid="session-row"][data-session-id="{session_id}"]')
        expect(row).to_contain_text("rmsprop")
        expect(row).to_contain_text("float32")
        expect(row).to_contain_text("8 elements · 32 B")
        open_session(page, session_id)
        expect(page.get_by_test_id("loss-summary")).to_have_text(f"30 points · last loss {loss_at(30)!r}")
        expect(page.get_by_test_id("chart-loss")).to_have_attribute("data-points", "30")
        expect(page.get_by_test_id("chart-grad_norm")).to_have_attribute("data-points", "30")
        expect(page.get_by_test_id("chart-lr")).to_have_attribute("data-points", "30")
        groups = page.get_by_test_id("param-groups")
        expect(groups.locator("tbody tr")).to_have_count(2)
        expect(groups.locator("tbody tr").nth(1)).to_contain_text("0.05")
        page.evaluate("window.loadedOnce = true")

        step(api, session_id, range(31, 41))

        expect(page.get_by_test_id("loss-summary")).to_have_text(f"40 points · last loss {loss_at(40)!r}")
        expect(page.get_by_test_id("chart-loss")).to_have_attribute("data-points", "40")
        expect(row.get_by_test_id("session-step")).to_have_text("40")
        assert page.evaluate("window.loadedOnce") is True, "the page was reloaded"
        screenshot(page, "dashboard.png")

        with page.expect_download() as downloading:
            page.get_by_test_id("download-checkpoint").click()
        checkpoint = json.loads(Path(downloading.value.path()).read_text())
        assert checkpoint == api.get(f"/v1/sessions/{session_id}/checkpoint").json()
        assert checkpoint["step"] == 40
    assert network.sent_elsewhere() == []


def test_on_a_server_with_keys_the_dashboard_asks_for_one_once_and_keeps_it_out_of_urls(
    context: BrowserContext, tmp_path: Path
) -> None:
    database_url = sqlite_url(tmp_path / "optim.sqlite3")
    key = create_key(database_url, "acme")
    with (
        ServerProcess(database_url, log_dir=tmp_path) as server,
        httpx.Client(base_url=server.base_url, headers=bearer(key), timeout=30) as api,
    ):
        session_id = create_session(api)
        network = OffOrigin(context, origin(server.base_url))
        page = context.new_page()
        page.goto(f"{server.base_url}/ui/")

        dialog, problem = page.get_by_test_id("key-dialog"), page.get_by_test_id("key-problem")
        expect(dialog).to_be_visible()
        expect(problem).to_contain_text("requires an API key")
        page.get_by_test_id("key-input").fill("osk_000000000000_" + "x" * 43)
        page.get_by_test_id("key-submit").click()
        expect(problem).to_contain_text("not valid")  # refused: asked again, with the server's reason
        expect(dialog).to_be_visible()
        page.get_by_test_id("key-input").fill(key)
        page.get_by_test_id("key-submit").click()

        expect(dialog).to_be_hidden()
        open_session(page, session_id)
        assert page.evaluate(f"sessionStorage.getItem({KEY_ITEM!r})") == key
        page.reload()
        expect(page.locator(f'[data-testid="session-row"][data-session-id="{session_id}"]')).to_be_visible()
        expect(dialog).to_be_hidden()

        assert key not in page.url
        assert all(key not in request.url for request in network.requests)
        api_requests = [request for request in network.requests if "/v1/" in request.url]
        assert any(request.all_headers().get("authorization") == f"Bearer {key}" for request in api_requests)
        assert network.sent_elsewhere() == []
