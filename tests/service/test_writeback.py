"""Slot files start their writes to disk as they are copied (service/store/writeback.py), and
still hold exactly what was written."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from service.store import writeback
from service.store.array_files import WRITEBACK_CHUNK, ArrayFiles


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_writeback_is_started_through_sync_file_range_on_linux() -> None:
    assert writeback._bind() is not None


def test_starting_writeback_is_a_hint_that_never_fails(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    descriptor = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, data)
        writeback.start_writeback(descriptor, 0, len(data))
        writeback.start_writeback(descriptor, 1 << 40, 1 << 20)  # past the end
    finally:
        os.close(descriptor)
    writeback.start_writeback(descriptor, 0, len(data))  # closed

    assert (tmp_path / "file").read_bytes() == data


def test_a_slot_written_in_many_chunks_holds_every_byte_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pieces = [
        b"header",
        rng.standard_normal(WRITEBACK_CHUNK // 4 + 3, dtype=np.float32).data.cast("B"),
        rng.standard_normal(2 * WRITEBACK_CHUNK // 8 + 1).data.cast("B"),
        b"",
        b"tail",
    ]
    files = ArrayFiles(tmp_path / "arrays")
    files.write("session", 0, [os.urandom(3 * WRITEBACK_CHUNK)])

    files.write("session", 0, pieces)  # shorter than what the slot held

    assert files.read("session", 0) == b"".join(bytes(piece) for piece in pieces)
