"""How a data-parallel session takes its workers' contributions: the ``aggregation`` settings, checked as a
create body gives them, and the three fields a contribution adds to a step request.

``{"mode": "sync", "workers": N, "min_workers": M, "timeout_s": T}``: a round per step, closed by N
contributions at once, or by at least M once T seconds have passed since its first.
``{"mode": "async", "max_staleness": K, "staleness_weighting": "none" | "inverse"}``: every contribution is
a step of its own, refused when more than K steps stale.
"""

import math
import re
from dataclasses import dataclass
from typing import Any

from service.sessions.errors import InvalidRequest

MAX_WORKERS = 1024
MAX_STEP = 2**53 - 1
"""The largest step counter (``wire/json_arrays.MAX_STEP``), and so the largest useful ``max_staleness``."""
MAX_TIMEOUT_SECONDS = 86_400.0
MAX_WEIGHT = 1e15
"""The largest weight: a total of a thousand of them stays far inside a double's exact integers."""
WORKER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""What a worker id looks like; the OpenAPI document states the same rule."""
LOC = ("body", "aggregation")


@dataclass(frozen=True)
class Contribution:
    """What a step request adds on an aggregating session: who sent it, from which step's params, how much it counts."""

    worker: str
    based_on_step: int
    weight: float = 1.0


def _integer(settings: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int:
    """The integer at ``key`` (or ``default`` when absent), from ``low`` to ``high``; null is refused."""
    value = settings.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest((*LOC, key), f"{key} must be an integer from {low} to {high}, not {value!r}")
    return value


def _check_keys(settings: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in settings:
        if key not in allowed:
            raise InvalidRequest((*LOC, key), f"unknown field {key!r} for mode {settings['mode']!r}: {list(allowed)}")


def checked_aggregation(settings: object) -> dict[str, Any] | None:
    """The aggregation settings, complete with their defaults; ``InvalidRequest`` naming the field at fault."""
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise InvalidRequest(LOC, "aggregation must be an object, or null")
    mode = settings.get("mode")
    if mode == "sync":
        _check_keys(settings, ("mode", "workers", "min_workers", "timeout_s"))
        if "workers" not in settings:
            raise InvalidRequest((*LOC, "workers"), "a synchronous session needs workers")
        workers = _integer(settings, "workers", None, 1, MAX_WORKERS)
        min_workers = _integer(settings, "min_workers", workers, 1, MAX_WORKERS)
        if min_workers > workers:
            raise InvalidRequest((*LOC, "min_workers"), f"min_workers ({min_workers}) is more than workers ({workers})")
        timeout = settings.get("timeout_s")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_TIMEOUT_SECONDS
        ):
            raise InvalidRequest(
                (*LOC, "timeout_s"), f"timeout_s must be a number over 0 and at most {MAX_TIMEOUT_SECONDS:g}, or null"
            )
        if timeout is None and min_workers < workers:
            raise InvalidRequest((*LOC, "timeout_s"), "min_workers below workers needs a timeout_s")
        return {
            "mode": "sync",
            "workers": workers,
            "min_workers": min_workers,
            "timeout_s": None if timeout is None else float(timeout),
        }
    if mode == "async":
        _check_keys(settings, ("mode", "max_staleness", "staleness_weighting"))
        given = settings.get("max_staleness")
        max_staleness = None if given is None else _integer(settings, "max_staleness", None, 0, MAX_STEP)
        weighting = settings.get("staleness_weighting", "none")
        if weighting not in ("none", "inverse"):
            raise InvalidRequest(
                (*LOC, "staleness_weighting"), f"staleness_weighting must be 'none' or 'inverse', not {weighting!r}"
            )
        return {"mode": "async", "max_staleness": max_staleness, "staleness_weighting": weighting}
    raise InvalidRequest((*LOC, "mode"), f"mode must be 'sync' or 'async', not {mode!r}")


def checked_contribution(aggregation: dict[str, Any] | None, contribution: Contribution | None) -> None:
    """That the request has the contribution fields exactly when the session aggregates."""
    if aggregation is None and contribution is not None:
        raise InvalidRequest(
            ("body", "worker"), "worker, based_on_step and weight are for aggregating sessions; this one is not"
        )
    if aggregation is not None and contribution is None:
        raise InvalidRequest(
            ("body", "worker"),
            f"this session aggregates contributions ({aggregation['mode']}): give worker and based_on_step",
        )
