"""Tests of real server processes: every test here is marked ``e2e`` (``pytest -m "not e2e"`` leaves them out)."""

import pytest

from tests.api.conftest import transport as transport  # the fixture: JSON or safetensors
from tests.e2e.server_process import server_factory_fixture as server_factory_fixture


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
