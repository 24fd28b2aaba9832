"""Slot files start their writes to disk as they are copied (service/store/writeback.py), and
still hold exactly what was written."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from service.buffers import Buffers
from service.store.sqlite import array_files, writeback
from service.store.sqlite.array_files import WRITEBACK_CHUNK, ArrayFiles


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
    pieces: Buffers = [
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


def test_writeback_is_asked_for_every_byte_of_a_slot_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the kernel does with the hint is not observable: the calls are recorded on their way to it.
    ranges: list[tuple[int, int]] = []

    def recorded(descriptor: int, offset: int, length: int) -> None:
        ranges.append((offset, length))
        writeback.start_writeback(descriptor, offset, length)

    monkeypatch.setattr(array_files, "start_writeback", recorded)
    pieces: Buffers = [b"header", os.urandom(WRITEBACK_CHUNK + 5), os.urandom(WRITEBACK_CHUNK // 2)]

    ArrayFiles(tmp_path / "arrays").write("session", 1, pieces)

    assert len(ranges) >= 3
    assert all(length <= WRITEBACK_CHUNK for _, length in ranges)
    ends = [0] + [offset + length for offset, length in ranges]
    assert [offset for offset, _ in ranges] == ends[:-1]
    assert ends[-1] == sum(map(len, pieces))
