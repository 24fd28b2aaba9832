"""A consistent copy of a SQLite deployment, taken while it runs: the database and its slot files.

A SQLite deployment's state is the database (with its WAL) and, for sessions with large
arrays, the slot files in ``<database file>-arrays/`` that the rows point at
(``array_files.py``). Copying the database alone loses those sessions' arrays; copying
the files without coordination can pair a row with a slot a step has since overwritten.

Slot files are written only inside the database's write lock, so the backup takes that
lock (``BEGIN IMMEDIATE``) and holds it while it copies: the database, with SQLite's
online backup API, and then exactly the slot file each copied row points at. Nothing can
commit or write a slot file meanwhile, so the copy is the deployment as of one commit.
Writers wait for the lock (up to SQLite's busy timeout); readers go on.

The backup reads the database through a second connection: ``sqlite3_backup_step`` from
a connection in a write transaction answers SQLITE_BUSY, which Python's
``Connection.backup`` retries forever. A second connection reads the last commit, which
is the one the lock holds in place.
"""

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from service.store.sqlite.array_files import sync_path

BUSY_TIMEOUT_SECONDS = 60.0
"""How long the backup waits for the write lock, as the service's own connections do."""
COPY_CHUNK_BYTES = 1 << 20


class BackupError(RuntimeError):
    """The backup cannot be made; the message says why and what to do instead."""


@dataclass(frozen=True)
class BackupSummary:
    database: Path
    sessions: int
    array_files: int
    array_bytes: int


def sqlite_database_path(database_url: str) -> Path:
    """The file of a SQLite URL; BackupError for any other database, or one not in a file."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        raise BackupError(
            "the database is PostgreSQL, which holds all of the service's state: back it up with pg_dump "
            "(for example `pg_dump --format=custom --file=optim.dump DBNAME`)"
        )
    if backend != "sqlite":
        raise BackupError(f"backup copies a SQLite database; {backend} is not one")
    if not url.database or url.database == ":memory:":
        raise BackupError("the SQLite database is in memory: there is no file to back up")
    return Path(url.database)


def array_directory(database: Path) -> Path:
    """Where the service keeps a SQLite database's slot files (``SqlSessionStore._array_files``)."""
    return database.with_name(f"{database.name}-arrays")


def backup_sqlite(*, database_url: str, destination: Path) -> BackupSummary:
    """Copy the SQLite deployment at ``database_url`` into the directory ``destination``
    (created if missing): ``destination/<database file>`` and ``destination/<database file>-arrays/``.

    Refuses, with BackupError, a destination that already holds a database of that name, a
    database that does not exist, and any database that is not SQLite in a file.
    """
    source = sqlite_database_path(database_url)
    target = destination / source.name
    target_arrays = array_directory(target)
    if not source.is_file():
        raise BackupError(f"there is no SQLite database at {source}")
    if destination.exists() and not destination.is_dir():
        raise BackupError(f"{destination} is not a directory")
    if target.exists() or target_arrays.exists():
        raise BackupError(
            f"{destination} already holds a database ({target.name} or {target_arrays.name}): "
            "back up into a new or empty directory"
        )
    with _connect(source) as lock, _connect(source) as reader:
        try:
            lock.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise BackupError(f"cannot take {source}'s write lock: {error}") from error
        try:
            destination.mkdir(parents=True, exist_ok=True)
            return _copy(reader, source=source, target=target)
        finally:
            lock.execute("ROLLBACK")


@contextmanager
def _connect(database: Path) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode to an existing database (mode=rw: never creates one)."""
    uri = f"{database.resolve().as_uri()}?mode=rw"
    with closing(sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)) as connection:
        yield connection


def _copy(reader: sqlite3.Connection, *, source: Path, target: Path) -> BackupSummary:
    """Inside the write lock: the database into a partial file, the slot files its rows point
    at, then the partial file renamed into place, so that only a finished backup is a database."""
    partial = target.with_name(f".{target.name}.partial")
    target_arrays = array_directory(target)
    for leftover in (partial, partial.with_name(f"{partial.name}-journal")):  # of a backup that was killed
        leftover.unlink(missing_ok=True)
    try:
        with closing(sqlite3.connect(partial, isolation_level=None)) as copy:
            reader.backup(copy)
        sync_path(partial)
        columns = {row[1] for row in reader.execute("PRAGMA table_info(sessions)")}
        sessions = reader.execute("SELECT count(*) FROM sessions").fetchone()[0] if columns else 0
        slots: list[tuple[str, int]] = []
        if "arrays_slot" in columns:
            slots = reader.execute("SELECT id, arrays_slot FROM sessions WHERE arrays_slot IS NOT NULL").fetchall()
        target_arrays.mkdir()
        array_bytes = sum(
            _copy_file(array_directory(source) / f"{session_id}.{slot}", target_arrays) for session_id, slot in slots
        )
        sync_path(target_arrays)
        partial.rename(target)
        sync_path(target.parent)
        sync_path(target.parent.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        shutil.rmtree(target_arrays, ignore_errors=True)
        raise
    return BackupSummary(database=target, sessions=sessions, array_files=len(slots), array_bytes=array_bytes)


def _copy_file(source: Path, directory: Path) -> int:
    """Copy ``source`` into ``directory`` and make the copy durable; the bytes copied."""
    try:
        reading = source.open("rb")
    except FileNotFoundError:
        raise BackupError(f"{source} is missing, but the database's row points at it") from None
    with reading:
        descriptor = os.open(directory / source.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(descriptor, "wb") as writing:
            shutil.copyfileobj(reading, writing, COPY_CHUNK_BYTES)
            writing.flush()
            os.fsync(writing.fileno())
            return writing.tell()
