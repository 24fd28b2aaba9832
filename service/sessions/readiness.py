"""Readiness: whether this process can serve what clients ask of it now."""

from service.store import SessionStore, StorageFailure


def check_readiness(store: SessionStore, *, timeout: float) -> str | None:
    """Why the service is not ready, or None when it is: storage must answer a read, and, when its
    last write failed, commit a small write within ``timeout`` s (which clears the failure)."""
    try:
        store.ping(timeout=timeout)
    except Exception as error:
        return f"storage does not answer reads: {type(error).__name__}: {error}"
    failure = store.health.failure
    if failure is None:
        return None
    try:
        store.probe_writes(timeout=timeout)
    except StorageFailure as error:
        return f"writes fail ({failure.reason}); a probe write failed too: {error}"
    return None
