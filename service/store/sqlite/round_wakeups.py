"""SQLite: the server processes on one database tell each other of the rounds they close.

Each process binds a Unix datagram socket in Linux's abstract namespace (no file, gone when the process
is), named by the database's path, its pid and a random token (two apps of one process, in tests, each
have their own), and leaves a marker file of that name in a directory beside the database, so that its
peers can find it. A process that closes a round sends
``<session id> <step>`` to every peer; a peer whose socket is gone (it died) has its marker removed. A
lost datagram costs only latency: waiters also read their round every ``OPTIM_ROUND_POLL_SECONDS``.
Where there are no abstract sockets (not Linux), there are no wakeups, and polling is all.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
MAX_DATAGRAM = 512
MARKER = re.compile(r"[0-9]+-[0-9a-f]{8}")
"""A peer's marker file: its pid and token."""


class RoundWakeups:
    def __init__(self, directory: Path, on_closed: Callable[[str, int], None]) -> None:
        self._directory = directory
        self._on_closed = on_closed
        self._prefix = "optim-rounds-" + hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:24]
        self._name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._receiver.bind(self._address(self._name))
            self._receiver.setblocking(False)
            self._sender.setblocking(False)
            directory.mkdir(exist_ok=True)
            (directory / self._name).touch()
        except BaseException:
            self._receiver.close()
            self._sender.close()
            raise
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def available() -> bool:
        """Whether this system has abstract Unix sockets (Linux)."""
        return sys.platform.startswith("linux")

    def _address(self, name: str) -> str:
        return f"\0{self._prefix}-{name}"

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Receive on ``loop``."""
        self._loop = loop
        loop.add_reader(self._receiver.fileno(), self._receive)

    def _receive(self) -> None:
        while True:
            try:
                payload = self._receiver.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            session_id, _, step = payload.decode(errors="replace").partition(" ")
            if step.isdigit():
                self._on_closed(session_id, int(step))

    def announce(self, session_id: str, step: int) -> None:
        """Tell every other process on the database that the round closed; from any thread."""
        payload = f"{session_id} {step}".encode()
        for marker in self._directory.iterdir():
            if not MARKER.fullmatch(marker.name) or marker.name == self._name:
                continue
            try:
                self._sender.sendto(payload, self._address(marker.name))
            except (ConnectionRefusedError, FileNotFoundError):
                marker.unlink(missing_ok=True)  # its process is gone
            except OSError as error:  # a full queue, say: that waiter polls
                log.debug("a round's wakeup to process %s was not sent: %s", marker.name, error)

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self._receiver.fileno())
        self._receiver.close()
        self._sender.close()
        (self._directory / self._name).unlink(missing_ok=True)
