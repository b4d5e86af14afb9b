"""The detection engine: one :class:`RuleRunner` per (site, rule).

Given the records routed to a (site, rule) in order, a runner returns the
notifications rules.md defines, reading time only from the records' ``ts``.
Per record it does what the contract says — apply (clock, then the record's
own fingerprint), then evaluate every fingerprint at the new clock — but it
evaluates only the fingerprints whose outcome can change at that clock: the
record's own fingerprint and those whose deadline (next window expiry,
``for``, ``suppress`` or ``resolve_after`` timer; for an inactive one, the
first expiry that could make its condition true, or its last signal's,
after which it is forgotten) has come. Everything in between is accounted
for exactly, including ``suppressed_count``, which counts every evaluation
instant while an alert fires with its condition true. The same deadlines
bound the count of live fingerprints that ``max_groups`` needs: only a due
fingerprint can have stopped being live, so a flood of new group values past
the cap costs O(1) amortised per signal, not a scan of every fingerprint.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Any

from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS, CompiledRule, group_json
from operators.fingerprints import FIRING, INACTIVE, PENDING, STATEFUL_KINDS, Fingerprint, MatchFingerprint
from operators.notification import Decision, Notification, Notified, alert_id
from schemas.records import Record

AnyFingerprint = Fingerprint | MatchFingerprint
GROUP_CACHE_LIMIT = 4096


class RuleRunner:
    """State and evaluation for one (site, rule): clock, fingerprints, deadlines."""

    __slots__ = (
        "arrivals", "clock", "emitted", "first", "fps", "heap", "instant", "lateness", "registered", "rule", "site", "synced",
    )

    def __init__(self, rule: CompiledRule, site: str, lateness: int = DEFAULT_ALLOWED_LATENESS_MS) -> None:
        self.rule = rule
        self.site = site
        self.lateness = lateness
        self.clock: int | None = None
        self.first = 0
        self.instant = 0
        self.arrivals = 0
        self.emitted = 0
        self.fps: dict[str, AnyFingerprint] = {}
        self.heap: list[tuple[int, str]] = []
        self.synced = 0  # ticks absorbed lazily so far (see operators.site)
        self.registered: int | None = None  # the due time the site currently knows for this runner

    def process(self, record: Record, out: list[Notification]) -> bool:
        """Apply and evaluate one routed record; False when it was late (and ignored)."""
        ts = record.ts
        clock = self.clock
        if clock is None:
            self.clock = clock = self.first = ts
        elif ts <= clock - self.lateness:
            return False
        elif ts > clock:
            self.clock = clock = ts
        self.instant += 1
        touched = None
        if record.type != "tick":
            # Apply: a signal the rule's gate rejects is, for this rule, only an instant (like a tick).
            rule = self.rule
            data = record.data
            gate = rule.gate
            if gate is None or gate(data):
                group = self._group_of(data) if rule.group_fields else "{}"
                touched = self.fps.get(group) or self._new_fingerprint(group, clock)
                self.arrivals += 1
                if isinstance(touched, MatchFingerprint):
                    self._apply_match(touched, record, clock, out)
                else:
                    ratio_matches = rule.ratio_matches
                    touched.add(record, ratio_matches is None or ratio_matches(data), clock, self.arrivals, rule)
        heap = self.heap
        if heap and heap[0][0] <= clock:
            self._evaluate(clock, touched, out)
        elif touched is not None:  # nothing is due: only the record's own fingerprint can change (the common case)
            self._evaluate_one(touched, clock, out)
        return True

    def catch_up(self, ticks: int, latest: int) -> None:
        """Count the tick instants absorbed by the site since ``synced``: ``ticks`` so far, the latest at ``latest``.

        A tick that is not late and reaches no deadline only moves the clock and
        counts as an evaluation instant; :class:`operators.site.SiteDetector`
        applies such ticks in bulk when the runner is next needed.
        """
        self.instant += ticks - self.synced
        self.synced = ticks
        if self.clock is None or latest > self.clock:
            self.clock = latest

    def evaluate_due(self, out: list[Notification]) -> None:
        """Evaluate the fingerprints whose deadline the clock has reached (after absorbing ticks)."""
        assert self.clock is not None
        self._evaluate(self.clock, None, out)

    # -- apply -----------------------------------------------------------------------------
    def _group_of(self, data: Any) -> str:
        """The group JSON of a payload (for a rule with ``group_by``)."""
        fields = self.rule.group_fields
        values = (getattr(data, fields[0], None),) if len(fields) == 1 else tuple(getattr(data, name, None) for name in fields)
        cache = self.rule.group_cache  # group_json is a pure function of the values: share it per rule
        try:
            group = cache.get(values)
        except TypeError:  # a list (`flags`): not hashable, not cached
            return group_json(dict(zip(fields, values, strict=True)))
        if group is None:
            if len(cache) >= GROUP_CACHE_LIMIT:
                cache.clear()
            group = cache[values] = group_json(dict(zip(fields, values, strict=True)))
        return group

    def _new_fingerprint(self, group: str, c: int) -> AnyFingerprint:
        """A fingerprint for a group that has none: a new one, or the overflow group's once ``max_groups`` are live."""
        fps = self.fps
        rule = self.rule
        if group != rule.overflow_json and self._live_groups(c) >= rule.max_groups:
            group = rule.overflow_json
            fp = fps.get(group)
            if fp is not None:
                return fp
        fp = MatchFingerprint(group, rule) if rule.kind == "match" else STATEFUL_KINDS[rule.kind](group, rule)
        if isinstance(fp, Fingerprint):
            fp.mark = self.instant
        fps[group] = fp
        return fp

    def _live_groups(self, c: int) -> int:
        """Live fingerprints (overflow excluded) at clock ``c``; forgets the ones no longer live.

        Only the count matters, and only once it reaches ``max_groups``; then
        :meth:`_forget_due` finds every fingerprint that stopped being live
        without looking at the others.
        """
        fps = self.fps
        overflow = self.rule.overflow_json
        count = len(fps) - (overflow in fps)
        if count < self.rule.max_groups:
            return count
        heap = self.heap
        if heap and heap[0][0] <= c:
            self._forget_due(c)
            count = len(fps) - (overflow in fps)
        return count

    def _forget_due(self, c: int) -> None:
        """Forget the fingerprints (overflow excluded) that are not live at ``c``, looking only at those due.

        A fingerprint's deadline is never later than the clock at which it
        stops being live with no new signal (an inactive one is due at the
        latest when its newest signal leaves the lookback, a match one when its
        suppression ends; a pending or firing one, an absence one, or one with
        no deadline stays live until it is next evaluated), and its heap entry
        is never later than its deadline. So a fingerprint not live at ``c`` has its entry among those
        at or before ``c``: the top of the heap, walked without popping, since
        the evaluation of this instant pops them all right after. Each entry is
        looked at in at most one instant: O(1) amortised per signal, however
        many groups a flood brings. Forgetting a fingerprint that is not live
        now is the same as after the instant: inactive with nothing in its
        lookback (or a match one with nothing pending), its evaluation at ``c``
        could emit nothing.
        """
        heap, fps, overflow = self.heap, self.fps, self.rule.overflow_json
        size = len(heap)
        stack = [0]
        while stack:
            index = stack.pop()
            when, group = heap[index]
            if when > c:
                continue  # and so are all the entries below it
            fp = fps.get(group)
            if fp is not None and fp.scheduled == when and group != overflow and not self._live(fp, c):
                del fps[group]
            child = 2 * index + 1
            if child < size:
                stack.append(child)
                if child + 1 < size:
                    stack.append(child + 1)

    def _live(self, fp: AnyFingerprint, c: int) -> bool:
        if isinstance(fp, MatchFingerprint):
            return fp.live(c, self.rule)
        return fp.state != INACTIVE or fp.holds_data(c, self.rule)

    def _apply_match(self, fp: MatchFingerprint, record: Record, c: int, out: list[Notification]) -> None:
        rule = self.rule
        if not rule.bundle:
            if fp.silenced(c, rule):
                fp.suppressed += 1  # suppressed: counted in the next notification's suppressed_count
                return
            self._emit(
                out, fp, reason="fired", alert=alert_id(rule.id, self.site, fp.group, record.ts, record.id), seq=1,
                started_at=record.ts, evaluated_at=c, value={"count": 1}, evidence=[record.raw], evidence_total=1,
            )
            return
        if fp.t0 is not None and record.ts >= fp.t0 + rule.bundle:
            self._close_bundle(fp, c, out)
        if fp.t0 is None:
            fp.t0 = record.ts
            fp.opener = record.id
            fp.bundle_size = 0
        fp.bundle_size += 1
        fp.ring.add(record.ts, record.id, self.arrivals, record.raw)

    def _close_bundle(self, fp: MatchFingerprint, c: int, out: list[Notification]) -> None:
        rule = self.rule
        assert fp.t0 is not None
        if fp.silenced(c, rule):
            fp.suppressed += fp.bundle_size  # suppressed, every signal of the bundle
        else:
            self._emit(
                out, fp, reason="fired", alert=alert_id(rule.id, self.site, fp.group, fp.t0, fp.opener), seq=1,
                started_at=fp.t0, evaluated_at=c, value={"count": fp.bundle_size}, evidence=fp.ring.since(None),
                evidence_total=fp.bundle_size,
            )
        fp.t0 = None
        fp.bundle_size = 0
        fp.ring.clear()

    # -- evaluate ----------------------------------------------------------------------------
    def _evaluate(self, c: int, touched: AnyFingerprint | None, out: list[Notification]) -> None:
        """Evaluate ``touched`` and every fingerprint whose deadline ``c`` has reached, in group order."""
        heap, fps = self.heap, self.fps
        due: list[AnyFingerprint] = []
        while heap and heap[0][0] <= c:
            when, group = heappop(heap)
            fp = fps.get(group)
            if fp is None or fp.scheduled != when:
                continue  # forgotten, or superseded by an earlier entry
            deadline = fp.deadline
            if deadline is not None and deadline > c:
                # Evaluated since this entry was pushed, and then nothing could change before ``deadline``
                # (a deadline that moves later is not pushed at once: the earlier entry comes first).
                fp.scheduled = deadline
                heappush(heap, (deadline, group))
            else:
                fp.scheduled = None
                due.append(fp)
        if touched is not None and all(fp is not touched for fp in due):
            due.append(touched)
        if len(due) > 1:
            due.sort(key=lambda fp: fp.group)
        for fp in due:
            self._evaluate_one(fp, c, out)

    def _evaluate_one(self, fp: AnyFingerprint, c: int, out: list[Notification]) -> None:
        """Evaluate one fingerprint at ``c``, then forget it or schedule its next deadline.

        This runs for nearly every signal; the stateful kinds' usual outcome —
        inactive before and after — is written out here, the transitions are
        in :meth:`_transition`.
        """
        rule = self.rule
        deadline: int | None
        if isinstance(fp, MatchFingerprint):
            if fp.t0 is not None and c >= fp.t0 + rule.bundle:
                self._close_bundle(fp, c, out)
            deadline = fp.next_change(c, rule)
            live = fp.live(c, rule)
        else:
            state = fp.state
            if state == FIRING and fp.c_true:
                # Instants skipped since the last evaluation: firing, condition true, nothing emitted.
                fp.suppressed += self.instant - fp.mark - 1
            fp.mark = self.instant
            holds = fp.c_true = fp.settle(c, rule, self.first)
            if holds or state != INACTIVE:
                decision = self._transition(fp, holds, c)
                if decision == "suppressed":
                    fp.suppressed += 1  # counted in the next notification's suppressed_count
                elif decision is not None:
                    self._notify(fp, decision, c, out)
            if fp.state == INACTIVE:
                deadline = fp.inactive_deadline(c, rule, self.first)
                # No deadline: nothing left in its lookback (forget it), or a scheduled absence with no run ahead.
                live = deadline is not None or fp.holds_data(c, rule)
            else:
                live = True
                deadline = self._deadline(fp, c)
        if not live:
            del self.fps[fp.group]
            return
        fp.deadline = deadline
        if deadline is not None and (fp.scheduled is None or deadline < fp.scheduled):
            fp.scheduled = deadline
            heappush(self.heap, (deadline, fp.group))

    def _transition(self, fp: Fingerprint, holds: bool, c: int) -> Decision | None:
        """The lifecycle step of rules.md for a fingerprint whose condition at ``c`` is ``holds``.

        Moves the state and returns the decision for a firing alert (None
        when nothing fires: inactive or pending); the caller notifies or
        counts the suppressed instant, so the decision is named in one place.
        """
        rule = self.rule
        state = fp.state
        if state == INACTIVE:
            if not holds:
                return None
            fp.state = PENDING
            fp.pending_since = c
            return self._fire(fp) if rule.for_ms == 0 else None
        if state == PENDING:
            assert fp.pending_since is not None
            if not holds:
                fp.state = INACTIVE
                fp.pending_since = None
                return None
            return self._fire(fp) if c - fp.pending_since >= rule.for_ms else None
        if holds:
            fp.false_since = None
            if rule.suppress > 0 and c >= fp.last_notified + rule.suppress:
                fp.seq += 1
                return "renotified"
            return "suppressed"
        if fp.false_since is None:
            fp.false_since = c
        if c - fp.false_since >= rule.resolve_after:
            fp.seq += 1
            return "resolved"
        return None

    def _fire(self, fp: Fingerprint) -> Notified:
        """A pending fingerprint starts its episode."""
        assert fp.pending_since is not None
        fp.state = FIRING
        fp.started_at = fp.pending_since
        fp.alert_id = alert_id(self.rule.id, self.site, fp.group, fp.started_at)
        fp.seq = 1
        fp.false_since = None
        fp.suppressed = 0
        return "fired"

    def _notify(self, fp: Fingerprint, reason: Notified, c: int, out: list[Notification]) -> None:
        rule = self.rule
        evidence, total = fp.evidence(c, rule)
        self._emit(
            out, fp, reason=reason, alert=fp.alert_id, seq=fp.seq, started_at=fp.started_at, evaluated_at=c,
            value=fp.value(c, rule), evidence=evidence, evidence_total=total,
        )
        if reason == "resolved":
            fp.end_episode()

    def _deadline(self, fp: Fingerprint, c: int) -> int | None:
        """When a pending or firing ``fp`` must next be evaluated with no new signal.

        The earliest of the window's next change and the lifecycle's running
        timer (``for``, ``suppress``, ``resolve_after``).
        """
        rule = self.rule
        state = fp.state
        change = fp.next_change(c, rule, self.first)
        if state == PENDING and fp.pending_since is not None:
            timer = fp.pending_since + rule.for_ms
        elif state != FIRING:
            return change
        elif fp.c_true and rule.suppress > 0:
            timer = fp.last_notified + rule.suppress
        elif fp.false_since is not None:
            timer = fp.false_since + rule.resolve_after
        else:
            return change
        return timer if change is None or timer < change else change

    def _emit(
        self, out: list[Notification], fp: AnyFingerprint, *, reason: Notified, alert: str, seq: int, started_at: int,
        evaluated_at: int, value: dict[str, Any], evidence: list[bytes], evidence_total: int,
    ) -> None:
        """Append the notification ``fp`` gets at ``evaluated_at``; it reports (and resets) the instants suppressed since the last."""
        self.emitted += 1
        out.append(Notification(
            rule=self.rule, site=self.site, group_json=fp.group, alert_id=alert, seq=seq, reason=reason,
            started_at=started_at, evaluated_at=evaluated_at, value=value, suppressed_count=fp.suppressed,
            evidence=evidence, evidence_total=evidence_total, order=self.emitted,
        ))
        fp.last_notified = evaluated_at
        fp.suppressed = 0
