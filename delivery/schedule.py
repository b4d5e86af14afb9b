"""When to send what to one channel: token bucket, retries, Retry-After, holds and collapse (alerts.md "Tracked dispatch").

A :class:`ChannelSchedule` is the delivery policy of one channel as a plain
state machine: no I/O, no clock reads, no sleeping. The caller (the
asynchronous runner in :mod:`sinks.dispatch`) tells it what happened and when
(``offer``, ``finished``, ``broken``, ``wake`` — each with ``now`` in epoch
seconds), and collects what to do next from :meth:`ChannelSchedule.take`: the
calls to start (:class:`Send`) and the rows to record (:class:`Attempt`).
Tests drive it with explicit times.

The policy, per channel:

- **Lanes.** Notifications of one alert (``alert_id``) go out in order, one at a
  time: a resolved notification never overtakes its firing one. Alerts are
  independent lanes, at most ``concurrency`` calls in flight per channel.
- **Token bucket.** A notification's first call takes a token (``rate_limit``:
  ``max`` per ``per``, refilled continuously). Without a token the alert waits
  in the channel's queue (first come, first served) and each waiting
  notification is recorded ``rate_limited`` once. Retries take no token: they
  are spaced by backoff and are not new notifications.
- **Quiet on purpose.** When an alert is next in line, the ``hold`` callback
  (:class:`delivery.holds.HoldPolicy`) is asked about each of its waiting
  notifications; one a silence, mute time or inhibition holds gets a final
  ``silenced``/``muted``/``inhibited`` row naming what held it, takes no
  token, and is never sent. Retries of a call already made are not asked.
- **Collapse.** When a held alert gets its token, its backlog collapses to the
  latest notification, sent with ``collapsed`` = how many it replaces; each
  replaced one gets a final ``rate_limited`` row ``collapsed into seq N``.
- **Retries.** Timeouts, refused connections, 408, 429, 5xx (the sender says
  ``retryable``) are retried up to ``max_attempts`` calls with full-jitter
  exponential backoff; a ``retry_after`` from the receiver replaces the backoff
  and also empties the bucket until then (the receiver said how fast it can
  take), so other alerts are held instead of hammering it.
- **Outcomes.** One row per call: ``delivered``; ``retrying`` (another call
  follows); ``gave_up`` (no further call: the error is permanent, e.g. a 4xx,
  or it was the last allowed call). ``failed`` is for a notification that
  could not be attempted (the sender itself broke). Before its call, each
  :class:`Send` has a ``started`` row (:meth:`Send.started`) under the same
  attempt number, which the call's outcome row then replaces: the caller
  stores it before making the call, so a call cut off by a crash is still
  recorded (its outcome unknown).
"""

from __future__ import annotations

import heapq
import random as _random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.resilience import Backoff

if TYPE_CHECKING:
    from delivery.holds import Hold
    from schemas.alerts import ReceivedRecord
    from sinks.channel import SendResult

DELIVERED, FAILED, RETRYING, RATE_LIMITED, GAVE_UP = "delivered", "failed", "retrying", "rate_limited", "gave_up"
STARTED = "started"
"""A call about to be made; replaced by its outcome row, left alone only when the process died during the call."""
OUTCOMES = (DELIVERED, FAILED, RETRYING, RATE_LIMITED, GAVE_UP, STARTED)
HELD = "held: over the channel's rate limit"
COLLAPSED_INTO = "collapsed into seq "
"""The error text of a collapsed notification's final row, followed by the seq that carried it."""
MAX_ERROR = 200


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How hard to try: calls per notification, backoff between them, calls in flight per channel."""

    max_attempts: int = 10
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    concurrency: int = 4

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.concurrency < 1 or not 0 < self.backoff_base <= self.backoff_cap:
            raise ValueError("delivery policy: need max_attempts ≥ 1, concurrency ≥ 1 and 0 < backoff base ≤ cap")


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``capacity / per`` per second; starts full.

    :meth:`block_until` empties it and stops the refill until a time: how a
    receiver's ``Retry-After`` turns into holding every new notification.
    """

    def __init__(self, capacity: int, per: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / per
        self.tokens = float(capacity)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> bool:
        """Take a token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def ready_at(self, now: float) -> float:
        """When the next token is there (``now`` if it already is)."""
        self._refill(now)
        start = max(now, self.updated)
        return start if self.tokens >= 1.0 else start + (1.0 - self.tokens) / self.rate

    def block_until(self, until: float) -> None:
        """Empty now, the next token exactly at ``until``, then the usual rate."""
        self.tokens = 0.0
        self.updated = until - 1.0 / self.rate


@dataclass(slots=True, eq=False)
class Item:
    """One notification on its way to one channel.

    ``attempt`` counts the rows recorded for it (holds included) and ``calls``
    the calls made, both carried over from the attempt log after a restart;
    ``collapsed`` is how many earlier notifications of its alert it stands for.
    """

    notification: ReceivedRecord
    attempt: int = 0
    calls: int = 0
    collapsed: int = 0
    held: bool = False
    inhibited: Hold | None = None  # decided when it entered, in stream order (delivery.holds.Inhibitor)

    @property
    def alert_id(self) -> str:
        """The alert (episode) the notification belongs to."""
        return self.notification.record.alert_id

    @property
    def seq(self) -> int:
        """Its place in the episode."""
        return self.notification.record.seq


@dataclass(frozen=True, slots=True)
class Attempt:
    """One row of the ``deliveries`` table; ``final`` marks the last row the notification gets on this channel."""

    alert_id: str
    seq: int
    channel: str
    attempt: int
    attempted_at: int  # epoch milliseconds
    outcome: str
    status_code: int | None
    latency_ms: int
    error: str
    final: bool
    held_by: str = ""  # silenced, muted, inhibited: the silence id, mute time name or inhibiting alert id

    def row(self) -> tuple[Any, ...]:
        """The values in ``schemas.store.DELIVERY_COLUMNS`` order."""
        return (self.alert_id, self.seq, self.channel, self.attempt, self.attempted_at, self.outcome, self.status_code,
                self.latency_ms, self.error, self.held_by)


@dataclass(frozen=True, slots=True)
class Send:
    """A call to start now: ``sender.send(item.notification, collapsed)``; report back with ``finished``.

    ``attempt`` is the number its outcome row will have: no other row of the
    notification is recorded while its call is in flight (holds and
    collapses concern waiting notifications only).
    """

    item: Item
    collapsed: int
    started_at: float
    attempt: int

    def started(self, channel: str) -> Attempt:
        """The row that records the call before it is made (its outcome row replaces it)."""
        item = self.item
        return Attempt(item.alert_id, item.seq, channel, self.attempt, round(self.started_at * 1000), STARTED, None, 0, "",
                       final=False)


@dataclass(slots=True, eq=False)
class _Lane:
    """The notifications of one alert on one channel: the one being sent (or retried) and those waiting."""

    active: Item | None = None
    sending: bool = False
    retry_at: float | None = None
    waiting: list[Item] = field(default_factory=list)
    queued: bool = False  # in the channel's queue for a token and a slot
    held: bool = False  # queued while the bucket was empty


def _short(text: str) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= MAX_ERROR else line[: MAX_ERROR - 1] + "…"


class ChannelSchedule:
    """The delivery policy of one channel (see the module docstring); single-threaded, time given by the caller."""

    def __init__(
        self, channel: str, rate_max: int, rate_per: float, policy: DeliveryPolicy, now: float,
        random: Callable[[], float] = _random.random, hold: Callable[[Item, float], Hold | None] | None = None,
    ) -> None:
        self.channel = channel
        self.policy = policy
        self._hold_of = hold
        self.bucket = TokenBucket(rate_max, rate_per, now)
        self._backoff = Backoff(policy.backoff_base, policy.backoff_cap, random)
        self._lanes: dict[str, _Lane] = {}
        self._queue: deque[str] = deque()  # alert ids waiting for a token and a slot, first come first served
        self._retries: list[tuple[float, int, str]] = []  # (due, order, alert id) heap
        self._order = 0
        self._in_flight = 0
        self._sends: list[Send] = []
        self._records: list[Attempt] = []

    # -- what the caller tells it ------------------------------------------------------------------

    def offer(self, item: Item, now: float) -> None:
        """A notification for this channel (``item.attempt``/``calls`` carried over from earlier runs)."""
        lane = self._lanes.get(item.alert_id)
        if lane is None:
            lane = self._lanes[item.alert_id] = _Lane()
        lane.waiting.append(item)
        lane.waiting.sort(key=lambda waiting: waiting.seq)
        if lane.held:
            self._hold(item, now)
        if lane.active is None and not lane.queued:
            self._enqueue(item.alert_id, lane)
        self._pump(now)

    def finished(self, send: Send, result: SendResult, latency_ms: int, now: float) -> None:
        """A call started by ``send`` came back with ``result``."""
        item = send.item
        lane = self._end_call(item)
        item.calls += 1
        if result.delivered:
            self._record(item, send.started_at, DELIVERED, result.status_code, latency_ms, "", final=True)
            lane.active = None
        elif result.retryable and item.calls < self.policy.max_attempts:
            # Policy: the receiver's Retry-After wins over our backoff, and holds the whole channel that long.
            if result.retry_after is not None:
                wait = max(0.0, result.retry_after)
                self.bucket.block_until(now + wait)
            else:
                wait = self._backoff.delay(item.calls)
            self._record(item, send.started_at, RETRYING, result.status_code, latency_ms, result.error, final=False)
            lane.retry_at = now + wait
            self._order += 1
            heapq.heappush(self._retries, (lane.retry_at, self._order, item.alert_id))
        else:
            why = "not retryable" if not result.retryable else f"after {item.calls} attempts"
            self._record(item, send.started_at, GAVE_UP, result.status_code, latency_ms, f"{result.error} ({why})",
                         final=True)
            lane.active = None
        self._after_call(item.alert_id, lane, now)

    def broken(self, send: Send, error: str, latency_ms: int, now: float) -> None:
        """The sender raised instead of answering (a defect, not a delivery problem): recorded ``failed``, not retried."""
        item = send.item
        lane = self._end_call(item)
        item.calls += 1
        self._record(item, send.started_at, FAILED, None, latency_ms, error, final=True)
        lane.active = None
        self._after_call(item.alert_id, lane, now)

    def wake(self, now: float) -> None:
        """Time passed: start retries that are due and give tokens to waiting alerts."""
        self._pump(now)

    # -- what the caller asks ----------------------------------------------------------------------

    def take(self) -> tuple[list[Send], list[Attempt]]:
        """Calls to start and rows to record since the last ``take``."""
        sends, records = self._sends, self._records
        self._sends, self._records = [], []
        return sends, records

    def next_wake(self, now: float) -> float | None:
        """When ``wake`` has something to do, or None until the next ``offer``/``finished``."""
        if self._in_flight >= self.policy.concurrency:
            return None  # nothing can start before a call ends
        due = [self._retries[0][0]] if self._retries else []
        if self._queue:
            due.append(self.bucket.ready_at(now))
        return min(due) if due else None

    @property
    def idle(self) -> bool:
        """Nothing waiting, held, being retried or in flight."""
        return not self._lanes and self._in_flight == 0

    @property
    def held(self) -> int:
        """Notifications waiting for a token right now."""
        return sum(len(lane.waiting) for lane in self._lanes.values() if lane.held)

    @property
    def in_flight(self) -> int:
        """Calls started and not finished."""
        return self._in_flight

    # -- inside ------------------------------------------------------------------------------------

    def _enqueue(self, alert_id: str, lane: _Lane) -> None:
        lane.queued = True
        self._queue.append(alert_id)

    def _end_call(self, item: Item) -> _Lane:
        lane = self._lanes[item.alert_id]
        assert lane.active is item and lane.sending, "finished() for a call this schedule did not start"
        lane.sending = False
        self._in_flight -= 1
        return lane

    def _after_call(self, alert_id: str, lane: _Lane, now: float) -> None:
        if lane.active is None:
            if lane.waiting:
                self._enqueue(alert_id, lane)
            else:
                del self._lanes[alert_id]
        self._pump(now)

    def _pump(self, now: float) -> None:
        slots = self.policy.concurrency - self._in_flight
        while self._retries and slots > 0 and self._retries[0][0] <= now:
            _, _, alert_id = heapq.heappop(self._retries)
            lane = self._lanes[alert_id]
            assert lane.active is not None
            lane.retry_at = None
            self._start(lane, lane.active, now)
            slots -= 1
        while self._queue and slots > 0:
            alert_id = self._queue[0]
            lane = self._lanes[alert_id]
            self._release_held(lane, now)
            if not lane.waiting:  # every one was held back: nothing left to send, no token taken
                self._queue.popleft()
                del self._lanes[alert_id]
                continue
            if not self.bucket.take(now):
                break
            self._queue.popleft()
            lane.queued = False
            self._start(lane, self._next_of(lane, now), now)
            slots -= 1
        if self._queue and self.bucket.ready_at(now) > now:
            for alert_id in self._queue:
                lane = self._lanes[alert_id]
                if not lane.held:
                    lane.held = True
                    for item in lane.waiting:
                        self._hold(item, now)

    def _release_held(self, lane: _Lane, now: float) -> None:
        """Take the waiting notifications a silence, mute time or inhibition holds out of the lane, each with its final row.

        Asked when the lane is next in line, so a silence made while a
        notification waits for a token (a held backlog) applies to it.
        """
        if self._hold_of is None:
            return
        kept = []
        for item in lane.waiting:
            hold = self._hold_of(item, now)
            if hold is None:
                kept.append(item)
            else:
                self._record(item, now, hold.outcome, None, 0, hold.reason, final=True, held_by=hold.by)
        lane.waiting = kept

    def _next_of(self, lane: _Lane, now: float) -> Item:
        """The notification a lane sends when it gets its token: the next one, or if it was held, the latest."""
        if not lane.held:
            return lane.waiting.pop(0)
        lane.held = False
        *replaced, latest = lane.waiting
        lane.waiting = []
        for item in replaced:
            latest.collapsed += 1 + item.collapsed
            self._record(item, now, RATE_LIMITED, None, 0, f"{COLLAPSED_INTO}{latest.seq}", final=True)
        latest.held = False
        return latest

    def _start(self, lane: _Lane, item: Item, now: float) -> None:
        lane.active = item
        lane.sending = True
        self._in_flight += 1
        self._sends.append(Send(item, item.collapsed, now, item.attempt + 1))

    def _hold(self, item: Item, now: float) -> None:
        if not item.held:
            item.held = True
            self._record(item, now, RATE_LIMITED, None, 0, HELD, final=False)

    def _record(
        self, item: Item, at: float, outcome: str, status: int | None, latency_ms: int, error: str, *, final: bool,
        held_by: str = "",
    ) -> None:
        item.attempt += 1
        self._records.append(Attempt(
            item.alert_id, item.seq, self.channel, item.attempt, round(at * 1000), outcome, status, latency_ms,
            _short(error), final, held_by,
        ))
