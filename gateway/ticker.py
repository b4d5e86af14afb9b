"""Ticks: every ``interval`` one tick per registered site, written by exactly one gateway process.

**Single leader.** The ticker that holds an exclusive ``flock`` on a shared
lock file (:class:`Lease`) writes ticks; every other gateway process polls
the lock and takes over the moment the holder exits or dies (the kernel
releases the lock with the process). The lock lives on one host's file
system, so this holds for gateway processes on one host; docs/gateway.md
says what to do with several hosts.

**Deterministic content.** A tick's ``ts`` is the gateway clock rounded down
to a multiple of the interval (its *slot*), and its id comes from
:func:`schemas.factory.make_tick`; a tick is therefore never stamped in the
future, and the same slot gives byte-identical records.

**Never backwards.** The lock file also holds the last slot a leader
started to write, recorded *before* the first tick of that slot is produced
(write-ahead). A new leader, or the same one after its clock stepped back,
writes only slots after it; if it dies mid-round, some sites miss that slot
(a gap), and none ever gets an older or repeated one.

**Backpressure.** A round is written only once the previous round has all
its delivery reports; while the broker is away the due rounds are skipped
(counted), not queued, so no burst of stale ticks follows its return.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.kafka import DeliveryHandle, KafkaWriter
from gateway.metrics import GatewayMetrics
from protocol.lease import EXCLUSIVE, FileLease
from schemas.factory import make_tick, signal_line

log = logging.getLogger("logystera.gateway")
STANDBY_POLL_S = 1.0
"""How often a process without the lease tries to take it (takeover happens within this after the holder dies)."""


class Lease(FileLease):
    """An exclusive ``flock`` on ``path`` that also stores the last tick slot started (epoch ms, as decimal text).

    The dispatcher's sender lock (one sender per buffer file) is the same
    mechanism (:mod:`protocol.lease`); only the file holds a slot here.
    """

    def __init__(self, path: Path) -> None:
        if not EXCLUSIVE:  # pragma: no cover - not POSIX: there would be no mutual exclusion at all
            raise ValueError("ticker lock: needs flock (POSIX)")
        super().__init__(path)

    def last_slot(self) -> int | None:
        """The last slot recorded by any leader, ``None`` if none was (or the file holds something else)."""
        assert self._fd is not None, "read only while holding the lease"
        text = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None

    def record(self, slot: int) -> None:
        """Write ``slot`` down, durably, before any of its ticks is produced."""
        assert self._fd is not None, "write only while holding the lease"
        data = f"{slot}\n".encode("ascii")
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)


class Ticker:
    """Writes one tick per site per slot while it holds the lease; :meth:`step` is one decision, :meth:`start` runs them in a thread."""

    def __init__(
        self,
        sites: Sequence[str],
        interval_ms: int,
        writer: KafkaWriter,
        lease: Lease,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
    ) -> None:
        if interval_ms < 1000 or interval_ms % 1000:
            # make_tick's id names the second: two slots in one second would share ids.
            raise ValueError("tick interval: must be a whole number of seconds, at least 1s")
        self.sites = list(sites)
        self.interval_ms = interval_ms
        self._writer = writer
        self._lease = lease
        self._metrics = metrics
        self._clock = clock
        self._last: int | None = None
        self._round: DeliveryHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leader(self) -> bool:
        """Whether this ticker holds the lease."""
        return self._lease.held

    def step(self) -> DeliveryHandle | None:
        """Take the lease if free; if leading and a new slot is due, write its ticks and return their delivery handle."""
        if not self._lease.held:
            if not self._lease.acquire():
                return None
            self._last = self._lease.last_slot()
            self._metrics.ticker_leader.set(1)
            log.info("this gateway now writes the ticks (lease %s, last slot %s)", self._lease.path, self._last)
        now_ms = int(self._clock() * 1000)
        slot = now_ms - now_ms % self.interval_ms
        if self._last is not None and slot <= self._last:
            return None  # not due yet, or the clock is behind what was already written
        if self._round is not None and not self._round.done:
            self._metrics.tick_rounds_skipped.inc()
            return None
        self._lease.record(slot)
        self._last = slot
        records = [(site, signal_line(make_tick(site, slot)).encode("utf-8")) for site in self.sites]
        handle = DeliveryHandle([f"{site}@{slot}" for site in self.sites])
        handle.future.add_done_callback(lambda done: self._metrics.ticks_written.inc(len(done.result().written_ids)))
        self._writer.enqueue(handle, records)
        self._round = handle
        return handle

    def pause(self) -> float:
        """Seconds until the next step is worth taking: the next slot when leading, the standby poll otherwise."""
        if not self._lease.held:
            return min(STANDBY_POLL_S, self.interval_ms / 1000)
        now_ms = int(self._clock() * 1000)
        return (self.interval_ms - now_ms % self.interval_ms + 1) / 1000

    def start(self) -> None:
        """Run :meth:`step` in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="gateway-ticker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except OSError as error:  # the lock file went away or is not writable: keep trying, say why
                log.error("ticker: %s: %s", self._lease.path, error.strerror or error)
                self._stop.wait(STANDBY_POLL_S)
            self._stop.wait(self.pause())

    def stop(self) -> None:
        """Stop the loop and give the lease up, so another process takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            self._lease.release()
        self._metrics.ticker_leader.set(0)
