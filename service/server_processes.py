"""``serve --workers N``: N server processes on one port, each with a listening socket of its own.

uvicorn's own workers share one listening socket, and the process that wakes first
accepts every connection waiting. Clients that connect together, as a job's workers
do when it starts, land unevenly (31 of 32 connections in one process, in one trial),
and a client keeps its connection for its whole run. With ``SO_REUSEPORT`` (Linux),
each process here has its own socket bound to the port, and the kernel spreads new
connections evenly over them. The supervisor opens all the sockets before it starts a
process, so that a port in use fails at once, and a connection that arrives while its
process starts waits in that socket's queue. Where ``SO_REUSEPORT`` does not spread
connections, uvicorn's workers serve instead.

The processes share the database as replicas do: it serialises steps on a session, and
each process checks what it caches against it. The supervisor stops them all on SIGINT
or SIGTERM. A process that exits is replaced on the same socket, unless it exits within
``STARTUP_GRACE_SECONDS`` of its start, which a broken configuration would repeat
forever: then the server stops, with status 1. A process whose supervisor dies stops too.
"""

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

APP = "service.main:app"
GRACEFUL_SHUTDOWN_SECONDS = 10
BACKLOG = 2048
"""Connections each socket queues before its process accepts them, as uvicorn's default."""
STARTUP_GRACE_SECONDS = 10.0
PR_SET_PDEATHSIG = 1
"""Linux prctl option: the signal a process gets when its parent dies."""


def serve(*, host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
    """Serve until stopped; with ``workers`` > 1, in that many processes."""
    if workers == 1 or not _spreads_connections():
        uvicorn.run(APP, host=host, port=port, workers=workers, **_options(log_level, access_log))
        return
    try:
        listeners = _listeners(host, port, workers)
    except OSError as error:
        sys.exit(f"optim-service: cannot listen on {host}:{port}: {error}")
    sys.exit(_Supervisor(listeners, log_level=log_level, access_log=access_log).run())


def _spreads_connections() -> bool:
    """Whether sockets bound with SO_REUSEPORT share the port's connections (Linux), not just the port."""
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def _listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on one port, each its own queue of connections.

    A socket without SO_REUSEPORT binds the port first, and fails if anything listens
    there, even another server's SO_REUSEPORT sockets, which the kernel would otherwise
    let these join.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]  # port 0: the kernel's choice
    listeners: list[socket.socket] = []
    try:
        for _ in range(count):
            listener = socket.socket(family, socket.SOCK_STREAM)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((host, port))
            listener.listen(BACKLOG)
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


class _Supervisor:
    def __init__(self, listeners: list[socket.socket], *, log_level: str, access_log: bool) -> None:
        self._listeners = listeners
        self._log_level = log_level
        self._access_log = access_log
        self._context = multiprocessing.get_context("spawn")
        self._told_to_stop = False
        self._processes: list[BaseProcess] = []
        self._started: list[float] = []

    def run(self) -> int:
        """Serve until told to stop (status 0) or until a process fails as it starts (status 1)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for index in range(len(self._listeners)):
            self._processes.append(self._start(index))
            self._started.append(time.monotonic())
        status = 0
        while not self._told_to_stop:
            wait([process.sentinel for process in self._processes])
            for index, process in enumerate(self._processes):
                if self._told_to_stop or process.exitcode is None:
                    continue
                if time.monotonic() - self._started[index] < STARTUP_GRACE_SECONDS:
                    print(
                        f"optim-service: {process.name} exited with status {process.exitcode} as it started; stopping",
                        file=sys.stderr,
                    )
                    status = 1
                    self._stop_all()
                    break
                print(
                    f"optim-service: {process.name} exited with status {process.exitcode}; replacing it",
                    file=sys.stderr,
                )
                self._processes[index] = self._start(index)
                self._started[index] = time.monotonic()
        for process in self._processes:
            process.join(GRACEFUL_SHUTDOWN_SECONDS + 5)
            if process.exitcode is None:
                process.kill()
                process.join()
        return status

    def _start(self, index: int) -> BaseProcess:
        process = self._context.Process(
            target=_serve_one,
            args=(self._listeners[index], self._log_level, self._access_log, os.getpid()),
            name=f"optim-service-{index}",
        )
        process.start()
        return process

    def _stop_all(self) -> None:
        self._told_to_stop = True
        for process in self._processes:
            if process.exitcode is None:
                process.terminate()

    def _on_signal(self, _signal: int, _frame: FrameType | None) -> None:
        self._stop_all()


def _serve_one(listener: socket.socket, log_level: str, access_log: bool, supervisor: int) -> None:
    _stop_with_parent(supervisor)
    host, port = listener.getsockname()[:2]
    config = uvicorn.Config(APP, host=host, port=port, backlog=BACKLOG, **_options(log_level, access_log))
    uvicorn.Server(config).run(sockets=[listener])


def _options(log_level: str, access_log: bool) -> dict[str, Any]:
    return {"log_level": log_level, "access_log": access_log, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS}


def _stop_with_parent(supervisor: int) -> None:
    """Have the kernel send SIGTERM when the supervisor dies (even by SIGKILL), which uvicorn serves as a stop."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the line above
        sys.exit(0)
