"""Per-fingerprint state for each rule kind.

A fingerprint knows its own window(s) and evidence; the lifecycle
(inactive → pending → firing → resolved) is driven by
:class:`operators.engine.RuleRunner`. Every class answers the same questions
at a clock ``c``: the condition, the value and evidence, whether it still
holds anything in its lookback, and the next clock at which its condition
could change without new signals (its deadline), which is what lets the
runner skip fingerprints whose outcome cannot change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from operators.windows import EvidenceRing, TimeCounts, ValueWindow
from schemas.timestamps import format_ts

if TYPE_CHECKING:
    from collections.abc import Callable

    from operators.compiled import CompiledRule
    from schemas.records import Record

INACTIVE, PENDING, FIRING = 0, 1, 2


def _min(*values: int | None) -> int | None:
    present = [value for value in values if value is not None]
    return min(present) if present else None


class Fingerprint:
    """Lifecycle state shared by the stateful kinds (threshold, ratio, distinct, absence, shift).

    Made without arguments (as every fingerprint and window can be), it is a
    blank that :mod:`operators.snapshot` fills with a snapshot's values: a class
    compiled by mypyc cannot be instantiated without running ``__init__``.
    """

    __slots__ = (
        "alert_id", "c_true", "deadline", "false_since", "group", "last_notified", "mark", "pending_since",
        "ring", "scheduled", "seq", "started_at", "state", "suppressed",
    )

    def __init__(self, group: str = "", rule: CompiledRule | None = None) -> None:
        self.group = group
        self.state = INACTIVE
        self.pending_since: int | None = None
        self.started_at = 0
        self.last_notified = 0
        self.false_since: int | None = None
        self.alert_id = ""
        self.seq = 0
        self.suppressed = 0
        self.mark = 0
        self.c_true = False
        self.scheduled: int | None = None  # the time of this fingerprint's live entry in its runner's heap
        self.deadline: int | None = None  # when its last evaluation said it must next be evaluated
        self.ring = EvidenceRing(0 if rule is None else rule.evidence)

    def end_episode(self) -> None:
        """Back to a fresh ``inactive`` lifecycle (windows are kept)."""
        self.state = INACTIVE
        self.pending_since = None
        self.false_since = None
        self.alert_id = ""
        self.seq = 0
        self.suppressed = 0

    # Kind-specific behaviour, overridden below.
    def add(self, record: Record, matching: bool, c: int, arrival: int, rule: CompiledRule) -> None:
        """Apply one signal that concerns this fingerprint."""
        raise NotImplementedError

    def settle(self, c: int, rule: CompiledRule, first: int) -> bool:
        """Drop what has left the lookback at clock ``c``; the kind's condition there (rules.md table).

        One call for both, because every evaluation needs both, in that order.
        """
        raise NotImplementedError

    def value(self, c: int, rule: CompiledRule) -> dict[str, Any]:
        """The numbers behind the decision at ``c``."""
        raise NotImplementedError

    def evidence(self, c: int, rule: CompiledRule) -> tuple[list[bytes], int]:
        """Evidence envelopes (raw) and ``evidence_total`` at ``c``."""
        raise NotImplementedError

    def holds_data(self, c: int, rule: CompiledRule) -> bool:
        """Whether a signal is inside the lookback at ``c`` (or the kind is always armed)."""
        raise NotImplementedError

    def next_change(self, c: int, rule: CompiledRule, first: int) -> int | None:
        """Earliest clock after ``c`` at which the condition could change with no new signal."""
        raise NotImplementedError

    def inactive_deadline(self, c: int, rule: CompiledRule, first: int) -> int | None:
        """For an inactive fingerprint just settled at ``c``: when it must next be evaluated with no new signal.

        That is when its (false) condition could turn true, or when it stops
        holding data and is forgotten; None when it holds no data already (it
        is forgotten now). Only that matters while inactive: a change from
        false to false emits nothing and moves no state, so a kind whose
        condition can only fall as signals expire waits for the last one to
        expire instead of being evaluated at every expiry.
        """
        return self.next_change(c, rule, first) if self.holds_data(c, rule) else None


class ThresholdFingerprint(Fingerprint):
    """``n ≥ count`` matching signals in ``(c − W, c]``."""

    __slots__ = ("counts",)

    def __init__(self, group: str = "", rule: CompiledRule | None = None) -> None:
        super().__init__(group, rule)
        self.counts = TimeCounts()

    @override
    def add(self, record: Record, matching: bool, c: int, arrival: int, rule: CompiledRule) -> None:
        if record.ts > c - rule.window:
            self.counts.add(record.ts)
            self.ring.add(record.ts, record.id, arrival, record.raw)

    @override
    def settle(self, c: int, rule: CompiledRule, first: int) -> bool:
        self.counts.drop(c - rule.window)
        return self.counts.total >= rule.params.count

    @override
    def value(self, c: int, rule: CompiledRule) -> dict[str, Any]:
        return {"count": self.counts.total}

    @override
    def evidence(self, c: int, rule: CompiledRule) -> tuple[list[bytes], int]:
        return self.ring.since(c - rule.window), self.counts.total

    @override
    def holds_data(self, c: int, rule: CompiledRule) -> bool:
        return self.counts.newer_than(c - rule.window)

    @override
    def next_change(self, c: int, rule: CompiledRule, first: int) -> int | None:
        return self.counts.next_expiry(rule.window)

    @override
    def inactive_deadline(self, c: int, rule: CompiledRule, first: int) -> int | None:
        # Expiry only lowers the count (and the distinct values): the condition cannot turn true.
        # Settled, every entry is inside the window: it holds data as long as it has any.
        newest = self.counts.newest()
        return None if newest is None else newest + rule.window


class RatioFingerprint(Fingerprint):
    """Share of matching signals among those that satisfy ``of``."""

    __slots__ = ("matching", "total")

    def __init__(self, group: str = "", rule: CompiledRule | None = None) -> None:
        super().__init__(group, rule)
        self.total = TimeCounts()
        self.matching = TimeCounts()

    @override
    def add(self, record: Record, matching: bool, c: int, arrival: int, rule: CompiledRule) -> None:
        if record.ts > c - rule.window:
            self.total.add(record.ts)
            if matching:
                self.matching.add(record.ts)
                self.ring.add(record.ts, record.id, arrival, record.raw)

    @override
    def settle(self, c: int, rule: CompiledRule, first: int) -> bool:
        horizon = c - rule.window
        self.total.drop(horizon)
        if self.matching.total:  # often empty: matching signals are the rare ones
            self.matching.drop(horizon)
        params = rule.params
        t = self.total.total
        return t >= params.min_total and self.matching.total / t >= params.at_least

    @override
    def value(self, c: int, rule: CompiledRule) -> dict[str, Any]:
        n, t = self.matching.total, self.total.total
        return {"count": n, "total": t, "ratio": round(n / t, 4) if t else 0.0}

    @override
    def evidence(self, c: int, rule: CompiledRule) -> tuple[list[bytes], int]:
        return self.ring.since(c - rule.window), self.matching.total

    @override
    def holds_data(self, c: int, rule: CompiledRule) -> bool:
        return self.total.newer_than(c - rule.window)

    @override
    def next_change(self, c: int, rule: CompiledRule, first: int) -> int | None:
        # Every matching entry is also a total entry, so the oldest total entry expires first.
        return self.total.next_expiry(rule.window)

    @override
    def inactive_deadline(self, c: int, rule: CompiledRule, first: int) -> int | None:
        if self.total.total >= rule.params.min_total:
            return self.next_change(c, rule, first)  # expiring non-matching signals can raise the ratio
        # Below min_total the total only falls as signals expire: the condition cannot turn true.
        # Settled, every entry is inside the window: it holds data as long as it has any.
        newest = self.total.newest()
        return None if newest is None else newest + rule.window


class DistinctFingerprint(ThresholdFingerprint):
    """Distinct non-null values of a field among matching signals in the window.

    The window of every matching signal (``value.count``, evidence, expiry) is a
    threshold fingerprint's; on top of it, a live count per distinct value.
    """

    __slots__ = ("values",)

    def __init__(self, group: str = "", rule: CompiledRule | None = None) -> None:
        super().__init__(group, rule)
        self.values = ValueWindow()

    @override
    def add(self, record: Record, matching: bool, c: int, arrival: int, rule: CompiledRule) -> None:
        super().add(record, matching, c, arrival, rule)
        if record.ts > c - rule.window:
            value = getattr(record.data, rule.params.field, None)
            if value is not None:
                # A list field (``flags``) is one value, compared as a whole; lists are not hashable.
                self.values.add(record.ts, tuple(value) if isinstance(value, list) else value)

    @override
    def settle(self, c: int, rule: CompiledRule, first: int) -> bool:
        horizon = c - rule.window
        self.counts.drop(horizon)
        self.values.expire(horizon)
        return len(self.values.counts) >= rule.params.count

    @override
    def value(self, c: int, rule: CompiledRule) -> dict[str, Any]:
        return {"distinct": len(self.values.counts), "count": self.counts.total}


class AbsenceFingerprint(Fingerprint):
    """Silence since the last matching signal; armed for good once one was seen."""

    __slots__ = ("last", "last_key", "last_raw")

    def __init__(self, group: str = "", rule: CompiledRule | None = None) -> None:
        super().__init__(group, rule)
        self.last = 0
        self.last_key: tuple[int, str, int] | None = None
        self.last_raw = b""

    @override
    def add(self, record: Record, matching: bool, c: int, arrival: int, rule: CompiledRule) -> None:
        key = (record.ts, record.id, arrival)
        if self.last_key is None or key > self.last_key:
            self.last_key = key
            self.last = record.ts
            self.last_raw = record.raw

    @override
    def settle(self, c: int, rule: CompiledRule, first: int) -> bool:
        return c - self.last >= rule.params.after

    @override
    def value(self, c: int, rule: CompiledRule) -> dict[str, Any]:
        return {"last_seen_at": format_ts(self.last), "silent_for_s": round((c - self.last) / 1000, 3)}

    @override
    def evidence(self, c: int, rule: CompiledRule) -> tuple[list[bytes], int]:
        return [self.last_raw], 1

    @override
    def holds_data(self, c: int, rule: CompiledRule) -> bool:
        return True

    @override
    def next_change(self, c: int, rule: CompiledRule, first: int) -> int | None:
        due = self.last + rule.params.after
        return due if due > c else None

    @override
    def inactive_deadline(self, c: int, rule: CompiledRule, first: int) -> int | None:
        return self.next_change(c, rule, first)  # always holds data


class ScheduledAbsenceFingerprint(AbsenceFingerprint):
    """Past the schedule's next run after ``last`` plus ``grace`` (rules.md "Scheduled absence").

    ``next(last)`` costs a cronsim search (about 0.1 ms, up to its 50 years for
    a schedule that matches almost never), so it is computed at most once per
    ``last``, and only when the silence since ``last`` has outlasted ``grace``:
    until then the condition is false whatever the schedule says, because the
    next run is a whole second strictly after ``last``. A rule whose signal
    arrives more often than ``grace`` never searches at all.
    """

    __slots__ = ("expected", "expected_for")

    def __init__(self, group: str = "", rule: CompiledRule | None = None) -> None:
        super().__init__(group, rule)
        self.expected: int | None = None  # next(expected_for); None: cronsim found no run
        self.expected_for: int | None = None  # the ``last`` ``expected`` was computed for

    def next_run(self, rule: CompiledRule) -> int | None:
        """``next(last)``, searched once per ``last``."""
        if self.expected_for != self.last:
            assert rule.schedule is not None
            self.expected = rule.schedule.next_run(self.last)
            self.expected_for = self.last
        return self.expected

    def _earliest(self) -> int:
        """The earliest ``next(last)`` can be: the whole second after ``last``."""
        return (self.last // 1000 + 1) * 1000

    @override
    def settle(self, c: int, rule: CompiledRule, first: int) -> bool:
        assert rule.schedule is not None
        grace = rule.schedule.grace
        if c < self._earliest() + grace:
            return False
        expected = self.next_run(rule)
        return expected is not None and c >= expected + grace

    @override
    def value(self, c: int, rule: CompiledRule) -> dict[str, Any]:
        expected = self.next_run(rule)
        return {
            "last_seen_at": format_ts(self.last),
            "expected_at": None if expected is None else format_ts(expected),
            "silent_for_s": round((c - self.last) / 1000, 3),
        }

    @override
    def next_change(self, c: int, rule: CompiledRule, first: int) -> int | None:
        assert rule.schedule is not None
        if self.expected_for == self.last:
            if self.expected is None:
                return None  # no run to wait for: false until a new ``last``
            due = self.expected + rule.schedule.grace
        else:
            due = self._earliest() + rule.schedule.grace  # not searched yet: look when it could first matter
        return due if due > c else None


def _absence(group: str, rule: CompiledRule) -> Fingerprint:
    """A fixed-silence or a scheduled absence fingerprint, as the rule says."""
    return AbsenceFingerprint(group, rule) if rule.schedule is None else ScheduledAbsenceFingerprint(group, rule)


class ShiftFingerprint(Fingerprint):
    """The current window against the baseline right before it."""

    __slots__ = ("baseline", "current")

    def __init__(self, group: str = "", rule: CompiledRule | None = None) -> None:
        super().__init__(group, rule)
        self.current = TimeCounts()
        self.baseline = TimeCounts()

    @override
    def add(self, record: Record, matching: bool, c: int, arrival: int, rule: CompiledRule) -> None:
        ts = record.ts
        if ts > c - rule.window:
            self.current.add(ts)
            self.ring.add(ts, record.id, arrival, record.raw)
        elif ts > c - rule.lookback:
            self.baseline.add(ts)

    @override
    def settle(self, c: int, rule: CompiledRule, first: int) -> bool:
        for ts, count in self.current.expire(c - rule.window):
            if ts > c - rule.lookback:
                self.baseline.add(ts, count)
        self.baseline.drop(c - rule.lookback)
        params = rule.params
        n, b = self.current.total, self.baseline.total
        if c - first < rule.lookback or n < params.min_count:
            return False
        return bool(n >= params.factor * b * (params.window / 1000) / (params.baseline / 1000))

    @override
    def value(self, c: int, rule: CompiledRule) -> dict[str, Any]:
        params = rule.params
        n, b = self.current.total, self.baseline.total
        expected = b * params.window / params.baseline
        return {"count": n, "baseline_count": b, "factor": round(n / max(expected, 1e-9), 4)}

    @override
    def evidence(self, c: int, rule: CompiledRule) -> tuple[list[bytes], int]:
        return self.ring.since(c - rule.window), self.current.total

    @override
    def holds_data(self, c: int, rule: CompiledRule) -> bool:
        newest = self.current.newest()
        if newest is None:
            newest = self.baseline.newest()
        return newest is not None and newest > c - rule.lookback

    @override
    def next_change(self, c: int, rule: CompiledRule, first: int) -> int | None:
        current, baseline = self.current.oldest(), self.baseline.oldest()
        gate = first + rule.lookback
        return _min(
            None if current is None else current + rule.window,
            None if baseline is None else baseline + rule.lookback,
            gate if gate > c else None,
        )


STATEFUL_KINDS: dict[str, Callable[[str, CompiledRule], Fingerprint]] = {
    "threshold": ThresholdFingerprint,
    "ratio": RatioFingerprint,
    "distinct": DistinctFingerprint,
    "absence": _absence,
    "shift": ShiftFingerprint,
}


class MatchFingerprint:
    """Event alerts: suppression memory and, with ``bundle``, the open burst."""

    __slots__ = ("bundle_size", "deadline", "group", "last_notified", "opener", "ring", "scheduled", "suppressed", "t0")

    def __init__(self, group: str = "", rule: CompiledRule | None = None) -> None:
        self.group = group
        self.last_notified: int | None = None
        self.suppressed = 0
        self.t0: int | None = None
        self.opener = ""
        self.bundle_size = 0
        self.ring = EvidenceRing(0 if rule is None else rule.evidence)
        self.scheduled: int | None = None  # as for Fingerprint
        self.deadline: int | None = None

    def silenced(self, c: int, rule: CompiledRule) -> bool:
        """Whether a notification at ``c`` falls inside the suppression window."""
        return self.last_notified is not None and c < self.last_notified + rule.suppress

    def live(self, c: int, rule: CompiledRule) -> bool:
        """Open bundle, suppression window running, or suppressed matches still to report."""
        return self.t0 is not None or self.silenced(c, rule) or self.suppressed > 0

    def next_change(self, c: int, rule: CompiledRule) -> int | None:
        """Bundle close, or the end of the suppression window (when it may be forgotten)."""
        close = self.t0 + rule.bundle if self.t0 is not None else None
        quiet = None
        if self.last_notified is not None and c < self.last_notified + rule.suppress:
            quiet = self.last_notified + rule.suppress
        return _min(close, quiet)
