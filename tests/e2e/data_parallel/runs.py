"""A test's side of a data-parallel run: the session, the data, the worker processes, their journals."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from multiprocessing.context import ForkServerProcess
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np

from tests.e2e.data_parallel.journal import Entry, Journal
from tests.e2e.data_parallel.model import write_shard
from tests.e2e.data_parallel.worker import READY, WorkerConfig, run_forked

RPROP: dict[str, Any] = {"lr": 0.01, "etas": (0.5, 1.2), "step_sizes": (1e-6, 50.0)}
RMSPROP: dict[str, Any] = {"lr": 0.01, "alpha": 0.9, "momentum": 0.9, "centered": True, "weight_decay": 0.1}
HYPERPARAMETERS = {"rprop": RPROP, "rmsprop": RMSPROP}
WORKER_TIMEOUT = 150.0
"""Seconds a run's workers may take, all together, on a loaded machine."""
LOG_TAIL_CHARS = 4000


@dataclass(frozen=True)
class WorkerSpec:
    """One worker of a run: its id, its batch size (its weight), its transport, and any misbehaviour."""

    name: str
    batch_size: int
    transport: str = "json"
    behaviour: Mapping[str, Any] = field(default_factory=dict)
    """``WorkerConfig`` fields: ``die_at_round``, ``gate_round``, ``straggle_at``, ``hold_first``, ``tail_at``."""


FOUR_WORKERS = (
    # Ids whose order by code point ("rank10" < "rank2" < "rank7" < "zeta") is neither the order of
    # their numbers nor the order they are listed in; batch sizes that differ, so weights matter.
    WorkerSpec("rank7", 5, "json"),
    WorkerSpec("rank10", 8, "safetensors"),
    WorkerSpec("zeta", 13, "json"),
    WorkerSpec("rank2", 16, "safetensors"),
)


def create_session(
    base_url: str,
    *,
    optimizer: str,
    params: Mapping[str, np.ndarray],
    aggregation: Mapping[str, Any],
    dtype: str = "float32",
) -> str:
    body = {
        "optimizer": optimizer,
        "dtype": dtype,
        "params": {name: value.tolist() for name, value in params.items()},
        "hyperparameters": HYPERPARAMETERS[optimizer],
        "aggregation": aggregation,
    }
    response = httpx.post(f"{base_url}/v1/sessions", json=body, timeout=30)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["tests.e2e.data_parallel.worker"])
"""Workers are forked from a server process that has imported torch once, rather than each importing it
(two seconds of CPU a worker, which on two cores was most of a run's time)."""


class WorkerProcess:
    """A worker process (``worker.run_forked``); started, waited for, killed, started again."""

    def __init__(self, config: WorkerConfig, directory: Path) -> None:
        self.config = config
        self.config_path = directory / f"{config.worker}.json"
        self.log_path = directory / f"{config.worker}.log"
        config.save(self.config_path)
        self.journal = Journal(Path(config.journal))
        self.process: ForkServerProcess | None = None
        self.starts = 0

    def start(self) -> None:
        assert not self.running, "the worker is still running"
        self.process = FORKSERVER.Process(
            target=run_forked, args=(str(self.config_path), str(self.log_path)), name=self.config.worker, daemon=True
        )
        self.process.start()
        self.starts += 1

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        self.process.join(timeout)
        code = self.process.exitcode
        if code is None:
            raise AssertionError(f"{self.config.worker} still runs after {timeout} s:\n{self.log_tail()}")
        return code

    def kill(self) -> int:
        """SIGKILL, as a crash would; the exit code (``-SIGKILL``, unless it had exited)."""
        assert self.process is not None
        self.process.kill()
        self.process.join()
        code = self.process.exitcode
        assert code is not None
        return code

    def ready_or_gone(self) -> bool:
        """Whether the worker is ready to train, or has exited."""
        return (self.journal.directory / READY).exists() or not self.running

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self.running:
            self.kill()


class Team:
    """A run's workers: each gets a shard of data the test makes, then all start training together."""

    def __init__(
        self,
        directory: Path,
        *,
        base_urls: list[str],
        session: str,
        specs: tuple[WorkerSpec, ...],
        mode: str,
        dtype: str = "float32",
        **common: Any,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.gate = directory / "go"
        self.workers: dict[str, WorkerProcess] = {}
        for index, spec in enumerate(specs):
            shard = directory / f"{spec.name}.data.npz"
            write_shard(shard, examples=spec.batch_size * 4, seed=100 + index, dtype=dtype)
            config = WorkerConfig(
                worker=spec.name,
                index=index,
                base_urls=base_urls,
                session=session,
                dtype=dtype,
                shard=str(shard),
                batch_size=spec.batch_size,
                transport=spec.transport,
                journal=str(directory / spec.name),
                mode=mode,
                start_gate=str(self.gate),
                **common,
            )
            self.workers[spec.name] = WorkerProcess(replace(config, **spec.behaviour), directory)

    def start(self) -> None:
        """Start every worker, wait until all are ready (torch imported, data read), then let them go at once."""
        for worker in self.workers.values():
            worker.start()
        for worker in self.workers.values():
            wait_for(worker.ready_or_gone, f"{worker.config.worker} ready")
            assert worker.running, f"{worker.config.worker} exited before it was ready:\n{worker.log_tail()}"
        self.gate.touch()

    def wait(self, timeout: float = WORKER_TIMEOUT) -> None:
        """Every worker finished its training and exited with 0."""
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            code = worker.wait(max(deadline - time.monotonic(), 1.0))
            assert code == 0, f"{worker.config.worker} exited with {code}:\n{worker.log_tail()}"

    def journals(self) -> dict[str, list[Entry]]:
        return {name: worker.journal.entries() for name, worker in self.workers.items()}

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()

    def __enter__(self) -> Team:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WORKER_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.02)


def session_document(base_url: str, session: str, path: str = "") -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/sessions/{session}{path}", timeout=30)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def params_of(document: Mapping[str, Any], dtype: str) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=dtype) for name, value in document["params"].items()}


def open_round_contributions(base_url: str, session: str, round_number: int) -> int | None:
    """The contributions an open round holds (its 202), or None while the session is short of that round."""
    response = httpx.get(f"{base_url}/v1/sessions/{session}/rounds/{round_number}", timeout=60)
    if response.status_code == 404:
        return None
    assert response.status_code == 202, f"round {round_number}: {response.status_code} {response.text}"
    body = response.json()
    assert body["round"] == round_number, body
    assert body["closed"] is False, body
    assert response.headers["location"] == f"/v1/sessions/{session}/rounds/{round_number}"
    count: int = body["contributions"]
    return count


def wait_for_contributions(base_url: str, session: str, round_number: int, count: int) -> None:
    deadline = time.monotonic() + WORKER_TIMEOUT
    while open_round_contributions(base_url, session, round_number) != count:
        assert time.monotonic() < deadline, f"round {round_number} never held {count} contributions"
        time.sleep(0.05)
