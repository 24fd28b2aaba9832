"""Suite-wide settings: hypothesis profiles, and no silent skips in CI."""

import os
from collections.abc import Generator

import pytest
from hypothesis import HealthCheck, settings
from pluggy import Result

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
