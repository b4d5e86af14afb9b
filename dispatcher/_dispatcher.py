"""The dispatcher: ``emit`` writes to the local buffer; one background thread sends signed batches.

Delivery guarantee: at-least-once on the wire, exactly-once as seen by a
receiver that dedupes by ``batch_id`` (the gateway does), in emit order, as
long as the buffer does not overflow. Under backpressure (gateway down, slow,
refusing) the application is never blocked: ``emit`` only validates and
appends to SQLite, and when the buffer is full the *oldest* signals are
dropped, counted, and reported to the gateway as soon as it takes traffic
again. See docs/protocol.md for the wire protocol and every response's handling.
"""

from __future__ import annotations

import logging
import random as _random
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from dispatcher._buffer import Batch, SignalBuffer, sender_lease
from dispatcher._signals import InvalidSignal, Signals, encode_signal, new_id
from protocol.resilience import Backoff, BreakerState, CircuitBreaker
from protocol.wire import (
    ENDPOINT,
    MAX_BATCH_BYTES,
    MAX_BATCH_SIGNALS,
    Kind,
    Outcome,
    batch_overhead,
    classify,
    encode_batch,
    headers,
    secret_bytes,
    sign,
)
from schemas.factory import make_signal
from schemas.signals import SIGNAL_TYPES, SITE_PATTERN
from schemas.timestamps import format_ts

VERSION = "0.1.0"
USER_AGENT = f"logystera-dispatcher/{VERSION} (python)"
log = logging.getLogger("logystera.dispatcher")
_SITE_RE = re.compile(SITE_PATTERN)


@dataclass(frozen=True)
class DispatcherStats:
    """A snapshot of what the dispatcher did in this process (``buffered`` and ``dropped_pending`` are the shared buffer's)."""

    buffered: int
    dropped_pending: int
    breaker: str
    sending: bool
    emitted_total: int
    disabled_total: dict[str, int]
    overflow_dropped_total: int
    delivered_total: int
    rejected_total: int
    batches_total: int
    duplicate_batches_total: int
    failures_total: dict[str, int] = field(default_factory=dict)
    store_errors_total: int = 0
    heartbeats_total: int = 0


class Dispatcher:
    """Buffers signals of one site locally and sends them to the gateway in signed batches.

    ``emit`` may be called from any thread and never waits for the network.
    ``start`` launches the sender thread; ``stop`` emits an ``integration``
    ``stopped`` signal, waits up to its timeout for delivery and stops the
    thread (what is left stays in the buffer for the next start); ``close``
    also closes the buffer and the HTTP client. As a context manager it starts
    on entry and closes on exit.

    Time: every clock read goes through ``clock`` (epoch seconds) and every
    wait of the sender through ``sleep(seconds)`` (default: a wait that
    ``stop`` interrupts); a custom ``sleep`` must wait or advance ``clock``.
    ``http`` is an ``httpx.Client`` (used as is, not closed) or a factory of one.
    Create the dispatcher in the process that uses it (after a web server forks).
    """

    def __init__(
        self,
        site: str,
        secret: str,
        url: str,
        *,
        buffer_path: str | Path,
        max_buffered: int = 10_000,
        batch_size: int = 200,
        heartbeat_every: float = 60.0,
        enabled_types: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
        http: httpx.Client | Callable[[], httpx.Client] = httpx.Client,
        random: Callable[[], float] = _random.random,
        timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 60.0,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        max_retry_after: float = 3600.0,
        poll_interval: float = 1.0,
    ) -> None:
        if not isinstance(site, str) or not _SITE_RE.match(site):
            raise ValueError(f"site: {site!r} does not match {SITE_PATTERN}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError("url: must be an http:// or https:// URL")
        if not 1 <= batch_size <= MAX_BATCH_SIGNALS:
            raise ValueError(f"batch_size: must be between 1 and {MAX_BATCH_SIGNALS}")
        if max_buffered < 1:
            raise ValueError("max_buffered: must be at least 1")
        for name, value in (("heartbeat_every", heartbeat_every), ("timeout", timeout), ("poll_interval", poll_interval),
                            ("max_retry_after", max_retry_after)):
            if not value > 0:
                raise ValueError(f"{name}: must be > 0")
        self.site = site
        self._key = secret_bytes(secret)
        self._endpoint = url.rstrip("/") + ENDPOINT
        self._enabled = self._check_types(enabled_types)
        self._clock = clock
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._stop_event.wait
        self._batch_size = batch_size
        self._heartbeat_every = heartbeat_every
        self._timeout = timeout
        self._max_retry_after = max_retry_after
        self._poll = poll_interval
        self._backoff = Backoff(backoff_base, backoff_cap, random)
        self._breaker = CircuitBreaker(breaker_threshold, breaker_cooldown, clock, self._breaker_moved)
        self._buffer = SignalBuffer(buffer_path, site, max_buffered)
        self._sender_lock = sender_lease(self._buffer.path)
        self._owns_client = not isinstance(http, httpx.Client)
        self._client = http if isinstance(http, httpx.Client) else http()
        self._overhead = batch_overhead(site, new_id())
        self._stats_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._disabled: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._delivered = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._overflowing = False
        self._next_heartbeat = 0.0
        self._retry_at = 0.0
        self._attempts = 0

    # -- the application's side -------------------------------------------------------------------------------

    @staticmethod
    def _check_types(types: Iterable[str] | None) -> frozenset[str]:
        if types is None:
            return frozenset(SIGNAL_TYPES)
        if isinstance(types, str):
            raise ValueError("enabled_types: must be a collection of type names, not one string")
        chosen = frozenset(types)
        unknown = sorted(chosen - set(SIGNAL_TYPES))
        if unknown:
            raise ValueError(f"enabled_types: unknown signal type {unknown[0]!r} (known: {', '.join(SIGNAL_TYPES)})")
        return chosen

    @property
    def enabled_types(self) -> frozenset[str]:
        """The signal types this site sends; the others are dropped at ``emit`` and counted."""
        return self._enabled

    def set_enabled_types(self, types: Iterable[str] | None) -> None:
        """Change the per-type toggles (``None``: every type); applies to signals emitted from now on."""
        self._enabled = self._check_types(types)

    def signals(self, identity_key: str, *, root: str | None = None) -> Signals:
        """A :class:`Signals` builder for this site, on this dispatcher's clock."""
        return Signals(self.site, identity_key, root=root, clock=self._clock)

    def emit(self, signal: Mapping[str, Any]) -> bool:
        """Validate ``signal`` and append it to the buffer; ``True`` if buffered, ``False`` if dropped here.

        Raises :class:`InvalidSignal` (a ``ValueError`` naming the field) when the
        signal breaks the contract or names another site: that is a mistake in
        the application. A switched-off type, or a buffer that cannot be
        written (disk full), drops the signal, counts it and returns ``False``:
        monitoring never raises into the request it observes for those.
        """
        if self._closed:
            raise RuntimeError("dispatcher is closed")
        line, record = encode_signal(signal)
        if record.site != self.site:
            raise InvalidSignal(f"site: {record.site!r} is not this dispatcher's site {self.site!r}")
        if record.type not in self._enabled:
            with self._stats_lock:
                self._disabled[record.type] += 1
            return False
        return self._append(line)

    def _append(self, line: str) -> bool:
        try:
            dropped = self._buffer.append(line)
        except sqlite3.Error as error:
            with self._stats_lock:
                self._counts["store_errors"] += 1
            log.error("could not write to the signal buffer (%s: %s); signal dropped", type(error).__name__, error)
            return False
        with self._stats_lock:
            self._counts["emitted"] += 1
            self._counts["overflow_dropped"] += dropped
        if dropped and not self._overflowing:
            self._overflowing = True
            log.warning("signal buffer full (%d); dropping the oldest signals until the gateway takes traffic", self._buffer.max_buffered)
        self._wake.set()
        return True

    def _integration_line(self, event: str, at: float | None = None, **fields: int | str | None) -> str | None:
        """An ``integration`` signal of the dispatcher itself (at ``at``, default now), or ``None`` when the type is off."""
        if "integration" not in self._enabled:
            return None
        ms = int((self._clock() if at is None else at) * 1000)
        data: dict[str, Any] = {"event": event, **{name: value for name, value in fields.items() if value is not None}}
        return encode_signal(make_signal(self.site, "integration", ms, new_id(ms), **data))[0]

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Emit ``integration`` ``started`` and start the sender thread (no-op if running)."""
        if self._closed:
            raise RuntimeError("dispatcher is closed")
        if self._thread is not None:
            return
        self._stop_event.clear()
        self._next_heartbeat = self._clock() + self._heartbeat_every
        line = self._integration_line("started", version=VERSION, buffered=self._buffer.size())
        if line is not None:
            self._append(line)
        self._thread = threading.Thread(target=self._run, name=f"logystera-dispatcher-{self.site}", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` real seconds until everything buffered was delivered; ``True`` if it was.

        Flushing never makes the sender skip a backoff or the breaker's cooldown.
        """
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._buffer.pending():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._delivered:
                self._delivered.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Emit ``integration`` ``stopped``, try to deliver for up to ``timeout`` seconds, stop the sender.

        Returns whether the buffer was empty when the sender stopped; whatever
        is left stays buffered for the next start (of this or another process).
        """
        thread = self._thread
        if thread is None:
            return not self._buffer.pending()
        line = self._integration_line("stopped", buffered=self._buffer.size())
        if line is not None:
            self._append(line)
        delivered = self.flush(timeout) if timeout > 0 else not self._buffer.pending()
        self._stop_event.set()
        self._wake.set()
        thread.join(self._timeout + 1.0)
        if thread.is_alive():
            log.warning("sender thread still busy after stop(); it will exit after its current request")
        self._thread = None
        return delivered

    def close(self, timeout: float = 5.0) -> None:
        """``stop(timeout)`` if running, then close the HTTP client (if created here) and the buffer."""
        if self._closed:
            return
        self.stop(timeout)
        self._closed = True
        if self._owns_client:
            self._client.close()
        self._buffer.close()

    def __enter__(self) -> Dispatcher:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def stats(self) -> DispatcherStats:
        """Counters of this process and the state of the shared buffer."""
        with self._stats_lock:
            counts, disabled, failures = Counter(self._counts), dict(self._disabled), dict(self._failures)
        return DispatcherStats(
            buffered=self._buffer.size(),
            dropped_pending=self._buffer.dropped_pending(),
            breaker=self._breaker.state.value,
            sending=self._sender_lock.held,
            emitted_total=counts["emitted"],
            disabled_total=disabled,
            overflow_dropped_total=counts["overflow_dropped"],
            delivered_total=counts["delivered"],
            rejected_total=counts["rejected"],
            batches_total=counts["batches"],
            duplicate_batches_total=counts["duplicate_batches"],
            failures_total=failures,
            store_errors_total=counts["store_errors"],
            heartbeats_total=counts["heartbeats"],
        )

    # -- the sender thread --------------------------------------------------------------------------------------

    def _breaker_moved(self, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN and old is BreakerState.CLOSED:
            log.warning("gateway unreachable or refusing: circuit open, next probe in %.0fs", self._breaker.cooldown)
        elif new is BreakerState.CLOSED:
            log.warning("gateway takes traffic again: circuit closed")

    def _notify(self) -> None:
        with self._delivered:
            self._delivered.notify_all()

    def _run(self) -> None:
        try:
            while not self._stop_event.is_set():
                try:
                    self._step()
                except Exception:  # the sender must outlive any one failure; it logs and tries again later
                    if self._stop_event.is_set():
                        break
                    log.exception("dispatcher sender error")
                    self._sleep(self._poll)
        finally:
            self._sender_lock.release()
            self._notify()

    def _step(self) -> None:
        """One turn of the sender: heartbeat if due, then wait, probe or send the batch in flight."""
        if not self._sender_lock.acquire():  # another process sends for this buffer
            self._wake.wait(self._poll)
            self._wake.clear()
            return
        now = self._clock()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self._heartbeat_every
            line = self._integration_line("heartbeat", now, buffered=self._buffer.size())
            if line is not None and self._append(line):
                with self._stats_lock:
                    self._counts["heartbeats"] += 1
        batch = self._buffer.next_batch(self._batch_size, MAX_BATCH_BYTES, self._overhead,
                                        lambda: new_id(int(self._clock() * 1000)), self._dropped_line)
        if batch is None:
            self._notify()
            self._wake.wait(min(self._poll, max(0.0, self._next_heartbeat - self._clock())))
            self._wake.clear()
            return
        wait = max(self._retry_at - now, self._breaker.wait_time())
        if wait > 0:  # backing off, or the breaker is open: sleep, but wake for the next heartbeat
            self._sleep(min(wait, max(0.0, self._next_heartbeat - now)))
            return
        if not self._breaker.allow():
            return
        self._handle(batch, self._attempt(batch))

    def _dropped_line(self, dropped: int) -> str | None:
        return self._integration_line("dropped", dropped=dropped)

    def _attempt(self, batch: Batch) -> Outcome:
        """Send the batch once; the response (or the failure) classified."""
        now = self._clock()
        body = encode_batch(self.site, batch.batch_id, format_ts(int(now * 1000)), batch.lines)
        timestamp = int(now)
        request_headers = headers(batch.batch_id, timestamp, sign(self._key, batch.batch_id, timestamp, body), USER_AGENT)
        try:
            response = self._client.post(self._endpoint, content=body, headers=request_headers, timeout=self._timeout)
        except httpx.TimeoutException:
            return Outcome(Kind.RETRY, "timeout")
        except httpx.HTTPError:  # refused, reset, DNS, protocol errors: the URL is deliberately not logged
            return Outcome(Kind.RETRY, "connection")
        return classify(response.status_code, response.headers.get("retry-after"), response.content, self._clock())

    def _handle(self, batch: Batch, outcome: Outcome) -> None:
        if outcome.kind is Kind.DELIVERED:
            self._buffer.complete(batch.batch_id)
            self._breaker.success()
            self._retry_at = 0.0
            self._attempts = 0
            self._overflowing = False
            rejected = [(index, reason) for index, reason in outcome.rejected if 0 <= index < len(batch.lines)]
            for index, reason in rejected:
                log.warning("gateway rejected signal %d of batch %s: %s", index, batch.batch_id, reason)
            with self._stats_lock:
                self._counts["batches"] += 1
                self._counts["duplicate_batches"] += outcome.duplicate
                self._counts["delivered"] += len(batch.lines) - len(rejected)
                self._counts["rejected"] += len(rejected)
            self._notify()
            return
        self._attempts += 1
        with self._stats_lock:
            self._failures[outcome.reason] += 1
        if outcome.kind is Kind.CLIENT_ERROR:
            # The batch passed local validation, so a 4xx means configuration (unknown site, wrong secret,
            # clock skew) rather than data: keep the batch, stop trying until the cooldown, then probe once.
            log.warning("gateway refused batch %s with HTTP %s; keeping it (check the site id, secret and clock)",
                        batch.batch_id, outcome.status)
            self._breaker.trip()
        elif outcome.kind is Kind.RETRY:
            log.debug("batch %s not delivered (%s, HTTP %s); will retry", batch.batch_id, outcome.reason, outcome.status)
            self._breaker.failure()
        # RATE_LIMITED: the gateway is up and asked us to slow down; that is not a failure for the breaker.
        delay = self._backoff.delay(self._attempts)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, self._max_retry_after))
        self._retry_at = self._clock() + delay
