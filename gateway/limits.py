"""How much of the gateway one client can hold, and for how long: read and send deadlines, a connection cap, a pre-auth byte budget.

A client that opens a connection and then sends slowly, never finishes, or
never reads its answer must neither keep a connection forever nor make the
gateway buffer without bound before it is known to hold a site's secret.
Three limits, each where it can act:

- **Per connection, in uvicorn's HTTP protocol** (:func:`guarded_protocol`):
  the request head (request line and headers) must be complete within
  ``header_timeout_s`` of the connection opening or of the previous answer on
  it, else the connection is closed (with a ``408`` if part of a head
  arrived); a connection beyond ``max_connections`` open ones is answered
  ``503`` and closed as soon as it is accepted; and an answer the client
  does not read — the transport's buffer stays over its high-water mark
  (64 KiB) for ``send_timeout_s`` — is abandoned and the connection reset, so
  that a site holding its answers (a batch of 1,000 rejected signals is
  answered with ~100–300 KiB) cannot keep connections and their buffers
  forever. uvicorn has none of these: its keep-alive timer only runs between
  requests and stops at the first byte, its ``limit_concurrency`` answers only
  once a complete head has arrived, and it waits for a paused transport
  without end.
- **Per request, in the handler** (``gateway.app``): the body must be complete
  within ``body_timeout_s`` of its head (``408``); the body's first bytes name
  the site, so an unregistered site is refused before the rest is read.
- **All requests together** (:class:`PendingBodies`): the bytes of bodies read
  but not yet authenticated never exceed a budget. When a chunk takes the
  total over it, the bodies that have been pending longest are dropped (their
  requests answered ``503`` with ``Retry-After``) until it fits. A body that
  arrives at any sane rate is authenticated long before it is the oldest, so
  what is dropped is what stalls; refusing the newcomer instead would let a
  few stalled uploads shut every site out until their deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits uvicorn's protocol enforces per connection (the CLI's ``--header-timeout``, ``--max-connections``)."""

    header_timeout_s: float
    max_connections: int
    retry_after_s: int
    send_timeout_s: float


def raw_refusal(status: int, reason: str, message: str, retry_after_s: int | None = None) -> bytes:
    """A complete ``connection: close`` HTTP/1.1 answer with the gateway's JSON error body, for where no request cycle exists."""
    body = json.dumps({"error": reason, "message": message}).encode()
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(limits: ConnectionLimits, refused: Callable[[str], None], opened: Callable[[int], None],
                     abandoned: Callable[[], None]) -> type[H11Protocol]:
    """The h11 protocol of uvicorn with head and send deadlines and a connection cap; ``refused(reason)`` counts each refusal.

    ``opened(n)`` is told the number of open connections whenever it changes,
    ``abandoned()`` each answer given up at its send deadline.
    Used as ``uvicorn.Config(http=...)``, so the gateway always speaks h11,
    whether or not httptools is installed.
    """

    class GuardedH11Protocol(H11Protocol):
        """One connection: closed when a request head is not complete or an answer not read in time, refused beyond the cap."""

        def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                     _loop: asyncio.AbstractEventLoop | None = None) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._head_deadline: asyncio.TimerHandle | None = None
            self._awaited_after: Any = None
            """The request cycle the awaited head follows (``None`` on a fresh connection): a new head replaces ``self.cycle``."""
            self._head_started = False
            self._send_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            opened(len(self.connections))
            if len(self.connections) > limits.max_connections:
                self._refuse(503, "too_many_connections",
                             f"more than {limits.max_connections} connections are open at this gateway; retry later", limits.retry_after_s)
                return
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_deadline()
            self._cancel_send_deadline()
            super().connection_lost(exc)
            opened(len(self.connections))

        def data_received(self, data: bytes) -> None:
            self._head_started = True
            super().data_received(data)

        def on_response_complete(self) -> None:
            answered = self.cycle
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle is answered:
                self._await_head()  # no pipelined head was waiting: the next one has the full deadline from now

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_deadline is None:
                self._send_deadline = self.loop.call_later(limits.send_timeout_s, self._send_overdue)

        def resume_writing(self) -> None:
            self._cancel_send_deadline()
            super().resume_writing()

        def _cancel_send_deadline(self) -> None:
            if self._send_deadline is not None:
                self._send_deadline.cancel()
                self._send_deadline = None

        def _send_overdue(self) -> None:
            # The client read nothing for the whole deadline: drop the buffered answer (a close would wait to send it).
            # connection_lost then marks the request cycle disconnected and lets the handler's pending send return.
            self._send_deadline = None
            abandoned()
            self.transport.abort()

        def _await_head(self) -> None:
            self._cancel_head_deadline()
            self._awaited_after, self._head_started = self.cycle, False
            self._head_deadline = self.loop.call_later(limits.header_timeout_s, self._head_overdue)

        def _cancel_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_overdue(self) -> None:
            self._head_deadline = None
            if self.cycle is not self._awaited_after or self.transport.is_closing():
                return  # the head arrived (a new request cycle began) or the connection is closing anyway
            if self._head_started:
                self._refuse(408, "header_timeout", f"request head not complete within {limits.header_timeout_s:g} s")
                return
            # Nothing came, so nobody waits for an answer. Silence after an answer is a kept-alive connection expiring,
            # as uvicorn's keep-alive timer would close it; silence from the start is counted.
            if self._awaited_after is None:
                refused("header_timeout")
            self.transport.close()

        def _refuse(self, status: int, reason: str, message: str, retry_after_s: int | None = None) -> None:
            # No response is under way here (a fresh connection, or one whose last answer is complete): write one and close.
            refused(reason)
            self.transport.write(raw_refusal(status, reason, message, retry_after_s))
            self.transport.close()

    return GuardedH11Protocol


class PendingBody:
    """One request body being read before its signature is checked: its size so far, and how to stop its read early."""

    __slots__ = ("dropped", "size", "timer")

    def __init__(self) -> None:
        self.size = 0
        self.dropped = False
        self.timer: asyncio.Timeout | None = None


class PendingBodies:
    """Bytes of request bodies read but not authenticated yet, all requests together, kept within ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._bodies: dict[PendingBody, None] = {}  # oldest first (dicts keep insertion order)

    @contextlib.contextmanager
    def hold(self) -> Iterator[PendingBody]:
        """Count one body's bytes (:meth:`grow`) until the block ends; ``body.dropped`` if the budget dropped it meanwhile."""
        body = PendingBody()
        self._bodies[body] = None
        try:
            yield body
        finally:
            if self._bodies.pop(body, False) is None:
                self.total -= body.size

    def grow(self, body: PendingBody, size: int) -> None:
        """Add ``size`` bytes to ``body``, then drop the longest-pending other bodies while the total is over the limit."""
        body.size += size
        self.total += size
        while self.total > self.limit:
            oldest = next(iter(self._bodies))
            if oldest is body:
                break  # only when one body alone is over the limit; the configuration keeps the limit above the body limit
            del self._bodies[oldest]
            self.total -= oldest.size
            oldest.dropped = True
            if oldest.timer is not None and not oldest.timer.expired():  # (an expired one is ending its read already)
                oldest.timer.reschedule(asyncio.get_running_loop().time())  # its read ends now, as at its deadline
