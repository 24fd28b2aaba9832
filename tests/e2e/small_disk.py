"""A small disk for tests of what a server does when its disk fills up: a tmpfs of a few megabytes.

Mounting needs root, which CI has. Elsewhere the fixture skips, naming the reason.
"""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NO_MOUNT = "mounting a tmpfs needs root (CI runs as root); this machine's test run does not have it"


@contextlib.contextmanager
def small_disk(directory: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted on ``directory`` (created); unmounted on exit."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip(NO_MOUNT)
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"{NO_MOUNT}: mount said {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=False)


def fill(path: Path, size_bytes: int) -> None:
    """Write ``size_bytes`` to ``path`` (a ballast to delete later), or as much as fits."""
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as ballast:
        left = size_bytes
        while left > 0:
            try:
                ballast.write(chunk[: min(left, len(chunk))])
                ballast.flush()
            except OSError:
                break
            left -= min(left, len(chunk))
