"""The examples run, against the test server and against one they start themselves."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.client.conftest import REPO_ROOT, Server

EXAMPLES = REPO_ROOT / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_linear_regression_shows_the_services_rprop_loss_curve_is_torchs(server: Server) -> None:
    pytest.importorskip("torch", reason="the linear regression example trains a torch model")
    result = run_example("linear_regression.py", "--url", server.base_url, "--epochs", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"\s*\d+\s", line)]
    assert len(rows) == 30
    assert all(remote == local for _, remote, local in rows)
    assert float(rows[-1][1]) < float(rows[0][1]) / 10
    assert "identical: 30 losses and the final weights, bit for bit" in result.stdout


def test_data_parallel_trains_with_worker_processes_and_ends_where_the_single_process_replay_does(
    server: Server,
) -> None:
    pytest.importorskip("torch", reason="the data-parallel example trains a torch model")
    result = run_example("data_parallel.py", "--url", server.base_url, "--workers", "3", "--steps", "12")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"\s*\d+\s", line)]
    assert [int(row[0]) for row in rows] == list(range(1, 13))
    assert float(rows[-1][1]) < float(rows[0][1])
    assert "identical: the service's params after 12 rounds of 3 workers, every worker's, and the single-process" in (
        result.stdout
    )


def test_anisotropic_prints_each_epoch_and_descends_without_torch(server: Server) -> None:
    result = run_example("anisotropic.py", "--url", server.base_url, "--epochs", "40")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        [float(value) for value in line.split()] for line in result.stdout.splitlines() if re.match(r"\s*\d+\s", line)
    ]
    assert [int(row[0]) for row in rows] == list(range(41))
    assert rows[0][1:] == [5.0, 5.0, 275.0]
    assert rows[1][1:] == [4.0, 4.0, 176.0]  # RMSprop's first step is lr / sqrt(1 - alpha) = 1 in both coordinates
    assert rows[-1][3] < 1.0
    assert result.stdout.splitlines()[-1].startswith("final: ")


def test_an_example_starts_a_server_of_its_own_when_asked(server: Server) -> None:
    result = run_example("anisotropic.py", "--start-server", "--epochs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started an optim-service at http://127.0.0.1:" in result.stderr
    assert "final: x=3.37339" in result.stdout


def test_an_example_given_a_url_where_nothing_answers_says_so() -> None:
    result = run_example("anisotropic.py", "--url", "http://127.0.0.1:9")
    assert result.returncode != 0
    assert "nothing answers at http://127.0.0.1:9" in result.stderr
