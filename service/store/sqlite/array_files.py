"""Large array blobs in files beside a SQLite database, written in place into one of two slots.

A blob inside SQLite is written twice (into the WAL, then into the database file)
and updating it frees and rebuilds a chain of overflow pages. A file beside the
database, overwritten in place and ``fdatasync``ed, is written once, and a
rewrite of blocks the file already has needs no allocation: on the disks this
service was measured on, rewriting 8 MB in place and syncing took 4 ms, against
25 ms for a new file and about 17 ms inside SQLite.

Each session has two slot files, ``<id>.0`` and ``<id>.1``. The session's row
names the slot that holds its committed arrays; a change writes the other slot,
syncs it, and only then commits the row that points at it. A crash before that
commit leaves the row on the old slot, which nothing touched, so no
acknowledged state is ever overwritten. The store keeps two rules that make
this hold: slot files are written only inside the database's write lock, and a
transaction writes a session's arrays at most once (see ``GroupCommit``'s keys).

Readers outside the write lock read the slot, then check that the session's
version has not moved: a writer can only overwrite that slot after the next
version has committed, so an unchanged version means the bytes read were whole.
"""

import os
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from service.buffers import Buffers
from service.store.sqlite.writeback import finish_writeback, start_writeback

SLOTS = (0, 1)
WRITEBACK_CHUNK = 4 << 20
"""Bytes copied before the kernel is asked to start writing them (writeback.py); 4 MiB did best for 80 MB."""
WRITEBACK_IN_FLIGHT = 2
"""Chunks whose writeback may be under way at once; the writer waits for older ones (writeback.py)."""
sync_data = getattr(os, "fdatasync", os.fsync)
"""fdatasync where the platform has it (not macOS); fsync elsewhere, as SQLite does."""
_SLOT_FILE = re.compile(r"(?P<session>[A-Za-z0-9_-]{1,64})\.(?P<slot>[01])")


def other_slot(slot: int | None) -> int:
    """The slot to write next, given the one the committed row points at (None: held inline)."""
    return 0 if slot is None else 1 - slot


def sync_path(path: Path) -> None:
    """fsync a file, or a directory (which makes the entries created in it durable)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_all(descriptor: int, buffers: Buffers) -> int:
    """Write ``buffers`` from the file's start, starting each ``WRITEBACK_CHUNK`` on its way to disk as it is
    copied, with at most ``WRITEBACK_IN_FLIGHT`` chunks under way."""
    written = 0
    started: deque[tuple[int, int]] = deque()
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        while view:
            count = os.write(descriptor, view[:WRITEBACK_CHUNK])
            start_writeback(descriptor, written, count)
            started.append((written, count))
            if len(started) > WRITEBACK_IN_FLIGHT:
                finish_writeback(descriptor, *started.popleft())
            view = view[count:]
            written += count
    return written


class ArrayFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # Whoever made the directory may have died before syncing its entry: sync it again.
        sync_path(directory.parent)
        self._entries_synced: set[Path] = set()
        """Slot files whose directory entries this process has made durable."""

    def _path(self, session_id: str, slot: int) -> Path:
        return self.directory / f"{session_id}.{slot}"

    def write(self, session_id: str, slot: int, buffers: Buffers) -> None:
        """Replace the slot's contents with ``buffers`` and make them durable before returning."""
        path = self._path(session_id, slot)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            previous_size = os.fstat(descriptor).st_size
            size = _write_all(descriptor, buffers)
            if previous_size > size:
                os.ftruncate(descriptor, size)
            sync_data(descriptor)
        finally:
            os.close(descriptor)
        if path not in self._entries_synced:
            # The file may have been created by this write, or by one that failed or crashed
            # before syncing its entry; the first write of each slot in a process syncs it.
            sync_path(self.directory)
            self._entries_synced.add(path)

    def read(self, session_id: str, slot: int) -> bytes:
        """The slot's contents; FileNotFoundError if it has none."""
        return self._path(session_id, slot).read_bytes()

    def remove(self, session_id: str) -> None:
        for slot in SLOTS:
            path = self._path(session_id, slot)
            path.unlink(missing_ok=True)
            self._entries_synced.discard(path)

    def sessions(self) -> set[str]:
        """The ids of the sessions that have slot files."""
        found = set()
        for entry in os.scandir(self.directory):
            match = _SLOT_FILE.fullmatch(entry.name)
            if match:
                found.add(match["session"])
        return found

    def remove_all_but(self, kept: Iterable[str]) -> None:
        """Remove the slot files of every session not in ``kept``."""
        for session_id in self.sessions() - set(kept):
            self.remove(session_id)
