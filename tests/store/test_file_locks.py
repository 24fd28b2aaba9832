"""The locks server processes share: exclusive across processes and threads, each wait bounded."""

import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.store import StorageBusy
from service.store.sqlite.file_locks import WRITE_LOCK, LockFile, session_lock

HOLD_SECONDS = 0.5

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="open file description locks are Linux's")


def hold_for_a_while(path: Path, holding: Any, seconds: float) -> None:
    lock = LockFile(path)
    with lock.held(WRITE_LOCK, timeout=10, what="the lock"):
        holding.set()
        time.sleep(seconds)
    lock.close()


def held_by_another_process(path: Path, seconds: float) -> Any:
    context = multiprocessing.get_context("spawn")
    holding = context.Event()
    holder = context.Process(target=hold_for_a_while, args=(path, holding, seconds))
    holder.start()
    assert holding.wait(30), "the other process never took the lock"
    return holder


def test_another_process_waits_until_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "optim.sqlite3-locks"
    holder = held_by_another_process(path, HOLD_SECONDS)
    try:
        lock = LockFile(path)
        started = time.monotonic()
        with lock.held(WRITE_LOCK, timeout=10, what="the lock"):
            waited = time.monotonic() - started
        lock.close()
    finally:
        holder.join(30)
    assert waited >= HOLD_SECONDS * 0.5, f"took the lock after {waited:.3f} s while another process held it"


def test_another_thread_waits_until_the_holder_lets_go(tmp_path: Path) -> None:
    lock = LockFile(tmp_path / "optim.sqlite3-locks")
    holding, events = threading.Event(), []

    def hold() -> None:
        with lock.held(WRITE_LOCK, timeout=10, what="the lock"):
            holding.set()
            time.sleep(HOLD_SECONDS)
            events.append("released")

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    with lock.held(WRITE_LOCK, timeout=10, what="the lock"):
        events.append("taken")
    thread.join()
    lock.close()
    assert events == ["released", "taken"]


def test_waiting_longer_than_the_timeout_for_another_process_raises_and_the_lock_is_free_once_it_lets_go(
    tmp_path: Path,
) -> None:
    path = tmp_path / "optim.sqlite3-locks"
    holder = held_by_another_process(path, 2.0)
    lock = LockFile(path)
    try:
        started = time.monotonic()
        with (
            pytest.raises(StorageBusy, match="the lock stayed locked by another process"),
            lock.held(WRITE_LOCK, timeout=0.3, what="the lock"),
        ):
            pass
        assert time.monotonic() - started < 1.5
    finally:
        holder.join(30)
    # The abandoned wait took the lock when the other process let go, and gave it back.
    with lock.held(WRITE_LOCK, timeout=5, what="the lock"):
        pass
    lock.close()


def test_waiting_longer_than_the_timeout_for_another_thread_raises(tmp_path: Path) -> None:
    lock = LockFile(tmp_path / "optim.sqlite3-locks")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock.held(session_lock("s"), timeout=10, what="session s"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    with (
        pytest.raises(StorageBusy, match="session s stayed locked"),
        lock.held(session_lock("s"), timeout=0.2, what="session s"),
    ):
        pass
    with lock.held(session_lock("t"), timeout=0.2, what="session t"):
        pass  # another session's lock is free meanwhile
    release.set()
    thread.join()
    lock.close()


def test_held_if_free_says_whether_it_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "optim.sqlite3-locks"
    lock = LockFile(path)
    with lock.held_if_free(session_lock("s")) as held:
        assert held
    holder = held_by_another_process(path, HOLD_SECONDS * 4)
    try:
        with lock.held_if_free(WRITE_LOCK) as held:
            assert not held
    finally:
        holder.join(30)
    lock.close()
