"""Buffers for bodies of hundreds of megabytes are mapped apart, and go back to the system once freed."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.server.memory import MAPPED_MIN_BYTES, fresh_buffer, keep_large_allocations

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the process's memory from /proc")

SIZE = 2 * MAPPED_MIN_BYTES
SLACK = MAPPED_MIN_BYTES // 4


def _resident() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _resident_at_most(limit: int, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    while _resident() > limit and time.monotonic() < deadline:
        time.sleep(0.05)
    return _resident()


def test_a_large_buffer_goes_back_to_the_system_once_its_last_view_is_freed() -> None:
    keep_large_allocations(1 << 30)  # as the service does as it starts (every app of the test process, too)
    before = _resident()
    buffer = fresh_buffer(SIZE)
    buffer[:] = 1
    view = np.frombuffer(buffer.data.toreadonly()[1:], np.uint8)
    filled = _resident()

    del buffer
    still_viewed = _resident()
    del view
    after = _resident_at_most(before + SLACK)

    assert filled >= before + SIZE - SLACK
    assert still_viewed >= filled - SLACK
    assert after <= before + SLACK, f"{(after - before) >> 20} MiB kept of {SIZE >> 20}"
