"""Group commit: the writes that reach a SQLite database together share one transaction, and one fsync.

SQLite has one writer at a time, and a durable commit waits for the disk. A write
here is a batch of statements prepared by its request (all reading and computing
done before), so a transaction holds no request's own work. The first writer to
arrive leads: it opens a write transaction, runs its batch and those of the
writers that queued meanwhile, each inside a savepoint so that a failing batch
rolls back alone, commits them all at once, and then hands the lead to the next
writer waiting. Nobody is answered before the commit that holds its change has
returned, so each acknowledged write is on disk.

Some errors make SQLite roll back the whole transaction by itself ("database or
disk is full", I/O errors): every batch already run in it is then lost. The
leader checks for that after each failing batch; when it happened, every batch of
the group fails with that error and nothing is committed, because a COMMIT would
now be a silent no-op.

Every wait is bounded. A writer still queued after ``wait_seconds`` leaves the
queue with ``StorageBusy``. A writer whose batch is in a transaction waits for
that transaction, which its own bounds limit (the write lock's wait, SQLite's
busy timeout); past ``settle_seconds`` it gets ``StorageUnavailable``, saying its
outcome is unknown.
"""

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.store.driver_statements import DriverStatement
from service.store.errors import (
    StorageBusy,
    StorageFailure,
    StorageUnavailable,
    StoreError,
    VersionMismatch,
    classify,
)

MAX_GROUP = 64
"""Batches that may share one commit; more wait for the next one."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Write:
    """One statement of a batch; with ``expect_rows``, the batch fails unless it changes that many rows,
    with ``refusal`` if given (a guard's condition failed), else ``VersionMismatch``."""

    statement: sa.Executable | DriverStatement
    parameters: Mapping[str, Any] | None = None
    expect_rows: int | None = None
    payload_bytes: int = 0
    """The bytes of arrays or responses it writes: how much room it needs, for readiness probes."""
    refusal: StoreError | None = None


Batch = Sequence[Write]


class _Retry(Exception):
    """Rolls back a group's transaction so that it runs again without the batch that failed."""

    def __init__(self, without: "_Writer") -> None:
        super().__init__()
        self.without = without


def transaction_lost(error: BaseException) -> StorageFailure:
    """The failure of every batch of a transaction SQLite rolled back by itself after ``error``."""
    cause = classify(error, before_commit=True) or StorageUnavailable(str(error), before_commit=True)
    lost = type(cause)(f"the database rolled back the whole write transaction after: {cause}")
    if isinstance(lost, StorageUnavailable):
        lost.before_commit = True
    return lost


@dataclass(eq=False)
class _Writer:
    batch: Batch
    settled: threading.Event = field(default_factory=threading.Event)
    """Set once the writer leads, or once its batch is committed or has failed."""
    lead: bool = False
    error: BaseException | None = None


def run_batch(connection: Connection, batch: Batch) -> None:
    """Run each statement of ``batch`` on ``connection``, checking the rows each changed."""
    for write in batch:
        if isinstance(write.statement, DriverStatement):
            changed = write.statement.rowcount(connection, write.parameters or {})
        else:
            changed = connection.execute(write.statement, write.parameters).rowcount
        if write.expect_rows is not None and changed != write.expect_rows:
            if write.refusal is not None:
                raise write.refusal
            raise VersionMismatch(f"expected to change {write.expect_rows} row(s), changed {changed}")


class CommitQueue:
    def __init__(
        self,
        begin: Callable[[float], AbstractContextManager[Connection]],
        *,
        in_transaction: Callable[[Connection], bool],
        wait_seconds: float,
        settle_seconds: float,
    ) -> None:
        """``begin(timeout)`` opens a write transaction (commits it on exit), waiting at most ``timeout`` s
        for the database's write lock; ``in_transaction`` tells whether the database still has it open."""
        self._begin = begin
        self._in_transaction = in_transaction
        self._wait_seconds = wait_seconds
        self._settle_seconds = settle_seconds
        self._mutex = threading.Lock()
        self._waiting: deque[_Writer] = deque()
        self._leading = False

    def commit(self, batch: Batch, *, timeout: float | None = None) -> None:
        """Run ``batch`` in a write transaction and commit it durably; raises if it was not committed.

        ``timeout`` (default ``wait_seconds``) bounds the wait for a place in a transaction.
        """
        writer = _Writer(batch)
        with self._mutex:
            if self._leading:
                self._waiting.append(writer)
            else:
                self._leading = writer.lead = True
        if not writer.lead:
            self._await(writer, self._wait_seconds if timeout is None else timeout)
        if writer.lead:
            self._lead(writer, self._wait_seconds if timeout is None else timeout)
        if writer.error is not None:
            raise writer.error

    def _await(self, writer: _Writer, timeout: float) -> None:
        if writer.settled.wait(timeout):
            return
        with self._mutex:
            if writer in self._waiting:
                self._waiting.remove(writer)
                raise StorageBusy(f"no write transaction was free for {timeout:g} s")
        # Its batch is in a transaction being run: wait for that transaction's own bounds.
        if not writer.settled.wait(self._settle_seconds):
            log.error("a write transaction has not ended after %s s", self._settle_seconds)
            raise StorageUnavailable(
                f"the write transaction holding this change has not ended after {self._settle_seconds:g} s; "
                "its outcome is unknown"
            )

    def _lead(self, leader: _Writer, timeout: float) -> None:
        group = [leader]
        with self._mutex:
            while self._waiting and len(group) < MAX_GROUP:
                group.append(self._waiting.popleft())
        try:
            self._run_group(group, timeout)
        finally:
            for writer in group[1:]:
                writer.settled.set()
            self._hand_over()

    def _run_group(self, group: list[_Writer], timeout: float) -> None:
        """Commit the batches of ``group`` in one transaction; set the ``error`` of each writer whose batch
        was not committed.

        The batches run one after another, without savepoints (each would cost two more statements,
        and a statement is where a busy process makes the leader wait for the GIL). If a batch fails,
        the transaction is rolled back and run again without it: batches are data, and running them
        again is safe. A transaction that SQLite rolled back by itself fails every batch in it.
        """
        running = list(group)
        while running:
            try:
                with self._begin(timeout) as connection:
                    failed = self._run_until_one_fails(connection, running)
                    if failed is not None:
                        raise _Retry(failed)
                return
            except _Retry as retry:
                running.remove(retry.without)
            except Exception as error:
                for writer in running:
                    writer.error = error
                return

    def _run_until_one_fails(self, connection: Connection, running: list[_Writer]) -> "_Writer | None":
        """Run each batch; the writer of the first one that fails (its ``error`` set), or None."""
        for writer in running:
            try:
                run_batch(connection, writer.batch)
            except Exception as error:
                if not self._in_transaction(connection):
                    raise transaction_lost(error) from error
                writer.error = error
                return writer
        if not self._in_transaction(connection):  # pragma: no cover - an error would have said so
            raise StorageUnavailable("the database ended the write transaction by itself")
        return None

    def _hand_over(self) -> None:
        with self._mutex:
            if self._waiting:
                successor = self._waiting.popleft()
                successor.lead = True
                successor.settled.set()
            else:
                self._leading = False
