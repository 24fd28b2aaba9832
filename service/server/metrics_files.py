"""Where the worker processes keep their metrics: prometheus-client's multiprocess mode.

Each worker writes its counters and histograms to files of its own in ``PROMETHEUS_MULTIPROC_DIR``, and a
scrape of any worker reads them all (``observability/metrics.py``), so that the counts are the server's, not
one process's. prometheus-client reads the variable once, when it is imported: it is set here, in
gunicorn's master, before anything imports it, and the workers inherit it as they fork. A worker that
exits leaves its files, whose counts stay in the sums; ``worker_exited`` (gunicorn's ``child_exit`` hook)
drops what only a live process may report.
"""

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"


class MetricsImportedTooEarly(RuntimeError):
    """prometheus-client was imported before its directory was set: the workers would count alone."""


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """``PROMETHEUS_MULTIPROC_DIR`` for the server's processes while it runs: the operator's, emptied of an
    earlier run's files, or else a new temporary directory, removed when the server stops."""
    if "prometheus_client" in sys.modules:
        raise MetricsImportedTooEarly(f"prometheus_client was imported before {MULTIPROCESS_DIRECTORY} was set")
    given = os.environ.get(MULTIPROCESS_DIRECTORY)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="optim-metrics-"))
        os.environ[MULTIPROCESS_DIRECTORY] = str(directory)
    master = os.getpid()
    try:
        yield directory
    finally:
        # The workers, forked inside the block, leave through here too: only the master cleans up.
        if not given and os.getpid() == master:
            shutil.rmtree(directory, ignore_errors=True)


def worker_exited(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook, in the master: the dead worker's live gauges go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]  # unannotated
