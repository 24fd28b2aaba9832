"""One data-parallel worker process: ``python -m tests.e2e.data_parallel.worker CONFIG.json``, or
``run_forked`` in a process that has imported this module already.

It trains ``model.py``'s MLP on its shard through one aggregating session, speaking HTTP as
docs/api.md says (no SDK): it reads the params, computes its gradients with torch, and posts them
as a contribution (``worker``, ``based_on_step``, ``weight`` = its batch size, an Idempotency-Key),
following a ``202`` to its round's ``Location`` until the round has closed. Every contribution is
saved in its journal before it is sent; a worker started again over a journal whose last
contribution has no answer re-reads the session and sends that contribution again, same key, same
bytes, before it carries on.

The config (``WorkerConfig``) also makes a worker misbehave on purpose: kill itself as an answer
arrives, wait for a file before a round, straggle past a round's close, hold an old step.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tests.e2e.data_parallel.journal import Answer, Entry, Journal, Sent
from tests.e2e.data_parallel.model import Shard, gradients, make_model, torch_dtype
from tests.e2e.data_parallel.protocol import TRANSPORTS, Replicas, contribution_body, decode

WAIT_LIMIT = 120.0
"""Seconds a worker waits for anything (a file, the session reaching a step) before it fails."""
READY = "ready"
"""The file a worker writes in its journal once it is ready to train (torch imported, shard read)."""


@dataclass(frozen=True)
class WorkerConfig:
    worker: str
    index: int
    """The worker's position among its peers: where its requests go first (round-robin by round and worker)."""
    base_urls: list[str]
    session: str
    dtype: str
    shard: str
    batch_size: int
    transport: str
    """``json`` or ``safetensors``: the contribution's body and the answer asked for."""
    journal: str
    mode: str
    """``sync``: train until the session reaches ``steps``. ``async``: make ``contributions`` accepted ones."""
    steps: int = 0
    contributions: int = 0
    start_gate: str | None = None
    """A file to wait for before the first contribution (so that all workers start together)."""
    die_at_round: int | None = None
    """SIGKILL itself once, as the answer to its contribution to this round arrives (before reading it)."""
    gate_round: int | None = None
    gate_file: str | None = None
    """Wait for ``gate_file`` before computing the contribution to round ``gate_round``."""
    straggle_at: int | None = None
    """Send the contribution to this round only once the round has closed without it."""
    hold_first: bool = False
    """async: first send a contribution computed on step 0 only once it is staler than ``max_staleness``."""
    max_staleness: int = 0
    tail_at: int | None = None
    """async: at the end, once the session is at this step, send three contributions on the same params."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> WorkerConfig:
        return cls(**json.loads(path.read_text()))


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.journal = Journal(Path(config.journal))
        self.replicas = Replicas(config.base_urls)
        self.model = make_model(torch_dtype(config.dtype))
        self.shard = Shard(Path(config.shard), config.batch_size)
        self.session_path = f"/v1/sessions/{config.session}"

    # What the server is asked.

    def fetch_params(self, prefer: int = 0) -> tuple[dict[str, np.ndarray], int]:
        document = self.replicas.get_json(f"{self.session_path}/params", prefer=prefer)
        params = {name: np.asarray(value, dtype=self.config.dtype) for name, value in document["params"].items()}
        return params, int(document["step"])

    def session_step(self) -> int:
        return int(self.replicas.get_json(self.session_path)["step"])

    def wait_for_step(self, reached: Callable[[int], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_LIMIT
        while not reached(self.session_step()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.config.worker}: the session never reached {what}")
            time.sleep(0.02)

    # A contribution.

    def prepare(self, params: dict[str, np.ndarray], based_on_step: int, batch: int) -> Entry:
        """Compute the gradients and save the contribution, body and all, before anything is sent."""
        grads, loss = gradients(self.model, params, self.shard.batch(batch))
        weight = float(self.config.batch_size)
        body = contribution_body(
            self.config.transport,
            grads,
            worker=self.config.worker,
            based_on_step=based_on_step,
            weight=weight,
            loss=loss,
        )
        media_type = TRANSPORTS[self.config.transport]
        sent = Sent(
            seq=self.journal.next_seq(),
            worker=self.config.worker,
            based_on_step=based_on_step,
            weight=weight,
            key=str(uuid.uuid4()),
            content_type=media_type,
            accept=media_type,
        )
        self.journal.save_sent(sent, body, grads)
        return Entry(sent, None, [], self.journal.directory)

    def send(self, entry: Entry) -> tuple[Answer, dict[str, np.ndarray] | None]:
        """POST the saved contribution; follow 202s to the round until it is answered; journal the answer."""
        sent = entry.sent
        prefer = sent.based_on_step + self.config.index
        if self.config.die_at_round == sent.based_on_step:
            marker = self.journal.directory / f"died-at-{sent.based_on_step}"
            if not marker.exists():
                self.replicas.die_on_answer = marker
        headers = {"Content-Type": sent.content_type, "Accept": sent.accept, "Idempotency-Key": sent.key}
        response = self.replicas.request(
            "POST", f"{self.session_path}/step", prefer=prefer, content=entry.body(), headers=headers
        )
        polls = 0
        while response.status_code == 202:
            polls += 1
            self.journal.note(sent.seq, "202")
            location = response.headers["location"]
            response = self.replicas.request("GET", location, prefer=prefer, headers={"Accept": sent.accept})
        reply = decode(response, self.config.dtype)
        document = reply.document
        if reply.status == 200:
            answer = Answer(
                status=200,
                step=int(document["step"]),
                metrics=document.get("metrics"),
                staleness=document.get("staleness"),
                version=reply.version,
                polls=polls,
            )
            self.journal.save_answer(sent.seq, answer, reply.params)
            return answer, reply.params
        answer = Answer(
            status=reply.status,
            problem_type=document.get("type"),
            current_step=document.get("current_step"),
            polls=polls,
        )
        self.journal.save_answer(sent.seq, answer, None)
        if reply.status != 409:
            raise RuntimeError(f"{self.config.worker}: contribution {sent} answered {reply.status}: {response.text}")
        return answer, None

    def settle(self, entry: Entry) -> tuple[dict[str, np.ndarray], int, Answer]:
        """Send a saved contribution; the params and step to go on from (fetched, if it was refused), and its answer."""
        answer, answered = self.send(entry)
        if answered is not None and answer.step is not None:
            return answered, answer.step, answer
        params, step = self.fetch_params(prefer=entry.sent.based_on_step + self.config.index)
        return params, step, answer

    def resume(self) -> tuple[dict[str, np.ndarray], int] | None:
        """After a restart: re-read the session, and send the unanswered contribution again, as it was."""
        pending = self.journal.pending()
        if pending is None:
            return None
        self.journal.note(pending.sent.seq, "resent")
        self.replicas.get_json(self.session_path)
        self.fetch_params()
        params, step, _ = self.settle(pending)
        return params, step

    # The runs.

    def wait_for_file(self, path: str) -> None:
        deadline = time.monotonic() + WAIT_LIMIT
        while not Path(path).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.config.worker}: {path} never appeared")
            time.sleep(0.02)

    def start(self) -> None:
        (self.journal.directory / READY).touch()
        if self.config.start_gate is not None:
            self.wait_for_file(self.config.start_gate)

    def run_sync(self) -> None:
        resumed = self.resume()
        if resumed is None:
            self.start()
            params, step = self.fetch_params(prefer=self.config.index)
        else:
            params, step = resumed
        while step < self.config.steps:
            if self.config.gate_round == step and self.config.gate_file is not None:
                self.wait_for_file(self.config.gate_file)
            entry = self.prepare(params, step, batch=step)
            if self.config.straggle_at == step:
                self.wait_for_step(functools.partial(operator.lt, step), f"a step past {step}")
            params, step, _ = self.settle(entry)

    def run_async(self) -> None:
        config = self.config
        held = self.fetch_params() if config.hold_first else None
        self.start()
        if held is not None:
            params, step = held
            entry = self.prepare(params, step, batch=0)
            held_step = step
            self.wait_for_step(lambda current: current - held_step > config.max_staleness, "a step too far ahead")
            self.send(entry)
        params, step = self.fetch_params(prefer=config.index)
        accepted = 0
        while accepted < config.contributions:
            params, step, answer = self.settle(self.prepare(params, step, batch=self.journal.next_seq()))
            accepted += answer.status == 200
        if config.tail_at is not None:
            tail_at = config.tail_at
            self.wait_for_step(lambda current: current >= tail_at, f"step {tail_at}")
            params, step = self.fetch_params()
            for _ in range(config.max_staleness + 2):
                self.send(self.prepare(params, step, batch=self.journal.next_seq()))


def main(config_path: str) -> None:
    torch.set_num_threads(1)
    config = WorkerConfig.load(Path(config_path))
    worker = Worker(config)
    try:
        if config.mode == "sync":
            worker.run_sync()
        else:
            worker.run_async()
    finally:
        worker.replicas.close()
    (Path(config.journal) / "done").write_text(json.dumps({"failovers": worker.replicas.failovers}))


def run_forked(config_path: str, log_path: str) -> None:
    """A worker in a process forked from the tests' forkserver: its output goes to ``log_path``."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, sys.stdout.fileno())
    os.dup2(log, sys.stderr.fileno())
    os.close(log)
    main(config_path)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
