"""A worker's contribution to an aggregating session: who sends it, which step's params it was computed on, how
much it counts, and the Idempotency-Key its body implies.

A contribution is a step request with three more fields (docs/api.md, "Data-parallel training"). The fields
are checked here, before anything is sent, as the service checks them.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from optim_client.client import Body
from optim_client.values import plain

WORKER_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LAST_STEP = 2**53 - 1
MAX_WEIGHT = 1e15

CONTRIBUTION_PENDING = (
    "The contribution may have been stored, and its round may have closed with it. The session keeps it as "
    "pending: its next step() sends it again first, the same bytes under the same Idempotency-Key, and is answered "
    "as the first attempt would have been (a step() with the same grads is that retry, and returns its params); "
    "resolve_pending() does so now"
)
"""What a contribution whose outcome is unknown, or whose round is still open, adds to its error."""


@dataclass(frozen=True)
class Contribution:
    """What makes a step request a contribution: ``worker``, ``based_on_step`` and ``weight`` (None: the
    service's default, 1)."""

    worker: str
    based_on_step: int
    weight: float | None = None

    def __post_init__(self) -> None:
        check_worker(self.worker)
        step = self.based_on_step
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= LAST_STEP:
            raise ValueError(f"Invalid based_on_step: {step!r} (an integer from 0 to 2**53 - 1)")
        if self.weight is not None:
            check_weight(self.weight)

    def fields(self) -> dict[str, Any]:
        """The fields the step's document adds (in a safetensors body, its metadata)."""
        fields: dict[str, Any] = {"worker": self.worker, "based_on_step": self.based_on_step}
        if self.weight is not None:
            fields["weight"] = plain(self.weight)
        return fields


def check_worker(worker: object) -> str:
    """``worker`` if it is a name the service takes: 1 to 64 characters of ``A-Z a-z 0-9 . _ : -``."""
    if not isinstance(worker, str) or WORKER_PATTERN.fullmatch(worker) is None:
        raise ValueError(f"Invalid worker: {worker!r} (1 to 64 characters of A-Z a-z 0-9 . _ : -)")
    return worker


def check_weight(weight: object) -> float:
    """``weight`` as a float if the service takes it: a finite number over 0 and at most 1e15."""
    value = plain(weight)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"weight must be a number, not {type(weight).__name__}")
    number = float(value)
    if not (math.isfinite(number) and 0 < number <= MAX_WEIGHT):
        raise ValueError(f"Invalid weight: {weight!r} (a finite number over 0 and at most 1e15)")
    return number


def contribution_key(body: Body) -> str:
    """The Idempotency-Key of a contribution: a digest of its body.

    The same contribution sent again, by a retry or by a worker restarted after it was sent, carries the
    same key, so an asynchronous session applies it once; a synchronous one knows it by its round and
    worker anyway.
    """
    digest = hashlib.sha256(body.media_type.encode() + b"\n" + body.content).hexdigest()
    return f"contribution-{digest}"
