"""A step's telemetry as the service answers and keeps it: the core's measures plus the client's loss, as
one JSON object; and the history's items, as ``GET /v1/sessions/{id}/metrics`` lists them."""

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from optim_core.telemetry import StepTelemetry
from service.store import StepMetrics

MAX_METRICS_PAGE = 10_000
"""The most items one page of a session's metrics holds."""


def finite_or_null(value: Any) -> Any:
    """``value`` with every number that is not finite, however deep, as None (JSON has no infinity)."""
    return _finite_or_null(value)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value


def step_metrics(telemetry: StepTelemetry, loss: float | None) -> dict[str, Any]:
    """The step's ``metrics`` object, in its documented order (docs/api.md); a number that is not finite (the
    norm of float64 params past 1e154, an effective learning rate over a zero denominator) is None."""
    metrics: dict[str, Any] = _finite_or_null(
        {
            "grad_norm": telemetry.grad_norm,
            "update_norm": telemetry.update_norm,
            "param_norm": telemetry.param_norm,
            "lr": telemetry.lr,
            "loss": loss,
            **telemetry.extra,
        }
    )
    return metrics


def kept_metrics(step: int, recorded_at: datetime, metrics: dict[str, Any]) -> StepMetrics:
    """The history's row for a step's ``metrics``."""
    return StepMetrics(step=step, recorded_at=recorded_at, document=orjson.dumps(metrics).decode())


def history_item(row: StepMetrics) -> dict[str, Any]:
    """One item of the history: the step, its metrics, and when it was applied (RFC 3339, UTC)."""
    metrics: dict[str, Any] = orjson.loads(row.document)
    return {"step": row.step, **metrics, "time": row.recorded_at.isoformat(timespec="microseconds") + "Z"}


def replayed_metrics(rows: Sequence[StepMetrics], step: int) -> dict[str, Any] | None:
    """A replayed step's metrics, from its history row if the history still keeps it."""
    if rows and rows[0].step == step:
        metrics: dict[str, Any] = orjson.loads(rows[0].document)
        return metrics
    return None
