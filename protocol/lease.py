"""An exclusive file lease: one holder among the processes of a host, released by the kernel when the holder dies.

Two users, one mechanism: the dispatcher's sender lock (one sender per buffer
file, among a site's web workers) and the gateway's ticker lease (one ticker
among a host's gateways). The holder keeps an open descriptor with an
exclusive ``flock``; closing it, or the process ending in any way, frees it.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None  # type: ignore[assignment]

EXCLUSIVE = fcntl is not None
"""Whether leases exclude each other here (POSIX ``flock``); without it every :meth:`FileLease.acquire` succeeds."""


class FileLease:
    """An exclusive ``flock`` on ``path``, taken without waiting; the file (and its folder) is created if missing.

    Subclasses may read and write the file through ``_fd`` while :attr:`held`
    (the ticker keeps its last slot there).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this instance holds the lease."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lease without waiting; ``True`` if held afterwards."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lease up (closing the descriptor releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
