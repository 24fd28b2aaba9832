"""Large JSON bodies are decoded and encoded in worker processes.

orjson and numpy's list conversion hold the GIL for the whole call: for a
million-parameter step, hundreds of milliseconds in which the event loop of the
server process could not answer anyone. Above a size threshold the work moves
to a small process pool, which also lets two large requests use two cores.
Small bodies, the common case, stay in-thread: a round trip to another process
would cost more than the parse.

A worker exits once the server process that started it is gone. A server that
stops on a signal ends without running its exit handlers, which is where
``concurrent.futures`` tells its workers to stop, and a worker waiting for work
then waited forever, holding its memory and whatever its parent's stdout was.
"""

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from service.codecs import ArrayPath, dump_json, parse_json_with_arrays
from service.memory import keep_large_allocations

PARENT_CHECK_SECONDS = 1.0
"""How often a worker checks that the server that started it still runs."""


def _start_worker(server: int, malloc_mmap_threshold_bytes: int) -> None:
    """A worker's initializer: tune malloc as the server does, and exit once ``server`` is gone."""
    if malloc_mmap_threshold_bytes:
        keep_large_allocations(malloc_mmap_threshold_bytes)
    threading.Thread(target=_exit_without, args=(server,), name="server-watch", daemon=True).start()


def _exit_without(server: int) -> None:
    # Polled rather than a parent-death signal: that signal follows the thread that started the
    # worker, and here that is any request's thread, which may end long before the server.
    while os.getppid() == server:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _array_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_array_bytes(item) for item in value.values())
    if isinstance(value, list):
        return sum(_array_bytes(item) for item in value)
    return 0


class JsonWorkers:
    def __init__(self, *, processes: int, threshold_bytes: int, malloc_mmap_threshold_bytes: int = 0) -> None:
        """``malloc_mmap_threshold_bytes``, when not 0, is applied in each worker as in the server
        (``service.memory``): the workers handle the largest buffers of all."""
        self._processes = processes
        self._threshold = threshold_bytes
        self._malloc_mmap_threshold = malloc_mmap_threshold_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        """Request threads that need the pool first at the same time start one, not one each."""

    def _executor(self) -> ProcessPoolExecutor | None:
        if self._processes <= 0:
            return None
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self._processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(os.getpid(), self._malloc_mmap_threshold),
                )
            return self._pool

    def decode(self, body: bytes, array_paths: Sequence[ArrayPath]) -> dict[str, Any]:
        """The JSON object in ``body``, with the arrays at ``array_paths`` as numpy arrays."""
        pool = self._executor() if len(body) > self._threshold else None
        if pool is None:
            return parse_json_with_arrays(body, array_paths)
        decoded: dict[str, Any] = pool.submit(parse_json_with_arrays, body, array_paths).result()
        return decoded

    def encode(self, value: dict[str, Any]) -> bytes:
        pool = self._executor() if _array_bytes(value) > self._threshold else None
        if pool is None:
            return dump_json(value)
        encoded: bytes = pool.submit(dump_json, value).result()
        return encoded

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
