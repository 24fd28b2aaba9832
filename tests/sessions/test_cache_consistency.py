"""The in-memory optimizer cache never stands in for storage it does not match.

A step learns the cached version before it holds the session; a request that fails in
between drops the cached optimizer it took out, so the step must then read the stored
arrays after all. The store is the real one over SQLite; it is wrapped only to hold the
step at the gap until the failing request is done, so that the order is the test's.
"""

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optim_core import RMSprop
from service.sessions.cache import OptimizerCache
from service.sessions.errors import InvalidRequest
from service.sessions.service import Sessions, StepOutcome
from service.store import LockedSession, SqlSessionStore
from service.tenancy.callers import anonymous

DTYPE = np.float32

CALLER = anonymous()


class HeldAtTheGap:
    """The real store, whose ``locked`` waits, for the calls made while ``hold`` is set, until ``release``."""

    def __init__(self, store: SqlSessionStore) -> None:
        self.store = store
        self.hold = threading.Event()
        self.waiting = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def locked(self, session_id: str, **kwargs: Any) -> AbstractContextManager[LockedSession]:
        if self.hold.is_set():
            self.hold.clear()
            self.waiting.set()
            assert self.release.wait(30)
        return self.store.locked(session_id, **kwargs)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[tuple[Sessions, HeldAtTheGap]]:
    store = SqlSessionStore(f"sqlite:///{tmp_path / 'optim.sqlite3'}")
    held = HeldAtTheGap(store)
    yield Sessions(store=held, cache=OptimizerCache(1 << 20)), held
    store.close()


@contextmanager
def stepping(sessions: Sessions, session_id: str, grads: dict[str, np.ndarray]) -> Iterator[StepOutcome]:
    with sessions.step(
        caller=CALLER, session_id=session_id, grads=grads, request_hash="", idempotency_key=None, expected_versions=None
    ) as outcome:
        yield outcome


def test_a_step_whose_cached_optimizer_a_failed_request_dropped_meanwhile_reads_the_stored_arrays(
    sessions: tuple[Sessions, HeldAtTheGap],
) -> None:
    service, store = sessions
    rng = np.random.default_rng(7)
    initial = rng.standard_normal(6).astype(DTYPE)
    meta, _ = service.create(
        caller=CALLER, optimizer="rmsprop", params={"w": initial}, hyperparameters={}, param_groups=None,
        dtype="float32", state_dict=None, step=0,
    )  # fmt: skip
    expected = RMSprop({"w": initial})
    grads = [{"w": rng.standard_normal(6).astype(DTYPE)} for _ in range(2)]
    with stepping(service, meta.id, grads[0]):
        expected.step(grads[0])  # the cache now holds the optimizer at the stored version
    answers: list[np.ndarray] = []

    def valid_step() -> None:
        with stepping(service, meta.id, grads[1]) as outcome:
            answers.append(np.array(outcome.params["w"]))

    store.hold.set()
    waiting = threading.Thread(target=valid_step)
    waiting.start()
    assert store.waiting.wait(30), "the step never reached the store"
    # Meanwhile a step that overflows takes the cached optimizer out, changes it, fails, and drops it.
    with pytest.raises(InvalidRequest, match="overflow"), stepping(service, meta.id, {"w": np.full(6, 3e38, DTYPE)}):
        pass
    store.release.set()
    waiting.join(30)

    expected.step(grads[1])
    assert len(answers) == 1
    assert answers[0].tobytes() == expected.params["w"].tobytes()
