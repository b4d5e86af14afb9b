"""Silences in the store: written by ``logystera silence``, read by every ``deliver`` process and by the console.

The ``silences`` table keeps every version of a silence (creating one writes
its first version, expiring it writes another with ``ends_at`` = now;
nothing is deleted); ``silences_current`` is the newest version of each id.

For the console (read-only, pure reads over a :class:`sinks.clickhouse.Store`):

- :func:`active_silences` — the silences holding notifications at an instant;
- :func:`read_silences` — all of them, expired ones too, newest first;
- :func:`silences_holding` — what held the notifications of one alert (the
  ``silenced`` rows of ``deliveries``, each with its silence: who, why, until);
- :func:`held_by_silence` — the notifications one silence held.

:class:`SilenceCache` is the delivery process's copy: read at start, then
every ``interval`` seconds (5 by default), so a new silence takes effect in
a running ``deliver`` within that time; deciding never waits for the store.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from delivery.holds import SILENCED, HoldPolicy, Silence
from schemas.errors import UsageError
from schemas.excerpt import clip
from schemas.matchers import Matcher, matchers_from_lists
from schemas.store import SILENCE_COLUMNS
from sinks.clickhouse import Store, StoreError

SILENCE_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_BY = 100
"""Characters of ``--by``."""
MAX_COMMENT = 1000
"""Characters of ``--comment``."""
REFRESH_S = 5.0
"""How often a running ``deliver`` reads the silences again: the longest a new silence or an expiry takes to apply."""
SILENCE_FIELDS = """id, toUnixTimestamp64Milli(updated_at), updated_by, matchers, toUnixTimestamp64Milli(starts_at),
    toUnixTimestamp64Milli(ends_at), created_by, comment, toUnixTimestamp64Milli(created_at)"""
"""The columns of ``silences_current`` that :func:`silence_of_row` reads, in its order (the console selects them too)."""
_SELECT = "SELECT " + SILENCE_FIELDS + " FROM {db}.silences_current"  # noqa: S608 - constants


def new_silence(identifier: str, matchers: Sequence[Matcher], starts_at: int, ends_at: int, by: str, comment: str,
                now_ms: int) -> Silence:
    """A silence to write, checked: matchers, an end after its start and after now, who and why (a UsageError each)."""
    if not matchers:
        raise UsageError("silence add: give at least one --match (a silence without matchers would hold everything)")
    if ends_at <= starts_at:
        raise UsageError("silence add: the end is before the start")
    if ends_at <= now_ms:
        raise UsageError("silence add: the end is in the past")
    for option, text, limit in (("--by", by, MAX_BY), ("--comment", comment, MAX_COMMENT)):
        if not text.strip():
            raise UsageError(f"silence add: {option} must not be empty (who silenced, and why, is part of the silence)")
        if len(text) > limit or "\n" in text or "\r" in text:
            raise UsageError(f"silence add: {option}: one line of at most {limit} characters")
    return Silence(identifier, tuple(matchers), starts_at, ends_at, by.strip(), comment.strip(), now_ms, now_ms, by.strip())


def write_silence(store: Store, silence: Silence) -> None:
    """Store one version of a silence (a new silence, or a new end)."""
    row = (silence.id, silence.updated_at, silence.updated_by, json.dumps([m.as_list() for m in silence.matchers]),
           silence.starts_at, silence.ends_at, silence.created_by, silence.comment, silence.created_at)
    store.insert("silences", SILENCE_COLUMNS, [[value] for value in row])


def silence_of_row(row: Sequence[Any]) -> Silence:
    """A silence from a row of :data:`SILENCE_FIELDS` (ValueError or TypeError when its matchers do not read back)."""
    identifier, updated_at, updated_by, matchers, starts_at, ends_at, created_by, comment, created_at = row
    return Silence(identifier, tuple(matchers_from_lists(json.loads(matchers))), int(starts_at), int(ends_at),
                   created_by, comment, int(created_at), int(updated_at), updated_by)


def read_silences(store: Store, *, unexpired_at: int | None = None, skipped: list[str] | None = None) -> list[Silence]:
    """The current version of every silence (only those not expired at ``unexpired_at``, if given), newest first.

    A row that does not read back as a silence (matchers edited by hand into
    something invalid) is left out and its id, with the reason, appended to ``skipped``.
    """
    where = "" if unexpired_at is None else f" WHERE ends_at > fromUnixTimestamp64Milli(toInt64({int(unexpired_at)}), 'UTC')"
    rows = store.query(_SELECT.format(db=store.database) + where + " ORDER BY created_at DESC, id").result_rows
    found = []
    for row in rows:
        try:
            found.append(silence_of_row(row))
        except (ValueError, TypeError) as error:
            if skipped is not None:
                skipped.append(f"silence {clip(str(row[0]))}: {clip(str(error), 200)}")
    return found


def active_silences(store: Store, at_ms: int) -> list[Silence]:
    """The silences that hold matching notifications at ``at_ms`` (started, not ended)."""
    return [silence for silence in read_silences(store, unexpired_at=at_ms) if silence.active(at_ms)]


def silence_by_id(store: Store, identifier: str) -> Silence | None:
    """The current version of one silence, or None."""
    if not SILENCE_ID.match(identifier):
        return None
    rows = store.query(_SELECT.format(db=store.database) + f" WHERE id = '{identifier}'").result_rows
    return silence_of_row(rows[0]) if rows else None


@dataclass(frozen=True)
class HeldNotification:
    """A notification a silence held: which one, on which channel, when, and the silence (None if it is unknown)."""

    alert_id: str
    seq: int
    channel: str
    held_at: int  # epoch ms
    silence_id: str
    silence: Silence | None


_HELD = """SELECT alert_id, seq, channel, toUnixTimestamp64Milli(attempted_at), held_by
FROM {db}.deliveries_final WHERE outcome = '{outcome}' AND {where} ORDER BY attempted_at, alert_id, seq, channel"""


def _held(store: Store, where: str) -> list[HeldNotification]:
    rows = store.query(_HELD.format(db=store.database, outcome=SILENCED, where=where)).result_rows
    silences = {silence.id: silence for silence in read_silences(store)} if rows else {}
    return [HeldNotification(alert_id, int(seq), channel, int(at), held_by, silences.get(held_by))
            for alert_id, seq, channel, at, held_by in rows]


def silences_holding(store: Store, alert_id: str) -> list[HeldNotification]:
    """Every notification of one alert a silence held, with the silence (for "silenced by ID (who: why) until END")."""
    return _held(store, f"alert_id = '{alert_id}'") if SILENCE_ID.match(alert_id) else []


def held_by_silence(store: Store, silence_id: str) -> list[HeldNotification]:
    """Every notification one silence held."""
    return _held(store, f"held_by = '{silence_id}'") if SILENCE_ID.match(silence_id) else []


class SilenceCache:
    """The silences a running ``deliver`` applies: read from the store at start, then every ``interval`` seconds.

    Silences not yet expired are kept (pending ones too, so one that starts
    between two reads applies at its start, to the millisecond). A read that
    fails keeps the last known silences and says so once per failure streak
    on ``err``: a store outage never makes ``deliver`` page for what a person
    silenced, nor stop delivering.
    """

    def __init__(self, store: Store, policy: HoldPolicy, clock: Callable[[], float] = time.time,
                 interval: float = REFRESH_S, err: TextIO = sys.stderr) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.interval = interval
        self.err = err
        self.reads = 0
        self._failing = False
        self._reported: set[str] = set()

    async def refresh(self) -> None:
        """Read the silences now (raises what the store raises: the first read at start must succeed)."""
        skipped: list[str] = []
        silences = await asyncio.to_thread(read_silences, self.store, unexpired_at=round(self.clock() * 1000),
                                           skipped=skipped)
        for line in skipped:
            if line not in self._reported:
                self._reported.add(line)
                print(f"logystera: deliver: {line} (not applied)", file=self.err)
        self.policy.silences = tuple(silences)
        self.reads += 1

    async def run(self) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except StoreError as error:
                if not self._failing:
                    print(f"logystera: deliver: silences not read, the last ones read stay in force: {error}",
                          file=self.err)
                self._failing = True
            else:
                self._failing = False
