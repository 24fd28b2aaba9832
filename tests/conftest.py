"""Suite-wide settings: hypothesis profiles, no silent skips in CI, and the databases tests run on."""

import os
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from pluggy import Result

from tests.databases import ENGINES, NO_POSTGRES, fresh_database, postgres_base_url
from tests.databases import postgres_url as postgres_url  # the fixture, for every test

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile("default")

MUST_RUN_EVERYTHING = os.environ.get("OPTIM_TEST_NO_SKIP") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    """With OPTIM_TEST_NO_SKIP=1 (set by .ci/run) a skipped test fails, naming its reason."""
    outcome = yield
    report = outcome.get_result()
    if MUST_RUN_EVERYTHING and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, but OPTIM_TEST_NO_SKIP=1 requires every test to run: {report.longrepr}"


@pytest.fixture(params=ENGINES, scope="module")
def engine(request: pytest.FixtureRequest) -> str:
    """Each test runs on SQLite, and again on PostgreSQL when OPTIM_TEST_POSTGRES_URL names one."""
    name: str = request.param
    if name == "postgresql" and postgres_base_url() is None:
        pytest.skip(NO_POSTGRES)
    return name


@pytest.fixture
def new_database(engine: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty databases of the test's engine: files under tmp_path, or schemas dropped at teardown."""
    with ExitStack() as stack:

        def make() -> str:
            return stack.enter_context(fresh_database(engine, tmp_path))

        yield make
