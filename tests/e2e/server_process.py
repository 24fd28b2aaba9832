"""A real optim-service server process, for tests of what only a real process shows.

``ServerProcess`` runs ``sys.executable -m service serve --host 127.0.0.1 --port PORT --database-url URL``
on a free port, waits until ``GET /healthz`` answers 200, and stops it gracefully (SIGTERM) or
crashes it (SIGKILL); ``start()`` again restarts it on the same database. The server's stdout and
stderr go to a log file, whose tail is in every error this module raises (a server that fails to
start says why). Processes are always cleaned up: by the context manager, by the ``server_factory``
fixture at teardown, and at interpreter exit for anything still running.

Use it as a context manager::

    with ServerProcess(sqlite_url(tmp_path / "optim.sqlite3"), log_dir=tmp_path) as server:
        httpx.get(f"{server.base_url}/healthz")
        server.kill()   # SIGKILL
        server.start()  # the same database, and the same port when it is still free

or through the ``server_factory`` fixture (import ``server_factory_fixture`` into a test module or
conftest to make it available)::

    def test_something(server_factory: ServerFactory) -> None:
        server = server_factory()  # a fresh SQLite database under tmp_path
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
"""Seconds a server may take to answer ``GET /healthz`` with 200 after it is launched."""
STOP_TIMEOUT = 15.0
"""Seconds a server may take to exit after SIGTERM before it is killed (uvicorn's graceful shutdown is 10 s)."""
LOG_TAIL_CHARS = 6000
BIND_ATTEMPTS = 3

_running: set[ServerProcess] = set()
"""Servers launched and not yet reaped, for the cleanup at interpreter exit."""


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite database file at ``path``."""
    return f"sqlite:///{path}"


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the kernel's choice for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerError(RuntimeError):
    """The server process did not start, or misbehaved while the helper managed it."""


class ServerProcess:
    """One optim-service server on one database; start, stop, kill and restart it at will."""

    def __init__(
        self,
        database_url: str,
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        name: str = "server",
        startup_timeout: float = STARTUP_TIMEOUT,
        workers: int = 1,
        open_files: int | None = None,
    ) -> None:
        """``open_files``, if given, is the server's limit on open files, which it cannot raise."""
        self.database_url = database_url
        self.workers = workers
        self.open_files = open_files
        self.env = dict(env or {})
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self.log_path = log_dir / f"{name}.log"
        self.starts = 0
        """How many times the process was launched and became healthy."""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; the port may change on a restart if another process took it."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--database-url",
            self.database_url,
            "--workers",
            str(self.workers),
        ]

    def start(self) -> ServerProcess:
        """Launch the server and wait until ``GET /healthz`` answers 200; raises ``ServerError`` with its log if not.

        Restarting reuses the port when it can; if another process took it meanwhile, a new free port is used.
        """
        if self.running:
            raise ServerError(f"the server (pid {self.pid}) is already running")
        self._reap()
        for attempt in range(BIND_ATTEMPTS):
            self._launch()
            try:
                self._wait_healthy()
            except ServerError:
                if attempt + 1 < BIND_ATTEMPTS and "address already in use" in self.log_tail().lower():
                    self._reap()
                    self.port = free_port()
                    continue
                raise
            self.starts += 1
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` seconds for a graceful exit (else SIGKILL); the exit code.

        A graceful uvicorn exits with 0, or with -SIGTERM when it re-raises the signal after shutting down;
        -SIGKILL means it did not exit in time and was killed.
        """
        process = self._process
        if process is None:
            raise ServerError("the server is not running")
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                process.wait()
        return self._reap()

    def kill(self) -> int:
        """SIGKILL the server and anything it started, as a crash would; its exit code."""
        process = self._process
        if process is None:
            raise ServerError("the server is not running")
        self._kill_group()
        process.wait()
        return self._reap()

    def restart(self, *, crash: bool = False) -> ServerProcess:
        """Stop the server (SIGKILL if ``crash``, else SIGTERM) and start it again on the same database."""
        if self.running:
            if crash:
                self.kill()
            else:
                self.stop()
        return self.start()

    def close(self) -> None:
        """Make sure nothing is left running: stop gracefully if running, then kill whatever remains."""
        if self._process is not None:
            if self._process.poll() is None:
                self.stop()
            else:
                self._reap()

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of what the server wrote to stdout and stderr since it was last launched."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-chars:]

    def __enter__(self) -> ServerProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerProcess(pid={self.pid}, url={self.base_url!r}, database_url={self.database_url!r})"

    # Internals.

    def _launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()
        self._log.write(f"=== {' '.join(self.command())}\n".encode())
        self._log.flush()
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self._process = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group, so that kill() takes anything the server started along with it.
            start_new_session=True,
            preexec_fn=None if self.open_files is None else functools.partial(_limit_open_files, self.open_files),
        )
        _running.add(self)

    def _wait_healthy(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_problem = "no answer yet"
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while True:
                code = process.poll()
                if code is not None:
                    self._reap()
                    raise ServerError(f"the server exited with code {code} before it was healthy:\n{self.log_tail()}")
                try:
                    response = client.get("/healthz")
                except httpx.TransportError as error:
                    last_problem = f"{type(error).__name__}: {error}"
                else:
                    if response.status_code == 200:
                        return
                    last_problem = f"GET /healthz answered {response.status_code}: {response.text[:500]}"
                if time.monotonic() > deadline:
                    self._kill_group()
                    process.wait()
                    self._reap()
                    raise ServerError(
                        f"the server did not answer GET /healthz with 200 within {self.startup_timeout} s "
                        f"({last_problem}); it was killed. Its output:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def _kill_group(self) -> None:
        process = self._process
        if process is None:
            return
        # The group is the one start_new_session created for this process: its id is the process's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    def _reap(self) -> int:
        """Forget an exited process (after killing what is left of its group); its exit code."""
        process = self._process
        code = 0
        if process is not None:
            if process.poll() is None:
                raise ServerError(f"the server (pid {process.pid}) is still running")
            code = process.returncode
            # Anything the server left behind in its process group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            self._process = None
            _running.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def _limit_open_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@atexit.register
def _kill_leftovers() -> None:
    """At interpreter exit (an interrupted test run, say), kill every server still running."""
    for server in list(_running):
        server._kill_group()
        if server._process is not None:
            server._process.wait()
        server._reap()


class ServerFactory:
    """Starts servers, each on a fresh database from ``new_database`` by default; close() stops them all."""

    def __init__(self, directory: Path, new_database: Callable[[], str]) -> None:
        self.directory = directory
        self.new_database = new_database
        self.servers: list[ServerProcess] = []

    def __call__(
        self,
        database_url: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start: bool = True,
        workers: int = 1,
    ) -> ServerProcess:
        name = f"server-{len(self.servers) + 1}"
        url = database_url if database_url is not None else self.new_database()
        server = ServerProcess(url, log_dir=self.directory, env=env, name=name, workers=workers)
        self.servers.append(server)
        if start:
            server.start()
        return server

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> ServerFactory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


@pytest.fixture(name="server_factory")
def server_factory_fixture(tmp_path: Path, new_database: Callable[[], str]) -> Iterator[ServerFactory]:
    """Starts real server processes, each on a fresh database of the test's engine; all stopped at teardown."""
    with ServerFactory(tmp_path, new_database) as factory:
        yield factory


# Comparing what a server returned with what optim_core computes in-process.


def json_body(value: object) -> bytes:
    """``value`` as a JSON request body; numpy arrays become nested lists (float32 values exactly, as float64)."""
    return json.dumps(_to_json(value), allow_nan=False).encode()


def _to_json(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    return value


def assert_same_array(actual: object, expected: np.ndarray, where: str) -> None:
    """The JSON value ``actual`` read as ``expected``'s dtype (as the contract says) holds exactly its bits."""
    got = np.asarray(actual, dtype=expected.dtype)
    assert got.shape == expected.shape, f"{where}: shape {got.shape}, expected {expected.shape}"
    if got.tobytes() != expected.tobytes():
        bits = np.dtype(f"u{expected.dtype.itemsize}")
        differ = np.flatnonzero(got.reshape(-1).view(bits) != expected.reshape(-1).view(bits))
        first = int(differ[0])
        raise AssertionError(
            f"{where}: {differ.size} of {expected.size} elements differ; the first at flat index {first}: "
            f"{got.reshape(-1)[first]!r}, expected {expected.reshape(-1)[first]!r}"
        )


def assert_same_params(actual: Mapping[str, object], expected: Mapping[str, np.ndarray], where: str) -> None:
    """JSON params (as the server returned them) hold exactly the bits of ``expected``."""
    assert sorted(actual) == sorted(expected), f"{where}: params {sorted(actual)}, expected {sorted(expected)}"
    for name, value in expected.items():
        assert_same_array(actual[name], np.asarray(value), f"{where}, param {name!r}")


def assert_same_state_dict(
    actual: Mapping[str, Any], expected: Mapping[str, Any], dtype: np.dtype[Any], where: str
) -> None:
    """A state_dict the server returned equals optim_core's: groups, steps, and every state array bit for bit."""
    expected_groups = json.loads(json.dumps(expected["param_groups"]))
    assert actual["param_groups"] == expected_groups, (
        f"{where}: param_groups {actual['param_groups']}, expected {expected_groups}"
    )
    assert sorted(actual["state"]) == sorted(expected["state"]), f"{where}: state keys {sorted(actual['state'])}"
    for index, expected_entry in expected["state"].items():
        entry = actual["state"][index]
        assert sorted(entry) == sorted(expected_entry), f"{where}: state[{index}] keys {sorted(entry)}"
        assert entry["step"] == expected_entry["step"], f"{where}: state[{index}]['step'] {entry['step']!r}"
        for key, value in expected_entry.items():
            if key != "step":
                assert_same_array(entry[key], np.asarray(value, dtype=dtype), f"{where}, state[{index}][{key!r}]")
