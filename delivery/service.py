"""The delivery service: notification records in, one independent runner per channel, every attempt in the log.

::

    submit(records) ──► dedupe, look up earlier runs ──► per channel in `deliver`:
                                                          ├─ finished before (attempt log)  → skipped, counted
                                                          ├─ resolved, send_resolved false → skipped, counted
                                                          ├─ unknown channel                → one `failed` row
                                                          └─ ChannelRunner.offer ─► ChannelSchedule (policy;
                                                                                      silences, mute times, inhibition)
                                                                                   ─► sender.send (asyncio task)
                                                                                   ─► Attempt rows ─► AttemptLog

Each channel has its own runner task, schedule, token bucket and calls in
flight, so a channel that hangs or refuses only delays its own notifications;
the service runs in its own process, apart from detection and its store
writes. A record is *done* once its final row on every channel it names is
stored: that is when the caller's ``on_done`` runs (Kafka offsets are
committed from it), so nothing is acknowledged before it is recorded.

Delivery guarantee: every call is recorded before it is made (a ``started``
row, stored, then replaced by the call's outcome row), so after a crash
the log shows every call, also the one cut off. At least once per
(notification, channel), at most once more after a crash: a call whose
outcome row was not stored yet (its last row is ``started``) may or may not
have reached the receiver, so the next run makes it again, with the same
``webhook-id`` (``alert_id:seq``) and the same body — a carrier's collapse
rows are stored before its call, so its ``collapsed`` count is read back
unchanged. Under backpressure (more than ``max_pending`` records not done)
:meth:`DeliveryService.submit` waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random as _random
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from delivery.attempt_log import AttemptLog, Earlier
from delivery.holds import HELD_OUTCOMES, Hold, HoldPolicy
from delivery.schedule import COLLAPSED_INTO, FAILED, Attempt, ChannelSchedule, DeliveryPolicy, Item, Send
from delivery.silences import SilenceCache
from schemas.alerts import ReceivedRecord
from sinks.channel import ChannelSender

Done = Callable[[], None]
UNKNOWN_CHANNEL = "channel is not configured in channels.yaml"
MAX_SEEN_ALERTS = 100_000
"""Alerts whose highest seq the service remembers to recognise duplicates (measured ~170 B each, ~17 MB; see ``_first_time``)."""


@dataclass
class DeliveryStats:
    """Counters for the summary line and the Prometheus endpoint.

    ``attempts`` counts rows by (channel, outcome); ``notifications`` counts
    (notification, channel) pairs by how they ended: ``delivered``,
    ``gave_up``, ``failed``, ``collapsed`` (carried by a later one), ``silenced``,
    ``muted``, ``inhibited`` (held back on purpose: delivery/holds.py), or were
    not attempted: ``not_sent_resolved`` (``send_resolved: false``) and
    ``done_before`` (an earlier run finished them).
    """

    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    notifications: Counter[tuple[str, str]] = field(default_factory=Counter)
    records: int = 0
    invalid: int = 0
    duplicates: int = 0

    def recorded(self, attempt: Attempt) -> None:
        """Count one row, and how its notification ended if it is the last one."""
        self.attempts[(attempt.channel, attempt.outcome)] += 1
        if attempt.final:
            ended = "collapsed" if attempt.error.startswith(COLLAPSED_INTO) else attempt.outcome
            self.notifications[(attempt.channel, ended)] += 1


class _Record:
    """One submitted record and how many channels still owe it a stored final row."""

    __slots__ = ("alert_id", "on_done", "remaining", "service")

    def __init__(self, service: DeliveryService, alert_id: str, on_done: Done | None) -> None:
        self.service = service
        self.alert_id = alert_id
        self.on_done = on_done
        self.remaining = 1  # the hand-out's own share: released once every channel has its part

    def channel_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.service._record_done(self)


class ChannelRunner:
    """Runs one channel's :class:`ChannelSchedule` in real time: starts its calls, records its rows."""

    def __init__(
        self, sender: ChannelSender, schedule: ChannelSchedule, log: AttemptLog, stats: DeliveryStats,
        clock: Callable[[], float],
    ) -> None:
        self.sender = sender
        self.schedule = schedule
        self.log = log
        self.stats = stats
        self.clock = clock
        self.calls: set[asyncio.Task[None]] = set()
        self.closing = False
        self._failure: BaseException | None = None
        self._changed = asyncio.Event()
        self._on_final: dict[tuple[str, int], Done] = {}

    @property
    def name(self) -> str:
        """The channel's name."""
        return self.schedule.channel

    def offer(self, item: Item, on_final: Done) -> None:
        """Deliver ``item``; ``on_final`` runs once its last row is stored."""
        self._on_final[(item.alert_id, item.seq)] = on_final
        self.schedule.offer(item, self.clock())
        self._changed.set()

    async def run(self) -> None:
        """Start what the schedule says, when it says, until cancelled."""
        while True:
            self.apply()
            now = self.clock()
            wake = self.schedule.next_wake(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), None if wake is None else max(0.0, wake - now))
            self._changed.clear()
            if self._failure is not None:  # a defect in a call's bookkeeping: stop the run rather than hang
                raise self._failure
            self.schedule.wake(self.clock())

    def apply(self) -> None:
        """Hand new rows to the log and start new calls once their ``started`` rows are stored (none once closing).

        The calls of one round wait for one store write, together with every
        row queued before them — the collapse rows of a carrier, the outcome
        of the previous call of the same alert — so a restart never finds a
        call made whose reason, or whose predecessor's outcome, it cannot read.
        """
        sends, records = self.schedule.take()
        for attempt in records:
            self.stats.recorded(attempt)
        finals = [self._on_final.pop((a.alert_id, a.seq)) for a in records if a.final]
        if self.closing or not sends:
            if records:
                self.log.add(records, finals)
            return
        self.log.add([*records, *(send.started(self.name) for send in sends)], [*finals, lambda: self._start(sends)],
                     urgent=True)

    def _start(self, sends: list[Send]) -> None:
        """Make the calls whose ``started`` rows are stored (a stop lets them start too: see :meth:`DeliveryService.stop`)."""
        for send in sends:
            task = asyncio.create_task(self._call(send), name=f"deliver {self.name} {send.item.alert_id}:{send.item.seq}")
            self.calls.add(task)
            task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self.calls.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
            self._changed.set()

    async def _call(self, send: Send) -> None:
        started = time.monotonic()
        try:
            result = await self.sender.send(send.item.notification, send.collapsed)
        except Exception as error:  # a sender must answer with a SendResult; one that raises has a defect
            print(f"logystera: deliver: channel {self.name}: the sender raised {type(error).__name__} (recorded as failed)",
                  file=sys.stderr)
            self.schedule.broken(send, f"sender error: {type(error).__name__}", _ms_since(started), self.clock())
        else:
            self.schedule.finished(send, result, _ms_since(started), self.clock())
        self._changed.set()


async def unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await ``work`` unless ``stop`` is set first (then cancel it); whether it finished."""
    job = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([job, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not job.done():
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        return False
    job.result()
    return True


def _ms_since(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


class DeliveryService:
    """Fan-out of notification records to channel runners; see the module docstring."""

    def __init__(
        self,
        senders: Iterable[ChannelSender],
        log: AttemptLog,
        policy: DeliveryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] = _random.random,
        max_pending: int = 10_000,
        max_seen: int = MAX_SEEN_ALERTS,
        holds: HoldPolicy | None = None,
        silences: SilenceCache | None = None,
    ) -> None:
        self.log = log
        self.policy = policy or DeliveryPolicy()
        self.clock = clock
        self.holds = holds or HoldPolicy()
        self.silences = silences
        self.stats = DeliveryStats()
        self.max_pending = max_pending
        now = clock()
        self.runners: dict[str, ChannelRunner] = {}
        for sender in senders:
            limit = sender.config.rate_limit
            schedule = ChannelSchedule(sender.config.name, limit.max, limit.per / 1000, self.policy, now, random,
                                       self._hold_for(sender.config.name))
            self.runners[sender.config.name] = ChannelRunner(sender, schedule, log, self.stats, clock)
        self.max_seen = max_seen
        self._seen: OrderedDict[str, int] = OrderedDict()  # alert_id → highest seq handed out, least recent first
        self._active: Counter[str] = Counter()  # alert_id → its records not done yet, while > 0 (never forgotten then)
        self._pending = 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    def _hold_for(self, channel: str) -> Callable[[Item, float], Hold | None]:
        """The question a channel's schedule asks before sending: whether a notification is held back, and by what."""

        def hold(item: Item, now: float) -> Hold | None:
            return self.holds.hold(item.notification.record, channel, item.inhibited, round(now * 1000))

        return hold

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the channel runners, the log's flusher and the silences' refresh (inside the running event loop)."""
        self._tasks = [asyncio.create_task(runner.run(), name=f"channel {name}") for name, runner in self.runners.items()]
        self._tasks.append(asyncio.create_task(self.log.run(), name="attempt log"))
        if self.silences is not None:
            self._tasks.append(asyncio.create_task(self.silences.run(), name="silences"))

    async def guarded(self, work: Awaitable[Any]) -> None:
        """Await ``work``, but raise at once if a runner or the log failed (a store that gave up, say)."""
        job = asyncio.ensure_future(work)
        try:
            await asyncio.wait([job, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in self._tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await job
        finally:
            if not job.done():
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every submitted record is done (delivered, gave up, ... and stored)."""
        while self._pending:
            self._changed.clear()
            await self._changed.wait()

    async def stop(self, grace: float) -> None:
        """Stop starting calls, give calls in flight ``grace`` seconds, store every row, close the senders.

        Notifications still waiting or between retries stay unfinished in the
        log: the next run picks them up. Stopping twice does nothing more.
        """
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # no new round of calls from here on
        try:
            if not self.log.failed:  # a store that already gave up would only be retried for as long again
                await self.log.flush()  # calls whose `started` rows are stored are made: a stored row promises its call
            for runner in self.runners.values():
                runner.closing = True
            calls = [call for runner in self.runners.values() for call in runner.calls]
            if calls:
                _, late = await asyncio.wait(calls, timeout=grace)
                for call in late:
                    call.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            for runner in self.runners.values():
                runner.apply()
            if not self.log.failed:
                await self.log.flush()
        finally:
            for runner in self.runners.values():
                await runner.sender.aclose()

    # -- input -------------------------------------------------------------------------------------

    async def submit(self, records: Sequence[tuple[ReceivedRecord, Done | None]]) -> None:
        """Deliver validated notification records; each ``on_done`` runs when its record is done."""
        while self._pending >= self.max_pending:
            self._changed.clear()
            await self._changed.wait()
        fresh: list[tuple[ReceivedRecord, Done | None, Hold | None]] = []
        for notification, on_done in records:
            self.stats.records += 1
            if not self._first_time(notification.record.alert_id, notification.record.seq):
                self.stats.duplicates += 1
                if on_done is not None:
                    on_done()
                continue
            # In stream order, also for records an earlier run finished: a restart rebuilds the same inhibitions.
            fresh.append((notification, on_done, self.holds.inhibitor.observe(notification.record)))
        if not fresh:
            return
        # Pending from the moment they are counted read: the look-up below yields, and meanwhile neither the pending
        # gauge nor drain() may take them for done.
        self._pending += len(fresh)
        try:
            earlier = await self.log.earlier(notification.record.alert_id for notification, _, _ in fresh)
        except BaseException:
            self._pending -= len(fresh)
            self._changed.set()
            raise
        now = self.clock()
        for notification, on_done, inhibited in fresh:
            alert_id, seq = notification.record.alert_id, notification.record.seq
            self._active[alert_id] += 1
            record = _Record(self, alert_id, on_done)
            for channel in dict.fromkeys(notification.record.deliver):
                self._hand_out(notification, channel, earlier.get((channel, alert_id, seq)), record, now, inhibited)
            record.channel_done()  # the hand-out is over: done as soon as every channel is

    def restore(self, notification: ReceivedRecord) -> None:
        """A record an earlier run finished, read again at start: its effect on the inhibitions, nothing else.

        Nothing is sent, recorded or counted for it. It goes through the same
        duplicate check as a submitted record (and is remembered by it), so a
        copy of an old notification after the restart moves the inhibitions no
        more than it would have without the restart.
        """
        record = notification.record
        if self._first_time(record.alert_id, record.seq):
            self.holds.inhibitor.remember(record)

    def _first_time(self, alert_id: str, seq: int) -> bool:
        """Whether ``seq`` is above every seq of ``alert_id`` handed out so far (then it is remembered as the highest).

        Not above: the same notification again (an at-least-once upstream) or
        one older than a notification already handed out (an out-of-order
        copy), both counted ``duplicate``. Memory is bounded: one entry per
        alert, and past :attr:`max_seen` alerts the least recently seen one that
        has no record in progress is forgotten; a copy of it arriving later is
        handed out again and the attempt log answers it (``done_before``), at the
        cost of a store lookup, never of a second call.
        """
        seen = self._seen
        highest = seen.get(alert_id)
        if highest is not None and seq <= highest:
            seen.move_to_end(alert_id)
            return False
        seen[alert_id] = seq
        seen.move_to_end(alert_id)
        for _ in range(len(seen) - self.max_seen):
            oldest = next(iter(seen))
            if self._active[oldest]:
                seen.move_to_end(oldest)  # still being delivered: its duplicates must keep being recognised
            else:
                del seen[oldest]
        return True

    def _hand_out(self, notification: ReceivedRecord, channel: str, earlier: Earlier | None, record: _Record,
                  now: float, inhibited: Hold | None) -> None:
        if earlier is not None and earlier.finished:
            self.stats.notifications[(channel, "done_before")] += 1
            return
        runner = self.runners.get(channel)
        if runner is not None and notification.record.status == "resolved" and not runner.sender.config.send_resolved:
            self.stats.notifications[(channel, "not_sent_resolved")] += 1
            return
        record.remaining += 1
        item = Item(notification, inhibited=inhibited)
        if earlier is not None:
            item.attempt, item.calls, item.collapsed = earlier.attempt, earlier.calls, earlier.collapsed
        if runner is not None:
            runner.offer(item, record.channel_done)
            return
        # A record from another rule pack may name a channel this one does not have: visible in the log, not lost.
        attempt = Attempt(item.alert_id, item.seq, channel, item.attempt + 1, round(now * 1000), FAILED, None, 0,
                          UNKNOWN_CHANNEL, final=True)
        self.stats.recorded(attempt)
        self.log.add([attempt], [record.channel_done])

    def _record_done(self, record: _Record) -> None:
        self._pending -= 1
        self._active[record.alert_id] -= 1
        if not self._active[record.alert_id]:
            del self._active[record.alert_id]
        self._changed.set()
        if record.on_done is not None:
            record.on_done()

    # -- observation -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records submitted and not yet done."""
        return self._pending

    @property
    def remembered(self) -> int:
        """Alerts whose highest seq is remembered now (at most :attr:`max_seen` plus those in progress)."""
        return len(self._seen)

    def _channels(self) -> list[str]:
        named = {channel for channel, _ in self.stats.attempts} | {channel for channel, _ in self.stats.notifications}
        return sorted(named | set(self.runners))

    def _tally(self, channels: Iterable[str]) -> str:
        wanted = set(channels)
        ended: Counter[str] = Counter()
        for (channel, result), n in self.stats.notifications.items():
            if channel in wanted:
                ended[result] += n
        attempts = sum(n for (channel, _), n in self.stats.attempts.items() if channel in wanted)
        held = sum(ended[outcome] for outcome in HELD_OUTCOMES)
        # Held counts only when something was held: the line stays as it was for a run without silences.
        quiet = f", {held} held ({', '.join(f'{ended[outcome]} {outcome}' for outcome in HELD_OUTCOMES)})" if held else ""
        return ", ".join(f"{ended[result]} {label}" for result, label in _RESULTS) + f"{quiet}; {attempts} attempts"

    def summary(self) -> list[str]:
        """One line per channel, then the totals (what ``logystera deliver`` prints at the end)."""
        channels = self._channels()
        lines = [f"channel {channel}: {self._tally([channel])}" for channel in channels]
        stats = self.stats
        lines.append(f"delivery: {stats.records} records, {stats.invalid} invalid, {stats.duplicates} duplicate, "
                     f"{self._pending} not done: {self._tally(channels)}")
        return lines


_RESULTS = (
    ("delivered", "delivered"), ("collapsed", "collapsed"), ("gave_up", "gave up"), ("failed", "failed"),
    ("not_sent_resolved", "resolved not sent"), ("done_before", "done before"),
)
"""How a (notification, channel) ended, in summary order."""
