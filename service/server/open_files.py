"""Open files: as many as the system lets the process have, and how many connections fit in them."""

import logging

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

RESERVED_FILES = 128
"""Open files kept for what is not a client connection: database connections, slot files, logs, pipes."""
log = logging.getLogger("service")


def raise_open_file_limit() -> int | None:
    """Raise the soft limit on open files to the hard one, as servers do; the limit now (None if unknown)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, error)
    return None if soft == resource.RLIM_INFINITY else soft


def connections_that_fit(wanted: int) -> int:
    """``wanted``, or fewer if the open-file limit leaves room for fewer client connections."""
    limit = raise_open_file_limit()
    if limit is None:
        return wanted
    fitting = max(1, limit - RESERVED_FILES)
    if fitting < wanted:
        log.warning("the open-file limit is %d: this process holds at most %d connections", limit, fitting)
    return min(wanted, fitting)
