"""The ``deliveries`` table as the delivery service uses it: every attempt written, and what earlier runs did.

Writes are buffered and inserted from a worker thread (``asyncio.to_thread``)
every ``interval`` seconds or ``batch_rows`` rows, so a slow store never holds
up a channel; a callback given with a row runs once that row is stored (the
service acknowledges a Kafka record only when its last row is). A store that
stays unavailable raises :class:`sinks.clickhouse.StoreUnavailable` from
:meth:`AttemptLog.flush` and the service stops: delivering without the log
would lose the restart guarantees.

:meth:`AttemptLog.earlier` reads what earlier runs recorded for some alerts:
per (channel, alert, seq) the last attempt number, the calls made, the last
outcome and whether the notification is finished there (delivered, gave up,
failed, held back by a silence, mute time or inhibition, or collapsed into a
later one) — a restart continues from it. A
last row ``started`` is a call whose outcome never reached the store (the
process died during it): maybe delivered, so not finished; the restart
makes the call again, with the same ``webhook-id`` and the same ``collapsed``
count, which it reads back from the collapse rows stored before that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from delivery.holds import HELD_OUTCOMES
from delivery.schedule import COLLAPSED_INTO, DELIVERED, FAILED, GAVE_UP, RATE_LIMITED, Attempt
from schemas.store import DELIVERY_COLUMNS
from sinks.clickhouse import Store

_ALERT_ID = re.compile(r"^[0-9a-f]{32}$")
_CARRIER = re.compile(re.escape(COLLAPSED_INTO) + r"(\d+)$")
_LOOKUP_BATCH = 1000
_NOT_CALLS = ", ".join(f"'{outcome}'" for outcome in (RATE_LIMITED, *HELD_OUTCOMES))
_EARLIER = """SELECT channel, alert_id, seq, max(attempt), countIf(outcome NOT IN ({not_calls})),
    argMax(outcome, attempt), argMax(error, attempt)
FROM {db}.deliveries_final WHERE alert_id IN ({ids}) GROUP BY channel, alert_id, seq"""


@dataclass(frozen=True, slots=True)
class Earlier:
    """What the attempt log says about one notification on one channel."""

    attempt: int  # the last attempt number recorded
    calls: int  # attempts that were calls (not holds)
    outcome: str  # the last outcome
    error: str  # the last error text
    collapsed: int = 0  # earlier notifications this one carries (they were collapsed into it)

    @property
    def finished(self) -> bool:
        """Nothing more to do for it on this channel."""
        return self.outcome in (DELIVERED, GAVE_UP, FAILED, *HELD_OUTCOMES) or self.carrier is not None

    @property
    def carrier(self) -> int | None:
        """The seq this notification was collapsed into, if it was."""
        match = _CARRIER.match(self.error) if self.outcome == RATE_LIMITED else None
        return int(match.group(1)) if match else None


EarlierKey = tuple[str, str, int]
"""(channel, alert_id, seq)."""


def with_carried_counts(rows: dict[EarlierKey, Earlier]) -> dict[EarlierKey, Earlier]:
    """Each notification's ``collapsed``: how many earlier ones were collapsed into it, directly or through another."""
    into: dict[EarlierKey, list[EarlierKey]] = {}
    for (channel, alert_id, seq), earlier in rows.items():
        carrier = earlier.carrier
        if carrier is not None:
            into.setdefault((channel, alert_id, carrier), []).append((channel, alert_id, seq))

    def carried(key: EarlierKey) -> int:
        # A notification is collapsed into a later seq only, so this ends.
        return sum(1 + carried(replaced) for replaced in into.get(key, ()))

    return {key: Earlier(e.attempt, e.calls, e.outcome, e.error, carried(key)) for key, e in rows.items()}


class AttemptLog:
    """Buffered writer of attempt rows and reader of earlier runs' rows, over one :class:`Store`."""

    def __init__(self, store: Store, interval: float = 0.2, batch_rows: int = 1000) -> None:
        self.store = store
        self.interval = interval
        self.batch_rows = batch_rows
        self.stored = 0
        self.failed = False
        self._rows: list[tuple[Any, ...]] = []
        self._callbacks: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def add(self, attempts: Iterable[Attempt], on_stored: Iterable[Callable[[], None]] = (), *, urgent: bool = False) -> None:
        """Queue rows; ``on_stored`` callbacks run after they (and every row queued before) are in the store.

        ``urgent``: store them now rather than at the next interval (calls wait
        for their ``started`` rows); rows queued meanwhile go in the same write.
        """
        self._rows.extend(attempt.row() for attempt in attempts)
        self._callbacks.extend(on_stored)
        if urgent or len(self._rows) >= self.batch_rows:
            self._wake.set()

    async def flush(self) -> None:
        """Insert everything queued so far, then run its callbacks."""
        async with self._lock:
            rows, callbacks = self._rows, self._callbacks
            self._rows, self._callbacks = [], []
            if rows:
                columns = [list(column) for column in zip(*rows, strict=True)]
                try:
                    await asyncio.to_thread(self.store.insert, "deliveries", DELIVERY_COLUMNS, columns)
                except Exception:
                    self.failed = True
                    raise
                self.stored += len(rows)
            for callback in callbacks:
                callback()

    async def run(self) -> None:
        """Flush every ``interval`` seconds (sooner when a batch fills up) until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            # Shielded: a stop that cancels this loop mid-insert must not lose the rows taken or their callbacks.
            await asyncio.shield(self.flush())

    async def earlier(self, alert_ids: Iterable[str]) -> dict[EarlierKey, Earlier]:
        """What earlier runs recorded for every notification of these alerts, on every channel."""
        ids = sorted({alert_id for alert_id in alert_ids if _ALERT_ID.match(alert_id)})  # spliced into SQL: checked
        found: dict[EarlierKey, Earlier] = {}
        for start in range(0, len(ids), _LOOKUP_BATCH):
            listed = ", ".join(f"'{alert_id}'" for alert_id in ids[start:start + _LOOKUP_BATCH])
            query = _EARLIER.format(db=self.store.database, ids=listed, not_calls=_NOT_CALLS)
            result = await asyncio.to_thread(self.store.query, query)
            for channel, alert_id, seq, attempt, calls, outcome, error in result.result_rows:
                found[(channel, alert_id, int(seq))] = Earlier(int(attempt), int(calls), outcome, error)
        return with_carried_counts(found)
