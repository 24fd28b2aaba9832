"""Synchronous sessions' rounds in storage: the contributions to a session's open round, and the closed
rounds it remembers. The writes join the unit of work of the session's holder; the reads need no hold."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.store.base import Contribution, RoundRecord, RoundsKept
from service.store.sqlite.commit_queue import Write
from service.store.tables import round_contributions, rounds

ROUNDS_CHANNEL = "optim_rounds"
"""PostgreSQL's NOTIFY channel on which a closed round is announced, as ``<session id> <step>``."""


def _contribution(row: sa.Row[Any], *, with_grads: bool) -> Contribution:
    return Contribution(
        worker=row.worker,
        weight=row.weight,
        loss=row.loss,
        request_hash=row.request_hash,
        created_at=row.created_at,
        grads=row.grads if with_grads else b"",
    )


def read_contributions(connection: Connection, session_id: str, step: int, *, with_grads: bool) -> list[Contribution]:
    """The contributions to round ``step``, in ascending order of worker."""
    table = round_contributions
    columns = [table.c.worker, table.c.weight, table.c.loss, table.c.request_hash, table.c.created_at]
    if with_grads:
        columns.append(table.c.grads)
    rows = connection.execute(
        sa.select(*columns).where(table.c.session_id == session_id, table.c.step == step).order_by(table.c.worker)
    ).all()
    return [_contribution(row, with_grads=with_grads) for row in rows]


def read_round(connection: Connection, session_id: str, step: int) -> RoundRecord | None:
    row = connection.execute(sa.select(rounds).where(rounds.c.session_id == session_id, rounds.c.step == step)).first()
    if row is None:
        return None
    return RoundRecord(
        step=row.step,
        version=row.version,
        opened_at=row.opened_at,
        closed_at=row.closed_at,
        contributors=list(row.contributors),
        params=row.params,
    )


def contribution_write(session_id: str, step: int, contribution: Contribution) -> Write:
    return Write(
        sa.insert(round_contributions).values(
            session_id=session_id,
            step=step,
            worker=contribution.worker,
            weight=contribution.weight,
            loss=contribution.loss,
            request_hash=contribution.request_hash,
            created_at=contribution.created_at,
            grads=contribution.grads,
        ),
        payload_bytes=len(contribution.grads),
    )


def close_round_writes(session_id: str, record: RoundRecord, kept: RoundsKept, *, postgres: bool) -> list[Write]:
    """Remember the round, forget its contributions and the rounds (and copies) beyond ``kept``; on
    PostgreSQL, announce it on ``ROUNDS_CHANNEL`` when the transaction commits."""
    writes = [
        Write(
            sa.insert(rounds).values(
                session_id=session_id,
                step=record.step,
                version=record.version,
                opened_at=record.opened_at,
                closed_at=record.closed_at,
                contributors=record.contributors,
                params=record.params,
            ),
            payload_bytes=len(record.params),
        ),
        Write(
            sa.delete(round_contributions).where(
                round_contributions.c.session_id == session_id, round_contributions.c.step <= record.step
            )
        ),
        Write(sa.delete(rounds).where(rounds.c.session_id == session_id, rounds.c.step <= record.step - kept.rounds)),
        Write(
            sa.update(rounds)
            .where(
                rounds.c.session_id == session_id,
                rounds.c.step <= record.step - kept.responses,
                sa.func.length(rounds.c.params) > 0,
            )
            .values(params=b"")
        ),
    ]
    if postgres:
        writes.append(
            Write(
                sa.select(sa.func.pg_notify(ROUNDS_CHANNEL, f"{session_id} {record.step}")),
            )
        )
    return writes


def forget_rounds(session_id: str) -> list[Write]:
    """Forget a session's rounds and contributions (it is being deleted)."""
    return [
        Write(sa.delete(round_contributions).where(round_contributions.c.session_id == session_id)),
        Write(sa.delete(rounds).where(rounds.c.session_id == session_id)),
    ]
