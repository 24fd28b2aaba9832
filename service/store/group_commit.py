"""Group commit: concurrent SQLite writers share one transaction, and so one fsync.

SQLite has one writer at a time, and a durable commit waits for the disk. When
several steps arrive together, the first becomes the leader: it opens a
transaction and runs its own work, then lets each writer that queued meanwhile
run its work in the same transaction, each inside a savepoint (a failing one
rolls back alone), and commits them all at once. If the leader's own work
fails, nothing else is in the transaction yet, and it all rolls back. Nobody is answered before the
commit that holds its change has returned, so each acknowledged step is on
disk. After committing, the leader hands the lead to the next writer waiting.

A writer may name a key (the session it writes): a group holds at most one
writer per key, and a writer whose key is taken waits for a later group. So a
transaction changes each session at most once, which the slot files need.
"""

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

MAX_GROUP = 64
"""Writers that may share one commit; more wait for the next one."""


@dataclass(eq=False)
class _Writer:
    key: str | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    connection: Connection | None = None
    done: threading.Event = field(default_factory=threading.Event)
    committed: threading.Event = field(default_factory=threading.Event)
    commit_error: BaseException | None = None


class GroupCommit:
    def __init__(self, begin: Callable[[], AbstractContextManager[Connection]]) -> None:
        """``begin`` opens a write transaction on a connection (and commits it on exit)."""
        self._begin = begin
        self._mutex = threading.Lock()
        self._waiting: deque[_Writer] = deque()
        self._leading = False

    @contextmanager
    def transaction(self, key: str | None = None) -> Iterator[Connection]:
        """A connection inside a write transaction, committed (durably) before the block's caller goes on.

        No other writer with the same ``key`` shares the transaction.
        """
        writer = _Writer(key=key)
        with self._mutex:
            if self._leading:
                self._waiting.append(writer)
            else:
                self._leading = writer.lead = True
        if not writer.lead:
            writer.wake.wait()
        if writer.lead:
            yield from self._lead(writer.key)
        else:
            yield from self._follow(writer)

    def _follow(self, writer: _Writer) -> Iterator[Connection]:
        assert writer.connection is not None
        savepoint = writer.connection.begin_nested()
        try:
            yield writer.connection
        except BaseException:
            savepoint.rollback()
            writer.done.set()
            raise
        savepoint.commit()
        writer.done.set()
        writer.committed.wait()
        if writer.commit_error is not None:
            raise writer.commit_error

    def _lead(self, key: str | None) -> Iterator[Connection]:
        own_error: BaseException | None = None
        group: list[_Writer] = []
        keys = {key}
        try:
            with self._begin() as connection:
                try:
                    yield connection
                except BaseException as error:
                    # Nobody else has written yet: the whole transaction rolls back.
                    own_error = error
                    raise
                while len(group) < MAX_GROUP:
                    with self._mutex:
                        follower = next((w for w in self._waiting if w.key is None or w.key not in keys), None)
                        if follower is None:
                            break
                        self._waiting.remove(follower)
                    keys.add(follower.key)
                    follower.connection = connection
                    group.append(follower)
                    follower.wake.set()
                    follower.done.wait()
        except BaseException as error:
            if error is not own_error:
                # The commit failed: nobody's change is stored.
                for follower in group:
                    follower.commit_error = error
                own_error = error
        finally:
            for follower in group:
                follower.committed.set()
            self._hand_over()
        if own_error is not None:
            raise own_error

    def _hand_over(self) -> None:
        with self._mutex:
            if self._waiting:
                successor = self._waiting.popleft()
                successor.lead = True
                successor.wake.set()
            else:
                self._leading = False
