"""The gunicorn worker: uvicorn, with bounded connections, that stops when gunicorn's master dies."""

import ctypes
import ctypes.util
import os
import signal
import sys
from typing import Any

from uvicorn_worker import UvicornWorker

from service.config import Settings
from service.server.connections import BoundedHttpProtocol, ConnectionLimits
from service.server.open_files import connections_that_fit

PR_SET_PDEATHSIG = 1
"""Linux prctl option: the signal a process gets when its parent dies."""
"""gunicorn's format, and the id of the request a line was written for."""
SHUTDOWN_MARGIN_SECONDS = 2.0
"""uvicorn's graceful shutdown ends this long before gunicorn kills the worker, so that the app's own
shutdown (closing the database) runs."""


class ServiceWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn-worker ships no type information
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings()
        limits = ConnectionLimits(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            max_connections=connections_that_fit(settings.max_connections),
        )
        self.CONFIG_KWARGS = {
            **UvicornWorker.CONFIG_KWARGS,
            "http": BoundedHttpProtocol.with_limits(limits),
            "timeout_graceful_shutdown": max(1.0, settings.graceful_shutdown_seconds - SHUTDOWN_MARGIN_SECONDS),
            # The service writes its own access line (observability/logs.py).
            "access_log": False,
        }
        super().__init__(*args, **kwargs)

    def init_process(self) -> None:
        _stop_with_parent(self.ppid)
        super().init_process()


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when gunicorn's master dies (even by SIGKILL), which uvicorn serves as a stop."""
    if sys.platform != "linux":
        return
    library = ctypes.util.find_library("c")
    if library is not None:
        ctypes.CDLL(library, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(0)
