"""``optim-service serve``: gunicorn's master process over uvicorn workers, each with its own socket.

gunicorn starts the workers, replaces any that dies at any time, and stops them on
SIGTERM, killing those still running after the graceful period, however the
storage behaves. A worker that fails as it starts (a broken configuration) stops
the server instead, which a restart would only repeat. On Linux each worker binds
the port with ``SO_REUSEPORT`` (gunicorn's ``reuse_port``), so that the kernel
spreads new connections over the workers evenly; with one shared socket, the
worker that wakes first accepts every connection waiting. Workers stop when the
master dies, even by SIGKILL.
"""

import logging
import math
import os
import socket
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.errors import HaltServer
from gunicorn.glogging import Logger

from service.api.request_ids import RequestIdFilter
from service.config import Settings
from service.observability.logs import ACCESS_LOGGER, JsonFormatter, formatter
from service.server.metrics_files import worker_exited
from service.server.open_files import raise_open_file_limit

WORKER = "service.server.worker.ServiceWorker"
BACKLOG = 2048
"""Connections each socket queues before its worker accepts them, as uvicorn's default."""
WORKER_TIMEOUT_SECONDS = 60
"""A worker whose event loop has not ticked for this long is killed and replaced (gunicorn's ``timeout``)."""


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def run(self) -> None:
        arbiter = Arbiter(self)
        try:
            arbiter.run()
        except HaltServer as halt:
            # Raised where the arbiter does not catch it (a worker that fails at once, while the others
            # start): stop the rest as it would have.
            arbiter.halt(reason=halt.reason, exit_status=halt.exit_status)

    def load(self) -> Any:
        """The app, built in each worker after it is forked (nothing of it is shared between workers)."""
        from service.app import create_app

        return create_app()


def serve(*, host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
    """Serve until stopped; exits 1 if the port is taken or a worker fails as it starts."""
    try:
        port = _free_port(host, port)
    except OSError as error:
        sys.exit(f"optim-service: cannot listen on {host}:{port}: {error}")
    raise_open_file_limit()
    settings = Settings()
    _log_service_to_stderr(log_level, log_format=settings.log_format, access_log=access_log)
    options: dict[str, Any] = {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers,
        "worker_class": WORKER,
        "reuse_port": sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT"),
        "backlog": BACKLOG,
        "graceful_timeout": math.ceil(settings.graceful_shutdown_seconds),
        "timeout": WORKER_TIMEOUT_SECONDS,
        "keepalive": math.ceil(settings.keep_alive_timeout_seconds),
        "loglevel": log_level,
        "errorlog": "-",
        # The service writes its own access line (observability/logs.py), with the request's id and route.
        "accesslog": None,
        "child_exit": worker_exited,
        "proc_name": "optim-service",
        "control_socket_disable": True,
    }
    if settings.log_format == "json":
        options["logger_class"] = _JsonGunicornLogger
    master = os.getpid()
    try:
        _Gunicorn(options).run()
    except SystemExit as exit:
        # A worker, forked from here, leaves through here too: only the master's exit is translated.
        if os.getpid() == master and exit.code in (Arbiter.WORKER_BOOT_ERROR, Arbiter.APP_LOAD_ERROR):
            sys.exit("optim-service: a worker exited as it started; stopping (its error is above)")
        raise


def _log_service_to_stderr(level: str, *, log_format: str, access_log: bool) -> None:
    """The service's own log lines beside gunicorn's, at the level asked for, in ``log_format``, each with the id
    of the request it was written for; the access line of each request unless ``access_log`` is off. Set up
    once, here: the workers inherit it as they fork."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(log_format))
    service_log = logging.getLogger("service")
    service_log.addHandler(handler)
    service_log.setLevel(level.upper())
    service_log.propagate = False
    if not access_log:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)


class _JsonGunicornLogger(Logger):
    """gunicorn's log (and uvicorn's, which its workers write through it) as JSON lines, as the service's."""

    def setup(self, cfg: Config) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
                handler.addFilter(RequestIdFilter())


def _free_port(host: str, port: int) -> int:
    """``port`` (the kernel's choice for 0) if nothing listens there; OSError if something does.

    The workers bind with SO_REUSEPORT, which would let them join another server's sockets on the
    port; a socket without it fails instead.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        chosen: int = probe.getsockname()[1]
        return chosen
