"""Where the examples find an optim-service: the URL given, the one `make serve` starts, or their own.

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    with service_url(parser.parse_args()) as url:
        ...

``--url`` (default ``$OPTIM_SERVICE_URL``, else http://127.0.0.1:8000, where ``make serve`` listens)
is used when something answers there. ``--start-server`` (or the default URL with nothing answering)
starts ``python -m service serve`` on a free port over a temporary SQLite database, and stops it
at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 30.0


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"the service's URL (default: $OPTIM_SERVICE_URL, else {DEFAULT_URL})")
    parser.add_argument(
        "--start-server", action="store_true", help="start a server of our own (temporary SQLite database)"
    )


@contextmanager
def service_url(args: argparse.Namespace) -> Iterator[str]:
    """The URL of a service that answers: the one asked for, or one started here for the duration."""
    url = args.url or os.environ.get("OPTIM_SERVICE_URL") or DEFAULT_URL
    if not args.start_server:
        if _healthy(url):
            yield url
            return
        if args.url or os.environ.get("OPTIM_SERVICE_URL"):
            raise SystemExit(f"nothing answers at {url}; start one (`make serve`) or pass --start-server")
        print(f"nothing answers at {url}; starting a server of our own", file=sys.stderr)
    with _own_server() as own_url:
        yield own_url


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _own_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="optim-example-") as directory:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--database-url", f"sqlite:///{Path(directory) / 'optim.sqlite3'}", "--log-level", "warning"]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        with (Path(directory) / "server.log").open("wb") as log:
            server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_until_healthy(server, url, Path(directory) / "server.log")
                print(f"started an optim-service at {url} (pid {server.pid})", file=sys.stderr)
                yield url
            finally:
                server.terminate()
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def _wait_until_healthy(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not _healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait()
            raise SystemExit(f"the server did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
