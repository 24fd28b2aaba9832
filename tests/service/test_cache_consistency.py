"""The in-memory optimizer cache never stands in for storage it does not match.

A step learns the cached version before it takes the session's lock, and reads no arrays
under the lock when that version is still the stored one. A request that fails in between
drops the cached optimizer it took out, so the step must then read the arrays after all.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url

from tests.service.conftest import (
    assert_same_param_bits,
    core_optimizer,
    create_session,
    ok,
    send,
    service_client,
    step,
)

DTYPE = "float32"


def test_a_step_whose_cached_optimizer_a_failed_request_dropped_meanwhile_reads_the_stored_arrays(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'optim.sqlite3'}"
    rng = np.random.default_rng(7)
    body = {"optimizer": "rmsprop", "params": {"w": rng.standard_normal(6).astype(np.float32)}, "dtype": DTYPE}
    expected = core_optimizer(body)
    grads = [{"w": rng.standard_normal(6).astype(np.float32)} for _ in range(2)]
    with service_client(database_url) as client:
        session = create_session(client, body)
        ok(step(client, session.id, grads[0]))  # the cache now holds the optimizer at the stored version
        expected.step(grads[0])

        # Another connection holds SQLite's write lock, so both requests below wait for it
        # after they have looked at the cache, in the order they arrive.
        blocker = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        answers: dict[str, Any] = {}

        def failing() -> None:
            answers["failing"] = send(client, "POST", f"{session.url}/step", {"grads": {"w": [1.0, 2.0]}})

        def valid() -> None:
            answers["valid"] = step(client, session.id, grads[1])

        threads = [threading.Thread(target=failing), threading.Thread(target=valid)]
        threads[0].start()
        time.sleep(0.5)  # the failing step first: it takes the cached optimizer out, and drops it
        threads[1].start()
        time.sleep(0.5)
        blocker.execute("COMMIT")
        blocker.close()
        for thread in threads:
            thread.join(timeout=60)

        assert answers["failing"].status_code == 422
        document = ok(answers["valid"])
        expected.step(grads[1])
        assert document["step"] == 2
        assert_same_param_bits(document["params"], expected.params, DTYPE)
