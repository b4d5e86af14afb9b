"""Bounded time structures for one fingerprint.

Windows are half-open, ``(c − W, c]``, at millisecond resolution, so they
keep one entry per distinct timestamp (not per signal) and drop entries as
the clock passes them. Evidence is a ring of at most ``evidence`` signals
ordered by (``ts``, ``id``): because every in-window signal is newer than
every signal that left the window, the newest ``evidence`` signals of the
ring restricted to the window are exactly the newest ``evidence`` signals in
the window.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Sequence
from typing import Any


class TimeCounts:
    """Signal counts per exact timestamp, oldest first.

    Entries arrive almost always in time order (appends); a late-but-allowed
    signal is inserted in place. Expired entries are skipped by a head index
    and compacted occasionally, so expiry is amortised O(1).
    """

    __slots__ = ("_counts", "_head", "_times", "total")

    def __init__(self) -> None:
        self._times: list[int] = []
        self._counts: list[int] = []
        self._head = 0
        self.total = 0

    def add(self, ts: int, n: int = 1) -> None:
        """Count ``n`` signals at ``ts``."""
        times = self._times
        self.total += n
        if len(times) == self._head or ts > times[-1]:
            times.append(ts)
            self._counts.append(n)
            return
        index = len(times) - 1
        while index >= self._head and times[index] > ts:
            index -= 1
        if index >= self._head and times[index] == ts:
            self._counts[index] += n
        else:
            times.insert(index + 1, ts)
            self._counts.insert(index + 1, n)

    def expire(self, horizon: int) -> Sequence[tuple[int, int]]:
        """Drop entries with ``ts ≤ horizon``; return them, oldest first (a shift moves them to its baseline)."""
        times, head = self._times, self._head
        if head == len(times) or times[head] > horizon:
            return ()  # the usual case, checked first: nothing left the window
        end = bisect_right(times, horizon, head)
        counts = self._counts
        dropped = list(zip(times[head:end], counts[head:end], strict=True))
        self.total -= sum(counts[head:end])
        self._advance(end)
        return dropped

    def drop(self, horizon: int) -> None:
        """Drop entries with ``ts ≤ horizon``, as :meth:`expire` does without listing them (every kind but shift)."""
        times, head = self._times, self._head
        size = len(times)
        if head == size or times[head] > horizon:
            return
        counts, total = self._counts, self.total
        while head < size and times[head] <= horizon:  # usually one entry: cheaper than a bisection and a slice
            total -= counts[head]
            head += 1
        self.total = total
        self._advance(head)

    def _advance(self, end: int) -> None:
        """Move the head to ``end`` (entries before it have left), compacting the lists now and then."""
        times = self._times
        if end == len(times):
            times.clear()
            self._counts.clear()
            self._head = 0
        elif end > 32 and end * 2 > len(times):
            del times[:end], self._counts[:end]
            self._head = 0
        else:
            self._head = end

    def oldest(self) -> int | None:
        """Timestamp of the oldest entry, if any."""
        return self._times[self._head] if self._head < len(self._times) else None

    def newer_than(self, horizon: int) -> bool:
        """Whether any entry has ``ts > horizon`` (something is still inside the lookback)."""
        return self._head < len(self._times) and self._times[-1] > horizon

    def next_expiry(self, window: int) -> int | None:
        """The clock at which the oldest entry leaves a window of length ``window``."""
        return self._times[self._head] + window if self._head < len(self._times) else None

    def newest(self) -> int | None:
        """Timestamp of the newest entry, if any."""
        return self._times[-1] if self._head < len(self._times) else None


class ValueWindow:
    """Per-signal values in time order, with a live count per distinct value.

    Serves ``distinct``: the number of distinct non-null values in the window
    is the number of keys in ``counts``.
    """

    __slots__ = ("_entries", "_head", "counts")

    def __init__(self) -> None:
        self._entries: list[tuple[int, Any]] = []
        self._head = 0
        self.counts: dict[Any, int] = {}

    def add(self, ts: int, value: Any) -> None:
        """Record a non-null ``value`` seen at ``ts``."""
        entries = self._entries
        if len(entries) == self._head or ts >= entries[-1][0]:
            entries.append((ts, value))
        else:
            index = len(entries) - 1
            while index >= self._head and entries[index][0] > ts:
                index -= 1
            entries.insert(index + 1, (ts, value))
        self.counts[value] = self.counts.get(value, 0) + 1

    def expire(self, horizon: int) -> None:
        """Forget values seen at ``ts ≤ horizon``."""
        entries, head, counts = self._entries, self._head, self.counts
        while head < len(entries) and entries[head][0] <= horizon:
            value = entries[head][1]
            remaining = counts[value] - 1
            if remaining:
                counts[value] = remaining
            else:
                del counts[value]
            head += 1
        if head == len(entries):
            self._entries, self._head = [], 0
        elif head > 32 and head * 2 > len(entries):
            self._entries, self._head = entries[head:], 0
        else:
            self._head = head


class EvidenceRing:
    """The newest ``capacity`` matching signals by (``ts``, ``id``), ascending.

    Entries are ``(ts, id, arrival, raw)``; the per-runner arrival number
    keeps ties stable (input order) and keeps comparisons off the raw bytes.
    """

    __slots__ = ("capacity", "entries")

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self.entries: list[tuple[int, str, int, bytes]] = []

    def add(self, ts: int, id_: str, arrival: int, raw: bytes) -> None:
        """Keep the signal if it is among the newest ``capacity``."""
        entries = self.entries
        entry = (ts, id_, arrival, raw)
        if not entries or entry > entries[-1]:
            entries.append(entry)
        elif len(entries) >= self.capacity and entry < entries[0]:
            return
        else:
            insort(entries, entry)
        if len(entries) > self.capacity:
            del entries[0]

    def since(self, horizon: int | None) -> list[bytes]:
        """Raw envelopes with ``ts > horizon`` (all of them for ``None``), ascending."""
        if horizon is None:
            return [entry[3] for entry in self.entries]
        return [entry[3] for entry in self.entries if entry[0] > horizon]

    def clear(self) -> None:
        """Empty the ring (a bundle closed)."""
        self.entries = []
