"""A deliberately naive reference implementation of rules.md, for checking the engine.

Written from the spec text only (rules.md, alerts.md), never from the engine:
it shares no code with ``operators/`` (conditions, timestamps, alert ids and
records are all re-implemented here in the most literal way).

The naive parts are the point:

- every (site, rule) keeps, per fingerprint, the full list of signals that
  were applied to it, and every window is recomputed from that list;
- at every record routed to (site, rule) (after the late check and apply),
  *every* fingerprint is evaluated, in ascending ``group_json`` order;
- after the evaluation instant, every fingerprint that is not live is dropped
  (its state becomes a fresh one), exactly as "Bounded state" says.

Input: raw signal lines (bytes, already valid per signals.md) and
``schemas.rules.Rule`` objects. Output: the notification records as dicts in
the key order of alerts.md, without ``summary`` and ``link``, sorted in the
output order of cli.md, plus the set of line numbers that were late for at
least one rule they were routed to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim

ALLOWED_LATENESS_MS = 60_000


# --------------------------------------------------------------------------- time


def ts_to_ms(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` → epoch ms, fraction truncated to ms (signals.md)."""
    body = text[:-1]  # drop the Z
    whole, _, fraction = body.partition(".")
    moment = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    millis = int((fraction + "000")[:3]) if fraction else 0
    return int(moment.timestamp()) * 1000 + millis


def ms_to_ts(ms: int) -> str:
    """Epoch ms → the envelope's timestamp form, always with three fraction digits."""
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def next_run(schedule: str, timezone: str, last: int) -> int | None:
    """rules.md "Scheduled absence": ``last`` in the zone (ms precision), cronsim's first instant after it,
    skipping any that is not after ``last``; None when cronsim gives up."""
    zone = ZoneInfo(timezone)
    local = datetime.fromtimestamp(last // 1000, zone).replace(microsecond=(last % 1000) * 1000)
    for run in CronSim(schedule, local):
        instant = int(run.timestamp()) * 1000
        if instant > last:
            return instant
    return None


# --------------------------------------------------------------------------- conditions


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def one_test_holds(op: str, arg: Any, value: Any) -> bool:
    """One test of a condition. Absent or null fails every test but ne, not_in, exists: false."""
    if value is None:
        if op == "exists":
            return arg is False
        return op in ("ne", "not_in")
    if op == "exists":
        return arg is True
    if op == "eq":
        return bool(value == arg)
    if op == "ne":
        return bool(value != arg)
    if op == "in":
        return not isinstance(value, list) and value in arg
    if op == "not_in":
        return isinstance(value, list) or value not in arg
    if op == "gt":
        return _is_number(value) and value > arg
    if op == "gte":
        return _is_number(value) and value >= arg
    if op == "lt":
        return _is_number(value) and value < arg
    if op == "lte":
        return _is_number(value) and value <= arg
    if op == "prefix":
        return isinstance(value, str) and value.startswith(arg)
    if op == "contains":
        return isinstance(value, list) and arg in value
    raise ValueError(op)


def conditions_hold(conditions: dict[str, Any] | None, data: dict[str, Any]) -> bool:
    """All tests of a condition mapping hold (AND); no mapping means every signal."""
    for name, test in (conditions or {}).items():
        if isinstance(test, dict):
            ((op, arg),) = test.items()
        else:
            op, arg = "eq", test
        if not one_test_holds(op, arg, data.get(name)):
            return False
    return True


# --------------------------------------------------------------------------- records


@dataclass
class Sig:
    """One routed record: a signal or a tick."""

    line: int
    site: str
    type: str
    ts: int
    id: str
    data: dict[str, Any]
    envelope: Any


def read_line(raw: bytes, line: int) -> Sig:
    """A valid signal line as the reference sees it."""
    envelope = json.loads(raw)
    return Sig(line, envelope["site"], envelope["type"], ts_to_ms(envelope["ts"]), envelope["id"],
               envelope.get("data") or {}, envelope)


def compact(value: Any) -> str:
    """Compact JSON, non-ASCII not escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def make_group_json(group: dict[str, Any]) -> str:
    """The group as compact JSON, keys sorted (``{}`` without group_by)."""
    return compact({key: group[key] for key in sorted(group)})


def make_alert_id(rule_id: str, site: str, group_json: str, started_at: int, opener: str | None) -> str:
    """First 32 hex chars of SHA-256 of the episode's identity string (rules.md)."""
    text = rule_id + "\n" + site + "\n" + group_json + "\n" + ms_to_ts(started_at)
    if opener is not None:
        text += "\n" + opener
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# --------------------------------------------------------------------------- state


@dataclass
class Fp:
    """Everything one fingerprint remembers. A fresh Fp is the 'fresh state'."""

    group_json: str
    signals: list[Sig] = field(default_factory=list)  # every signal applied here, never pruned
    # stateful kinds
    state: str = "inactive"
    pending_since: int | None = None
    started_at: int | None = None
    alert_id: str | None = None
    seq: int = 0
    false_since: int | None = None
    # shared by stateful and match
    last_notified: int | None = None
    suppressed: int = 0
    # match bundles
    bundle: list[Sig] = field(default_factory=list)
    bundle_t0: int | None = None
    bundle_opener: Sig | None = None


def in_window(sig: Sig, c: int, length: int) -> bool:
    """Half-open window: ``c − W < ts ≤ c``."""
    return c - length < sig.ts <= c


def select_evidence(signals: list[Sig], limit: int) -> tuple[list[Any], int]:
    """The most recent ``limit`` by (ts, id), listed ascending, and the count before truncation."""
    ordered = sorted(signals, key=lambda sig: (sig.ts, sig.id))
    kept = ordered[-limit:] if len(ordered) > limit else ordered
    return [sig.envelope for sig in kept], len(ordered)


class RefRunner:
    """One (site, rule), evaluated the slow, literal way."""

    def __init__(self, rule: Any, site: str, lateness: int, emitted: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        self.rule = rule
        self.site = site
        self.lateness = lateness
        self.emitted = emitted
        self.clock: int | None = None
        self.first: int | None = None
        self.fps: dict[str, Fp] = {}
        params = rule.params
        self.kind: str = rule.kind
        self.window: int = getattr(params, "window", 0) if params is not None else 0
        self.overflow_json = make_group_json({name: "__other__" for name in rule.group_by})

    # ----------------------------------------------------------------- driver

    def process(self, sig: Sig) -> bool:
        """Late check, apply, evaluate every fingerprint, forget the dead. False when late."""
        if self.clock is not None and sig.ts <= self.clock - self.lateness:
            return False
        if self.clock is None:
            self.clock = sig.ts
            self.first = sig.ts
        else:
            self.clock = max(self.clock, sig.ts)
        c = self.clock
        if sig.type != "tick":
            self.apply(sig, c)
        for key in sorted(self.fps):
            self.evaluate(self.fps[key], c)
        for key in list(self.fps):
            if not self.live(self.fps[key], c):
                del self.fps[key]
        return True

    # ----------------------------------------------------------------- liveness

    def lookback(self) -> int:
        if self.kind == "shift":
            return self.rule.shift.window + self.rule.shift.baseline
        return self.window

    def live(self, fp: Fp, c: int) -> bool:
        """rules.md "Bounded state"."""
        if self.kind == "absence":
            return True  # armed from its first matching signal on, for good
        if self.kind == "match":
            if fp.bundle:
                return True
            if fp.last_notified is not None and c < fp.last_notified + self.rule.suppress:
                return True
            return fp.suppressed > 0
        if fp.state in ("pending", "firing"):
            return True
        return any(in_window(sig, c, self.lookback()) for sig in fp.signals)

    # ----------------------------------------------------------------- apply

    def apply(self, sig: Sig, c: int) -> None:
        rule = self.rule
        if self.kind == "ratio":
            if not conditions_hold(rule.ratio.of, sig.data):
                return
        elif not conditions_hold(rule.where, sig.data):
            return
        fp = self.fingerprint_for(sig, c)
        if self.kind == "match":
            self.apply_match(fp, sig, c)
        else:
            fp.signals.append(sig)

    def fingerprint_for(self, sig: Sig, c: int) -> Fp:
        key = make_group_json({name: sig.data.get(name) for name in self.rule.group_by})
        if key in self.fps:
            return self.fps[key]
        live = sum(1 for other, fp in self.fps.items() if other != self.overflow_json and self.live(fp, c))
        if live + 1 > self.rule.max_groups:
            key = self.overflow_json
            if key in self.fps:
                return self.fps[key]
        fp = self.fps[key] = Fp(key)
        return fp

    # ----------------------------------------------------------------- match

    def match_suppressed(self, fp: Fp, c: int) -> bool:
        return fp.last_notified is not None and c < fp.last_notified + self.rule.suppress

    def apply_match(self, fp: Fp, sig: Sig, c: int) -> None:
        bundle = self.rule.bundle or 0
        if bundle == 0:
            if self.match_suppressed(fp, c):
                fp.suppressed += 1
            else:
                self.emit_match(fp, [sig], sig.ts, sig.id, c)
            return
        if fp.bundle and fp.bundle_t0 is not None and sig.ts >= fp.bundle_t0 + bundle:
            self.close_bundle(fp, c)
        if not fp.bundle:
            fp.bundle = [sig]
            fp.bundle_t0 = sig.ts
            fp.bundle_opener = sig
        else:
            fp.bundle.append(sig)

    def close_bundle(self, fp: Fp, c: int) -> None:
        signals, t0, opener = fp.bundle, fp.bundle_t0, fp.bundle_opener
        assert t0 is not None and opener is not None
        fp.bundle, fp.bundle_t0, fp.bundle_opener = [], None, None
        if self.match_suppressed(fp, c):
            fp.suppressed += len(signals)
        else:
            self.emit_match(fp, signals, t0, opener.id, c)

    def emit_match(self, fp: Fp, signals: list[Sig], started_at: int, opener_id: str, c: int) -> None:
        alert = make_alert_id(self.rule.id, self.site, fp.group_json, started_at, opener_id)
        evidence, total = select_evidence(signals, self.rule.evidence)
        self.emit(fp, alert, 1, "firing", started_at, c, None, {"count": len(signals)}, fp.suppressed, evidence, total)
        fp.suppressed = 0
        fp.last_notified = c

    # ----------------------------------------------------------------- evaluation

    def evaluate(self, fp: Fp, c: int) -> None:
        if self.kind == "match":
            bundle = self.rule.bundle or 0
            if fp.bundle and fp.bundle_t0 is not None and c >= fp.bundle_t0 + bundle:
                self.close_bundle(fp, c)
            return
        rule = self.rule
        holds, value, evidence_signals = self.measure(fp, c)
        if fp.state == "inactive":
            if holds:
                fp.state = "pending"
                fp.pending_since = c
                if c - fp.pending_since >= rule.for_:
                    self.fire(fp, c, value, evidence_signals)
            return
        if fp.state == "pending":
            assert fp.pending_since is not None
            if not holds:
                fp.state = "inactive"
                fp.pending_since = None
            elif c - fp.pending_since >= rule.for_:
                self.fire(fp, c, value, evidence_signals)
            return
        # firing
        assert fp.last_notified is not None
        if holds:
            fp.false_since = None
            if rule.suppress > 0 and c >= fp.last_notified + rule.suppress:
                fp.seq += 1
                self.notify(fp, "firing", c, None, value, evidence_signals)
                fp.last_notified = c
            else:
                fp.suppressed += 1
            return
        if fp.false_since is None:
            fp.false_since = c
        if c - fp.false_since >= rule.resolve_after:
            fp.seq += 1
            self.notify(fp, "resolved", c, c, value, evidence_signals)
            fp.state = "inactive"
            fp.pending_since = fp.started_at = fp.alert_id = fp.false_since = fp.last_notified = None
            fp.seq = 0

    def fire(self, fp: Fp, c: int, value: dict[str, Any], evidence_signals: list[Sig]) -> None:
        assert fp.pending_since is not None
        fp.state = "firing"
        fp.started_at = fp.pending_since
        fp.alert_id = make_alert_id(self.rule.id, self.site, fp.group_json, fp.started_at, None)
        fp.seq = 1
        fp.false_since = None
        fp.suppressed = 0
        self.notify(fp, "firing", c, None, value, evidence_signals)
        fp.last_notified = c

    def notify(self, fp: Fp, status: str, c: int, ended: int | None, value: dict[str, Any], signals: list[Sig]) -> None:
        assert fp.alert_id is not None and fp.started_at is not None
        evidence, total = select_evidence(signals, self.rule.evidence)
        self.emit(fp, fp.alert_id, fp.seq, status, fp.started_at, c, ended, value, fp.suppressed, evidence, total)
        fp.suppressed = 0

    def measure(self, fp: Fp, c: int) -> tuple[bool, dict[str, Any], list[Sig]]:
        """The condition ``C`` at clock ``c``, the value object and the evidence candidates."""
        rule, kind = self.rule, self.kind
        if kind == "threshold":
            inside = [sig for sig in fp.signals if in_window(sig, c, rule.threshold.window)]
            return len(inside) >= rule.threshold.count, {"count": len(inside)}, inside
        if kind == "ratio":
            concerned = [sig for sig in fp.signals if in_window(sig, c, rule.ratio.window)]
            matching = [sig for sig in concerned if conditions_hold(rule.where, sig.data)]
            n, t = len(matching), len(concerned)
            holds = t >= rule.ratio.min_total and n / t >= rule.ratio.at_least
            ratio = round(n / t, 4) if t else 0.0
            return holds, {"count": n, "total": t, "ratio": ratio}, matching
        if kind == "distinct":
            inside = [sig for sig in fp.signals if in_window(sig, c, rule.distinct.window)]
            values = {compact(sig.data.get(rule.distinct.field)) for sig in inside if sig.data.get(rule.distinct.field) is not None}
            return len(values) >= rule.distinct.count, {"distinct": len(values), "count": len(inside)}, inside
        if kind == "absence":
            last = max(fp.signals, key=lambda sig: (sig.ts, sig.id))
            silent = c - last.ts
            if rule.absence.schedule is None:
                value = {"last_seen_at": ms_to_ts(last.ts), "silent_for_s": round(silent / 1000, 3)}
                return silent >= rule.absence.after, value, [last]
            expected = next_run(rule.absence.schedule, rule.absence.timezone or "UTC", last.ts)
            value = {"last_seen_at": ms_to_ts(last.ts), "expected_at": None if expected is None else ms_to_ts(expected),
                     "silent_for_s": round(silent / 1000, 3)}
            return expected is not None and c >= expected + rule.absence.grace, value, [last]
        if kind == "shift":
            p = rule.shift
            current = [sig for sig in fp.signals if c - p.window < sig.ts <= c]
            baseline = [sig for sig in fp.signals if c - p.window - p.baseline < sig.ts <= c - p.window]
            n, b = len(current), len(baseline)
            assert self.first is not None
            holds = c - self.first >= p.window + p.baseline and n >= p.min_count and n >= p.factor * b * p.window / p.baseline
            factor = round(n / max(b * p.window / p.baseline, 1e-9), 4)
            return holds, {"count": n, "baseline_count": b, "factor": factor}, current
        raise ValueError(kind)

    # ----------------------------------------------------------------- output

    def emit(self, fp: Fp, alert: str, seq: int, status: str, started_at: int, c: int, ended: int | None,
             value: dict[str, Any], suppressed: int, evidence: list[Any], total: int) -> None:
        rule = self.rule
        record = {
            "v": 1,
            "alert_id": alert,
            "seq": seq,
            "status": status,
            "rule": {"id": rule.id, "title": rule.title, "kind": rule.kind, "description": rule.description},
            "severity": rule.severity,
            "site": self.site,
            "subsystem": rule.subsystem,
            "group": json.loads(fp.group_json),
            "started_at": ms_to_ts(started_at),
            "evaluated_at": ms_to_ts(c),
            "ended_at": ms_to_ts(ended) if ended is not None else None,
            "value": value,
            "suppressed_count": suppressed,
            "evidence": evidence,
            "evidence_total": total,
            "deliver": list(rule.deliver),
        }
        key = (c, self.site, rule.id, fp.group_json, seq, alert)
        self.emitted.append((key, record))


class Reference:
    """All (site, rule) runners for a rule set; ``run`` replays raw lines in order."""

    def __init__(self, rules: list[Any], lateness: int = ALLOWED_LATENESS_MS) -> None:
        self.rules = sorted(rules, key=lambda rule: rule.id)
        self.lateness = lateness
        self.runners: dict[tuple[str, str], RefRunner] = {}
        self.emitted: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.late_lines: set[int] = set()

    def run(self, lines: list[bytes]) -> list[dict[str, Any]]:
        """Notification records (no summary, no link) in output order; line numbers start at 1."""
        for number, raw in enumerate(lines, start=1):
            sig = read_line(raw, number)
            for rule in self.rules:
                if sig.type != "tick" and sig.type not in rule.signal_types:
                    continue
                key = (sig.site, rule.id)
                if key not in self.runners:
                    self.runners[key] = RefRunner(rule, sig.site, self.lateness, self.emitted)
                if not self.runners[key].process(sig):
                    self.late_lines.add(number)
        # stable sort: ties keep emission order
        return [record for _, record in sorted(self.emitted, key=lambda item: item[0])]
