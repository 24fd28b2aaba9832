"""A step as the SDK sends it (kept, to be sent again, while its outcome is unknown), and what a 412 to it means.

Every step carries an Idempotency-Key and ``If-Match`` with the ETag of the session as the SDK last
saw it. A repeat of a step the service applied is answered from its key, while the service
remembers it; after that, If-Match refuses the repeat (412) instead of applying it a second time.
"""

from __future__ import annotations

from dataclasses import dataclass

from optim_client.client import Body
from optim_client.errors import PreconditionFailedError, StepConflictError

PENDING = (
    "The step may have been applied. The session keeps it as pending: its next step() sends it again first, with "
    "the same Idempotency-Key and If-Match, so it is applied exactly once (a step() with the same grads is that "
    "retry, and returns its params); resolve_pending() does so now, and pending_key names it"
)
"""What a step whose outcome is unknown adds to its error."""


@dataclass(frozen=True)
class StepRequest:
    """A step as sent, byte for byte: its Idempotency-Key, its body, the ETag it was sent for (None: no
    If-Match), and the session's step counter then (a contribution's ``based_on_step``)."""

    key: str
    body: Body
    etag: str | None
    step: int
    contribution: bool = False
    """Whether it is a worker's contribution to an aggregating session."""

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Idempotency-Key": self.key}
        if self.etag is not None:
            headers["If-Match"] = self.etag
        return headers


def version_of(etag: str | None) -> int | None:
    """The session version an ETag of this service names (``"7"`` or ``"7.safetensors"``), or None."""
    if etag is None:
        return None
    # One ETag per representation: "7" for JSON, "7.safetensors" for safetensors (docs/api.md).
    inner = etag.removeprefix("W/").strip('"').removesuffix(".safetensors")
    return int(inner) if inner.isdecimal() else None


def step_conflict(
    request: StepRequest,
    refused: PreconditionFailedError,
    *,
    in_doubt: bool,
    step: int | None,
    etag: str | None,
    unread: str | None = None,
) -> StepConflictError:
    """The error for a 412 to ``request``, given where the session is now (``step`` and ``etag``, None with
    ``unread`` saying why when it could not be read). ``in_doubt``: an earlier attempt of the request
    may have been applied (its outcome was unknown)."""
    sent, now = version_of(request.etag), version_of(etag)
    applied: bool | None = None
    if step is None:
        position = f"The session's state could not be read ({unread})"
        after = "refresh() reads it"
    else:
        position = (
            f"The session was at step {request.step}, version {sent} when the step was sent, and is at step {step}, "
            f"version {now} now"
        )
        after = "This Session now holds the service's state: step() again applies new grads on top of it"
    if not in_doubt:
        applied = False
        what = (
            "The step was not applied: the session changed after this Session last saw it (another client, or "
            f"another Session object, changed it). {position}"
        )
    elif step == request.step:
        applied = False
        what = (
            f"The step was not applied. {position}: no step was applied since it was sent. Another client changed "
            "the session otherwise (hyperparameters or state), and a step sent for the version before that change "
            "is never applied"
        )
    else:
        what = (
            "Whether the step was applied cannot be told: an earlier attempt's outcome was unknown, and the service "
            "no longer remembers its Idempotency-Key (it keeps keys for a limited time and number), so If-Match "
            f"refused the repeat instead of the key answering it. {position}"
        )
        if step is not None and now is not None and sent is not None:
            if step == request.step + 1 and now == sent + 1:
                what += (
                    ": one step and one version on, as this step alone would have left it, but another client's "
                    "step would look the same"
                )
            else:
                what += f": {step - request.step} steps on, so other clients changed it too"
    return StepConflictError(
        f"412 {refused.title}: {what}. {after}",
        refused=refused,
        expected_step=request.step,
        expected_version=sent,
        step=step,
        version=now,
        applied=applied,
    )
