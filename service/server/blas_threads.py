"""One BLAS thread per server process.

The service uses BLAS for one thing: the dot products behind each step's telemetry norms
(``optim_core/telemetry.py``), on cache-sized blocks. OpenBLAS splits a dot product of more than a few
thousand elements over all cores, and waking its threads for every block cost more than the work:
the telemetry of a 1M-element step took 2.4 ms against 0.32 ms with one thread (docs/benchmarks.md).
The server's own concurrency comes from its worker threads and processes, not from BLAS.
"""

from threadpoolctl import threadpool_limits


def one_blas_thread() -> None:
    """Limit every BLAS library loaded in this process to one thread, from now on."""
    threadpool_limits(limits=1, user_api="blas")
