"""A session's step metrics history: the row a step adds, in the step's own transaction, the thinning that
keeps a long run small, and the read of a page of it."""

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.store.base import MetricsKept, StepMetrics
from service.store.driver_statements import DriverStatement
from service.store.sqlite.commit_queue import Write
from service.store.tables import step_metrics

INSERT_METRICS = sa.insert(step_metrics).values(
    session_id=sa.bindparam("session_id"),
    step=sa.bindparam("step"),
    recorded_at=sa.bindparam("recorded_at", type_=sa.DateTime),
    metrics=sa.bindparam("metrics", type_=sa.Text),
)


def metrics_writes(insert: DriverStatement, session_id: str, metrics: StepMetrics, kept: MetricsKept) -> list[Write]:
    """Add ``metrics`` to the session's history; every ``kept.every`` steps, thin everything out of the recent
    window to its ``every``-th steps. One statement a step, two now and then.

    The thinning reaches back to the session's first row, not just over the stretch that has just left
    the window, so that rows kept under larger settings are thinned once the settings are lowered. It
    reads the rows kept before the window on the (session, step) key: about 1% of a long run's steps."""
    values = {"session_id": session_id, "step": metrics.step, "recorded_at": metrics.recorded_at}
    writes = [Write(insert, {**values, "metrics": metrics.document})]
    newest_thinned = metrics.step - kept.recent
    if metrics.step % kept.every == 0 and newest_thinned > 0:
        writes.append(
            Write(
                sa.delete(step_metrics).where(
                    step_metrics.c.session_id == session_id,
                    step_metrics.c.step <= newest_thinned,
                    step_metrics.c.step % kept.every != 0,
                )
            )
        )
    return writes


def read_metrics(connection: Connection, session_id: str, *, after_step: int, limit: int) -> list[StepMetrics]:
    rows = connection.execute(
        sa.select(step_metrics.c.step, step_metrics.c.recorded_at, step_metrics.c.metrics)
        .where(step_metrics.c.session_id == session_id, step_metrics.c.step > after_step)
        .order_by(step_metrics.c.step)
        .limit(limit)
    ).all()
    return [StepMetrics(step=row.step, recorded_at=row.recorded_at, document=row.metrics) for row in rows]


def forget_metrics(session_id: str) -> Write:
    """Forget a session's whole history (it is being deleted)."""
    return Write(sa.delete(step_metrics).where(step_metrics.c.session_id == session_id))
