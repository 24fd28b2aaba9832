"""What a worker sent and what it was answered, one file per fact, for its restart and for the test.

A contribution is saved (its body's exact bytes, its gradients, its key) before it is sent, so that a
worker killed before it read the answer can send it again as it was; the answer is saved once read.
Each file is written whole and then renamed into place: a killed worker leaves no half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Sent:
    """A contribution as it was (or is about to be) sent."""

    seq: int
    """The worker's count of contributions before this one."""
    worker: str
    based_on_step: int
    weight: float
    key: str
    """Its Idempotency-Key."""
    content_type: str
    accept: str


@dataclass(frozen=True)
class Answer:
    """The final answer to a contribution: 200 (applied) or a refusal; 202s are events on the way."""

    status: int
    step: int | None = None
    metrics: dict[str, Any] | None = None
    staleness: int | None = None
    version: str | None = None
    """The ETag's version, without the representation's suffix (the same for JSON and safetensors)."""
    problem_type: str | None = None
    current_step: int | None = None
    polls: int = 0
    """How many 202 answers came before this one."""


@dataclass
class Entry:
    """One contribution in a journal, with its answer if it has one."""

    sent: Sent
    answer: Answer | None
    events: list[str] = field(default_factory=list)
    directory: Path = Path()

    @property
    def accepted(self) -> bool:
        return self.answer is not None and self.answer.status == 200

    def grads(self) -> dict[str, np.ndarray]:
        return _load_arrays(_path(self.directory, self.sent.seq, "grads.npz"))

    def params(self) -> dict[str, np.ndarray]:
        """The params its answer held."""
        return _load_arrays(_path(self.directory, self.sent.seq, "params.npz"))

    def body(self) -> bytes:
        return _path(self.directory, self.sent.seq, "body").read_bytes()


class Journal:
    """A worker's directory of contributions and answers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def entries(self) -> list[Entry]:
        found = []
        for path in sorted(self.directory.glob("*.sent.json")):
            sent = Sent(**json.loads(path.read_text()))
            answer_path = self._path(sent.seq, "answer.json")
            answer = Answer(**json.loads(answer_path.read_text())) if answer_path.exists() else None
            events_path = self._path(sent.seq, "events")
            events = events_path.read_text().split() if events_path.exists() else []
            found.append(Entry(sent, answer, events, self.directory))
        return found

    def pending(self) -> Entry | None:
        """The contribution sent last, if it was never answered (the worker died first)."""
        entries = self.entries()
        if entries and entries[-1].answer is None:
            return entries[-1]
        return None

    def next_seq(self) -> int:
        entries = self.entries()
        return entries[-1].sent.seq + 1 if entries else 0

    def save_sent(self, sent: Sent, body: bytes, grads: dict[str, np.ndarray]) -> None:
        """Everything needed to send it again; the ``.sent.json`` last, so that it names complete files."""
        _write(self._path(sent.seq, "body"), body)
        _write_arrays(self._path(sent.seq, "grads.npz"), grads)
        _write(self._path(sent.seq, "sent.json"), json.dumps(asdict(sent)).encode())

    def save_answer(self, seq: int, answer: Answer, params: dict[str, np.ndarray] | None) -> None:
        if params is not None:
            _write_arrays(self._path(seq, "params.npz"), params)
        _write(self._path(seq, "answer.json"), json.dumps(asdict(answer)).encode())

    def note(self, seq: int, event: str) -> None:
        """An event on the way to the answer (``resent``, ``202``); the test waits for some."""
        path = self._path(seq, "events")
        existing = path.read_bytes() if path.exists() else b""
        _write(path, existing + event.encode() + b"\n")

    def _path(self, seq: int, kind: str) -> Path:
        return _path(self.directory, seq, kind)

    def has_event(self, seq: int, event: str) -> bool:
        path = self._path(seq, "events")
        return path.exists() and event in path.read_text().split()


def _path(directory: Path, seq: int, kind: str) -> Path:
    return directory / f"{seq:04d}.{kind}"


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, **arrays)  # type: ignore[arg-type]
    os.replace(temporary, path)


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
