"""The writer lock excludes other processes, and other threads, until its holder lets go."""

import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.store.writer_lock import WriterLock

HOLD_SECONDS = 0.5


def hold_for_a_while(path: Path, holding: Any) -> None:
    lock = WriterLock(path)
    with lock.held():
        holding.set()
        time.sleep(HOLD_SECONDS)
    lock.close()


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_another_process_waits_until_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "optim.sqlite3-writer-lock"
    context = multiprocessing.get_context("spawn")
    holding = context.Event()
    holder = context.Process(target=hold_for_a_while, args=(path, holding))
    holder.start()
    try:
        assert holding.wait(30), "the other process never took the lock"
        lock = WriterLock(path)
        started = time.monotonic()
        with lock.held():
            waited = time.monotonic() - started
        lock.close()
    finally:
        holder.join(30)
    assert waited >= HOLD_SECONDS * 0.5, f"took the lock after {waited:.3f} s while another process held it"


def test_another_thread_waits_until_the_holder_lets_go(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "optim.sqlite3-writer-lock")
    holding, events = threading.Event(), []

    def hold() -> None:
        with lock.held():
            holding.set()
            time.sleep(HOLD_SECONDS)
            events.append("released")

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    with lock.held():
        events.append("taken")
    thread.join()
    lock.close()
    assert events == ["released", "taken"]
