"""The README's walkthrough runs as written against a real server and reaches the minimum."""

import re
from pathlib import Path

import pytest

from tests.e2e.server_process import ServerProcess, sqlite_url

README = Path(__file__).resolve().parents[2] / "README.md"


def walkthrough() -> str:
    text = README.read_text()
    section = text[text.index("## A walkthrough") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the walkthrough has no python block"
    return match.group(1)


def test_the_readme_walkthrough_learns_the_minimum_of_the_anisotropic_bowl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path, port=None) as server:
        code = walkthrough().replace("http://127.0.0.1:8000", server.base_url)
        namespace: dict[str, object] = {}
        exec(compile(code, str(README), "exec"), namespace)
    x, y = namespace["x"], namespace["y"]
    assert isinstance(x, float)
    assert isinstance(y, float)
    assert x * x + 10 * y * y < 1e-6
    assert "step 100:" in capsys.readouterr().out
