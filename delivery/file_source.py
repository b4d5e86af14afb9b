"""``logystera deliver FILE``: notification records from a JSON Lines file (``-`` = stdin), in order, into the service.

Invalid lines are reported on stderr as ``line N: reason``, counted in the
summary and never delivered; the run ends once every record is done on every
channel (see :mod:`delivery.command`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from typing import TextIO

from delivery.service import DeliveryService
from schemas.alerts import ReceivedRecord, parse_notification
from schemas.lines import MAX_RECORD_LINE_BYTES, overlong

CHUNK_LINES = 500
READ_BYTES = 1 << 16
OVERLONG_LINE = "\0a line over the limit"
"""What :class:`LineReader` hands for a line of :data:`schemas.lines.MAX_RECORD_LINE_BYTES` or more (known by identity)."""
_OVERLONG = overlong(MAX_RECORD_LINE_BYTES)


async def deliver_file(service: DeliveryService, path: str, err: TextIO) -> None:
    """Submit every valid record of ``path`` in order, report the invalid ones, and wait until all are done."""
    reader = LineReader(sys.stdin.fileno() if path == "-" else os.open(path, os.O_RDONLY), close=path != "-")
    number = 0
    while (lines := await reader.batch(CHUNK_LINES)) is not None:
        batch: list[tuple[ReceivedRecord, None]] = []
        for text in lines:
            number += 1
            if not text.strip():
                continue
            parsed = _OVERLONG if text is OVERLONG_LINE else parse_notification(text)
            if isinstance(parsed, str):
                service.stats.invalid += 1
                print(f"line {number}: {parsed}", file=err)
            else:
                batch.append((parsed, None))
        await service.submit(batch)
    await service.drain()


class LineReader:
    """The lines of a file descriptor, read by a daemon thread and handed to the event loop in order.

    A daemon thread, not ``asyncio.to_thread``: the loop's executor is joined
    when the run ends, and a read blocked on an idle stdin pipe would keep a
    stopped ``deliver`` from exiting. It reads with ``os.read``, not a Python
    file object, so it holds no lock the interpreter needs at exit. Bytes that
    are not UTF-8 become U+FFFD: such a line is reported invalid, the run goes
    on. A line of :data:`schemas.lines.MAX_RECORD_LINE_BYTES` or more is handed as
    :data:`OVERLONG_LINE`, its bytes dropped as they are read. At most ``ahead``
    chunks wait in memory.
    """

    def __init__(self, descriptor: int, close: bool, ahead: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[str] | None] = asyncio.Queue()
        self._room = threading.Semaphore(ahead)
        self._ended = False
        threading.Thread(target=self._read, args=(descriptor, close), name="read alerts", daemon=True).start()

    def _read(self, descriptor: int, close: bool) -> None:
        pending = b""  # the start of the next line, shorter than the limit
        overlong = False  # the line being read reached the limit: the rest of it is dropped as it comes
        try:
            while chunk := os.read(descriptor, READ_BYTES):
                *ends, rest = chunk.split(b"\n")
                lines: list[str] = []
                for end in ends:
                    line = b"" if overlong else pending + end
                    lines.append(OVERLONG_LINE if overlong or len(line) >= MAX_RECORD_LINE_BYTES else line.decode("utf-8", "replace"))
                    pending, overlong = b"", False
                if not overlong:
                    pending += rest
                    if len(pending) >= MAX_RECORD_LINE_BYTES:
                        pending, overlong = b"", True
                if lines:
                    self._room.acquire()
                    self._hand(lines)
            if overlong or pending:
                self._hand([OVERLONG_LINE if overlong else pending.decode("utf-8", "replace")])
        finally:
            if close:
                os.close(descriptor)
            self._hand(None)

    def _hand(self, lines: list[str] | None) -> None:
        with contextlib.suppress(RuntimeError):  # the run is over and its loop closed: nobody waits
            self._loop.call_soon_threadsafe(self._queue.put_nowait, lines)

    async def batch(self, count: int) -> list[str] | None:
        """The lines read so far (waiting for some), about ``count`` at most; None at the end."""
        lines: list[str] = []
        while not self._ended and len(lines) < count and (not lines or not self._queue.empty()):
            chunk = await self._queue.get()
            if chunk is None:
                self._ended = True
            else:
                self._room.release()
                lines.extend(chunk)
        return lines or None
