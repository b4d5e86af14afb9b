"""The detection engine against rules.md, one state transition or precise point at a time.

Every scenario is spelled with explicit timestamps (seconds after 10:00:00 on
2026-11-28) and an ASCII timeline. ``run`` also replays each scenario through
the naive reference (``reference.py``), so the hand-checked expectations here
check the reference as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from reference import Reference

import operators
from operators.engine import RuleRunner
from operators.notification import decision_counts
from operators.site import Detector
from schemas.alerts import NotificationRecord
from schemas.factory import make_signal, make_tick, signal_line
from schemas.records import Record, parse_record
from schemas.rules import Rule
from schemas.timestamps import format_ts, parse_ts

T0 = 1_795_860_000_000  # 2026-11-28T10:00:00.000Z
SITE = "shop"


def at(seconds: float) -> int:
    """Epoch ms of ``seconds`` after T0."""
    return T0 + round(seconds * 1000)


def iso(seconds: float) -> str:
    return format_ts(at(seconds))


def rule(kind: str, **fields: Any) -> Rule:
    """A mail rule of ``kind``; ``for_`` stands for the YAML key ``for``."""
    doc: dict[str, Any] = {"id": f"{kind}-rule", "title": f"A {kind} rule", "severity": "high", "subsystem": "mail",
                           "signal": "mail", "kind": kind}
    if "for_" in fields:
        fields["for"] = fields.pop("for_")
    doc.update(fields)
    return Rule.model_validate(doc)


class Stream:
    """Signal lines in arrival order, with readable ids."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def add(self, envelope: dict[str, Any]) -> str:
        self.lines.append(signal_line(envelope).encode())
        return str(envelope["id"])

    def mail(self, seconds: float, id_: str | None = None, site: str = SITE, outcome: str = "failed",
             transport: str = "smtp", **extra: Any) -> str:
        id_ = id_ or f"mail-{len(self.lines):04d}"
        return self.add(make_signal(site, "mail", at(seconds), id_, outcome=outcome, transport=transport, **extra))

    def tick(self, seconds: float, site: str = SITE) -> None:
        self.add(make_tick(site, at(seconds)))

    def records(self) -> list[Record]:
        out = []
        for number, raw in enumerate(self.lines, start=1):
            parsed = parse_record(raw, number)
            assert isinstance(parsed, Record), parsed
            out.append(parsed)
        return out


def detect(rules: list[Rule], stream: Stream) -> tuple[list[dict[str, Any]], Detector]:
    """Engine records (full) and the detector; asserts each is valid and the reference agrees on every field but summary/link."""
    detector = Detector(rules)
    notifications = detector.run(stream.records())
    for notification in notifications:  # built unvalidated by the engine: what deliver accepts all the same
        NotificationRecord.model_validate_json(notification.to_json())
    records = [notification.record().model_dump() for notification in notifications]
    trimmed = [json.dumps({k: v for k, v in record.items() if k not in ("summary", "link")}, ensure_ascii=False)
               for record in records]
    reference = Reference(rules)
    expected = [json.dumps(record, ensure_ascii=False) for record in reference.run(stream.lines)]
    assert trimmed == expected, "engine and reference disagree"
    assert detector.late_lines == reference.late_lines
    return records, detector


def run(rules: list[Rule], stream: Stream) -> list[dict[str, Any]]:
    return detect(rules, stream)[0]


def secs(ts: str | None) -> float | None:
    return None if ts is None else (parse_ts(ts) - T0) / 1000


def brief(record: dict[str, Any]) -> dict[str, Any]:
    """The decision part of a record, times in seconds after T0, evidence as ids."""
    return {
        "status": record["status"], "seq": record["seq"], "started": secs(record["started_at"]),
        "at": secs(record["evaluated_at"]), "ended": secs(record["ended_at"]), "value": record["value"],
        "suppressed": record["suppressed_count"], "evidence": [e["id"] for e in record["evidence"]],
        "total": record["evidence_total"], "group": record["group"],
    }


def note(status: str, seq: int, started: float, at_: float, value: dict[str, Any], evidence: list[str],
         total: int | None = None, suppressed: int = 0, ended: float | None = None,
         group: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": status, "seq": seq, "started": started, "at": at_, "ended": ended, "value": value,
            "suppressed": suppressed, "evidence": evidence, "total": len(evidence) if total is None else total,
            "group": group or {}}


def sha_id(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------- threshold and the lifecycle


def test_threshold_inactive_to_firing_in_one_instant_full_record() -> None:
    # t:      0s   10s   20s
    # signal: a    b     c        threshold 3 in 30s, for 0s → inactive → pending → firing at 20s
    r = rule("threshold", threshold={"count": 3, "window": "30s"}, deliver=["oncall"], description="Too many.")
    s = Stream()
    ids = [s.mail(0), s.mail(10), s.mail(20)]
    records = run([r], s)
    alert = sha_id("threshold-rule", SITE, "{}", "2026-11-28T10:00:20.000Z")
    assert len(records) == 1
    record = records[0]
    assert list(record) == ["v", "alert_id", "seq", "status", "rule", "severity", "site", "subsystem", "group", "summary",
                            "started_at", "evaluated_at", "ended_at", "value", "suppressed_count", "evidence",
                            "evidence_total", "link", "deliver"]
    del record["summary"]
    assert record == {
        "v": 1, "alert_id": alert, "seq": 1, "status": "firing",
        "rule": {"id": "threshold-rule", "title": "A threshold rule", "kind": "threshold", "description": "Too many."},
        "severity": "high", "site": SITE, "subsystem": "mail", "group": {},
        "started_at": "2026-11-28T10:00:20.000Z", "evaluated_at": "2026-11-28T10:00:20.000Z", "ended_at": None,
        "value": {"count": 3}, "suppressed_count": 0,
        "evidence": [json.loads(line) for line in s.lines], "evidence_total": 3,
        "link": f"http://localhost:8080/alerts/{alert}", "deliver": ["oncall"],
    }
    assert [e["id"] for e in record["evidence"]] == ids


def test_window_is_half_open_a_signal_exactly_w_old_is_out() -> None:
    # t:      0s   10s                 threshold 2 in 10s
    # signal: a    b       → at c=10s the window is (0s, 10s]: a is out, no alert
    r = rule("threshold", threshold={"count": 2, "window": "10s"})
    s = Stream()
    s.mail(0)
    s.mail(10)
    assert run([r], s) == []
    # t:      0s   9.999s
    # signal: a    b       → a is still in (−0.001s, 9.999s]: fires at 9.999s
    s = Stream()
    a, b = s.mail(0), s.mail(9.999)
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 9.999, 9.999, {"count": 2}, [a, b])]


def test_pending_back_to_inactive_then_pending_to_firing_after_for() -> None:
    # t:      0s   1s    4s    11s     12s   13s    17s    18s
    # signal: a    b     .     .       c     d      .      .
    # tick:              T     T                    T      T
    # state:  -    pend  pend  inact   -     pend   pend   firing (18s − 13s ≥ for 5s)
    r = rule("threshold", threshold={"count": 2, "window": "10s"}, for_="5s")
    s = Stream()
    s.mail(0)
    s.mail(1)
    s.tick(4)
    s.tick(11)  # (1s, 11s] is empty: pending → inactive, nothing emitted
    c = s.mail(12)
    d = s.mail(13)
    s.tick(17)
    s.tick(18)
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 13, 18, {"count": 2}, [c, d])]


def _suppressed_renotifications() -> tuple[Any, Stream, tuple[Any, Any]]:
    """A threshold rule suppressed for 10s, signals a (0s) and b (4s), ticks to 20s: fired, then renotified twice."""
    r = rule("threshold", threshold={"count": 1, "window": "60s"}, suppress="10s")
    s = Stream()
    a = s.mail(0)
    s.tick(2)
    b = s.mail(4)
    for t in (6, 8, 10, 12, 20):
        s.tick(t)
    return r, s, (a, b)


def test_firing_renotifies_after_suppress_with_suppressed_count() -> None:
    # t:      0s    2s   4s   6s   8s   10s          12s   20s
    # signal: a     .    b    .    .    .            .     .
    # tick:         T         T    T    T            T     T
    # note:   fire  s    s    s    s    seq 2 (4 s)  s     seq 3 (1 s)        (s = suppressed evaluation)
    r, s, (a, b) = _suppressed_renotifications()
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 0, 0, {"count": 1}, [a]),
        note("firing", 2, 0, 10, {"count": 2}, [a, b], suppressed=4),
        note("firing", 3, 0, 20, {"count": 2}, [a, b], suppressed=1),
    ]


def test_each_notification_names_its_decision_and_suppressed_instants_are_counted_from_them() -> None:
    # The stream above, then a ticks past the window: fired, renotified twice, suppressed 4 + 1 + 2, resolved.
    r, s, _ = _suppressed_renotifications()
    for t in (25, 28, 70):
        s.tick(t)
    notifications = Detector([r]).run(s.records())
    assert [(n.reason, n.suppressed_count) for n in notifications] == [
        ("fired", 0), ("renotified", 4), ("renotified", 1), ("resolved", 2)]
    assert decision_counts([n.emitted() for n in notifications]) == {
        ("threshold-rule", "fired"): 1, ("threshold-rule", "renotified"): 2, ("threshold-rule", "resolved"): 1,
        ("threshold-rule", "suppressed"): 7}


def test_suppress_0s_never_renotifies_and_resolved_carries_the_count() -> None:
    # t:      0s    30m  60m  90m  120m  150m  180m
    # signal: a     .    .    .    .     .     .
    # tick:         T    T    T    T     T     T
    # note:   fire  s    s    s    s     s     resolved (a left the 3h window; 5 suppressed evaluations)
    r = rule("threshold", threshold={"count": 1, "window": "3h"}, suppress="0s")
    s = Stream()
    a = s.mail(0)
    for minutes in (30, 60, 90, 120, 150, 180):
        s.tick(minutes * 60)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 0, 0, {"count": 1}, [a]),
        note("resolved", 2, 0, 10800, {"count": 0}, [], suppressed=5, ended=10800),
    ]


def test_resolve_after_hysteresis_and_false_since_reset() -> None:
    # t:      0s    10s    12s    15s   17s   22s    26s   27s
    # signal: a     .      b      .     .     .      .     .
    # tick:         T             T     T     T      T     T
    # C:      T     F      T      T     T     F      F     F
    # note:   fire  fs=10  reset  s     s     fs=22  4s    resolved (5s ≥ resolve_after)
    # Without the reset at 12s it would have resolved at 15s.
    r = rule("threshold", threshold={"count": 1, "window": "10s"}, resolve_after="5s")
    s = Stream()
    a = s.mail(0)
    s.tick(10)
    s.mail(12)
    for t in (15, 17, 22, 26, 27):
        s.tick(t)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 0, 0, {"count": 1}, [a]),
        note("resolved", 2, 0, 27, {"count": 0}, [], suppressed=3, ended=27),
    ]


def test_late_is_ignored_and_late_but_allowed_enters_windows_without_moving_the_clock() -> None:
    # arrival: tick@100s  a@95s    x@40s  y@30s  b@41s            c@99s
    # clock:   100s       100s     100s   100s   100s             100s
    # kind:    -          allowed  late   late   allowed, out of  allowed → n = 2 in (90s, 100s]: fires at 100s
    #                                            the window
    r = rule("threshold", threshold={"count": 2, "window": "10s"})
    s = Stream()
    s.tick(100)
    a = s.mail(95)
    s.mail(40)  # exactly c − 60s: late
    s.mail(30)
    s.mail(41)
    c = s.mail(99)
    records, detector = detect([r], s)
    assert [brief(x) for x in records] == [note("firing", 1, 100, 100, {"count": 2}, [a, c])]
    assert detector.late_lines == {3, 4}


def test_late_records_change_nothing_not_even_suppressed_count() -> None:
    # arrival: a@100s  x@40s  y@30s  tick@40s  b@40.001s  tick@101s  tick@161s
    # note:    fire    late   late   late      s          s          resolved (2 suppressed, the late ones not counted)
    r = rule("threshold", threshold={"count": 1, "window": "60s"}, suppress="0s")
    s = Stream()
    a = s.mail(100)
    s.mail(40)
    s.mail(30)
    s.tick(40)
    s.mail(40.001)
    s.tick(101)
    s.tick(161)
    records, detector = detect([r], s)
    assert [brief(x) for x in records] == [
        note("firing", 1, 100, 100, {"count": 1}, [a]),
        note("resolved", 2, 100, 161, {"count": 0}, [], suppressed=2, ended=161),
    ]
    assert detector.late_lines == {2, 3, 4}


def test_a_signal_of_another_type_does_not_move_the_rules_clock() -> None:
    # mail rule, absence after 30s
    # arrival: a@0s (mail)  auth@100s (not routed)  tick@30s
    # The auth signal is not a record of this rule: tick@30s is not late and fires.
    r = rule("absence", absence={"after": "30s"})
    s = Stream()
    a = s.mail(0)
    s.add(make_signal(SITE, "auth", at(100), "auth-000001", outcome="failure", method="password"))
    s.tick(30)
    records = run([r], s)
    assert [brief(x) for x in records] == [
        note("firing", 1, 30, 30, {"last_seen_at": iso(0), "silent_for_s": 30.0}, [a]),
    ]


def test_sites_have_their_own_clocks() -> None:
    # site shop:  a@0s          tick@10s
    # site other:        tick@50s
    # threshold 1 in 10s, suppress 0s: shop resolves at its own tick@10s, not at other's 50s
    r = rule("threshold", threshold={"count": 1, "window": "10s"}, suppress="0s")
    s = Stream()
    a = s.mail(0)
    s.tick(50, site="other")
    s.tick(10)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 0, 0, {"count": 1}, [a]),
        note("resolved", 2, 0, 10, {"count": 0}, [], ended=10),
    ]


def test_fingerprints_at_one_instant_come_out_in_group_order() -> None:
    # t:         0s      0s
    # transport: smtp    api     threshold 1 → both fire at 0s; output sorted by group_json
    r = rule("threshold", threshold={"count": 1, "window": "10s"}, group_by=["transport"])
    s = Stream()
    smtp = s.mail(0, transport="smtp")
    api = s.mail(0, transport="api")
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 0, 0, {"count": 1}, [api], group={"transport": "api"}),
        note("firing", 1, 0, 0, {"count": 1}, [smtp], group={"transport": "smtp"}),
    ]


# ---------------------------------------------------------------------------- max_groups and bounded state


def test_max_groups_overflow_goes_to_the_other_group() -> None:
    # t:         0s   1s          2s
    # transport: a    b           c                  max_groups 1, threshold 2 in 10s
    # group:     a    __other__   __other__   → the overflow fingerprint fires at 2s
    r = rule("threshold", threshold={"count": 2, "window": "10s"}, group_by=["transport"], max_groups=1)
    s = Stream()
    s.mail(0, transport="a")
    b = s.mail(1, transport="b")
    c = s.mail(2, transport="c")
    records, detector = detect([r], s)
    other = {"transport": "__other__"}
    assert [brief(x) for x in records] == [note("firing", 1, 2, 2, {"count": 2}, [b, c], group=other)]
    assert records[0]["alert_id"] == sha_id("threshold-rule", SITE, '{"transport":"__other__"}', iso(2))
    assert set(detector.runners[(SITE, "threshold-rule")].fps) == {'{"transport":"a"}', '{"transport":"__other__"}'}


def test_a_forgotten_fingerprint_frees_its_slot() -> None:
    # t:         0s   5s          10s       11s   12s
    # transport: a    b           .         c     c
    # tick:                       T
    # group:     a    __other__   (a's signal is 10s old: a is forgotten)   c   c → fires under its own group
    r = rule("threshold", threshold={"count": 2, "window": "10s"}, group_by=["transport"], max_groups=1)
    s = Stream()
    s.mail(0, transport="a")
    s.mail(5, transport="b")
    s.tick(10)
    c1 = s.mail(11, transport="c")
    c2 = s.mail(12, transport="c")
    detector = Detector([r])
    records = s.records()
    for record in records[:3]:
        detector.process(record)
    assert '{"transport":"a"}' not in detector.runners[(SITE, "threshold-rule")].fps
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 12, 12, {"count": 2}, [c1, c2], group={"transport": "c"})]


def test_liveness_for_max_groups_is_judged_at_the_clock_the_record_sets() -> None:
    # t:         0s   10s   11s
    # transport: a    b     b          max_groups 1, threshold 2 in 10s
    # At c=10s (set by b itself) a's only signal is 10s old, so a is not live: b gets its own group.
    r = rule("threshold", threshold={"count": 2, "window": "10s"}, group_by=["transport"], max_groups=1)
    s = Stream()
    s.mail(0, transport="a")
    b1 = s.mail(10, transport="b")
    b2 = s.mail(11, transport="b")
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 11, 11, {"count": 2}, [b1, b2], group={"transport": "b"})]


def test_ratio_signals_outside_of_create_no_fingerprint() -> None:
    # t:         0s              1s
    # outcome:   deferred (a)    failed (b)      of: outcome ≠ deferred, max_groups 1
    # The deferred signal is ignored by the rule: b is not pushed to __other__.
    r = rule("ratio", where={"outcome": "failed"}, group_by=["transport"], max_groups=1,
             ratio={"of": {"outcome": {"ne": "deferred"}}, "at_least": 0.5, "min_total": 1, "window": "10s"})
    s = Stream()
    s.mail(0, outcome="deferred", transport="a")
    b = s.mail(1, transport="b")
    records, detector = detect([r], s)
    assert [brief(x) for x in records] == [
        note("firing", 1, 1, 1, {"count": 1, "total": 1, "ratio": 1.0}, [b], group={"transport": "b"}),
    ]
    assert set(detector.runners[(SITE, "ratio-rule")].fps) == {'{"transport":"b"}'}


def test_memory_follows_the_live_picture() -> None:
    # 200 groups, one signal each, then a tick 10s later: every threshold fingerprint is forgotten.
    r = rule("threshold", threshold={"count": 5, "window": "10s"}, group_by=["transport"])
    s = Stream()
    for n in range(200):
        s.mail(n / 100, transport=f"t{n}")
    s.tick(20)
    detector = Detector([r])
    runner = None
    for index, record in enumerate(s.records()):
        detector.process(record)
        runner = detector.runners[(SITE, "threshold-rule")]
        if index == 199:
            assert len(runner.fps) == 200
    assert runner is not None and runner.fps == {}


def test_memory_is_bounded_over_a_long_run() -> None:
    # 3000 signals over 50 minutes, each in its own group, window 10s: only the last ~10s stays.
    r = rule("threshold", threshold={"count": 2, "window": "10s"}, group_by=["transport"], evidence=3)
    s = Stream()
    for n in range(3000):
        s.mail(n, transport=f"t{n % 1000}")
    detector = Detector([r])
    biggest = 0
    for record in s.records():
        detector.process(record)
        biggest = max(biggest, len(detector.runners[(SITE, "threshold-rule")].fps))
    assert biggest <= 11


def test_match_fingerprint_is_forgotten_when_suppression_ends_unless_it_owes_a_count() -> None:
    # t:         0s   5s   20s (tick)        match, suppress 10s, group_by transport
    # transport: a    b
    # a notified at 0s and quiet since: forgotten at 20s; b notified at 5s: forgotten too.
    r = rule("match", group_by=["transport"], suppress="10s")
    s = Stream()
    s.mail(0, transport="a")
    s.mail(5, transport="b")
    s.mail(6, transport="b")  # suppressed: b owes a count of 1
    s.tick(20)
    detector = Detector([r])
    for record in s.records():
        detector.process(record)
    assert set(detector.runners[(SITE, "match-rule")].fps) == {'{"transport":"b"}'}


@pytest.mark.parametrize("max_groups", [10, 1000])
@pytest.mark.parametrize("kind", ["threshold", "match"])
def test_a_group_flood_checks_the_liveness_only_of_fingerprints_that_are_due(
    kind: str, max_groups: int, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
) -> None:
    # 4000 signals 4 ms apart, each from a new group: past max_groups for most of the run, and every
    # fingerprint stops being live 10s after its signal (threshold window, match suppression), freeing its slot.
    # Every such signal asks how many groups are live. Scanning them all would be max_groups liveness
    # checks per signal (3 million at 1000); the engine checks only the fingerprints that are due.
    if operators.NATIVE:
        # It counts calls through a patched method, which compiled code does not look up: this same test, on the
        # pure-Python engine, in a process of its own.
        result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", request.node.nodeid],
                                cwd=request.config.rootpath, env={**os.environ, "LOGYSTERA_PURE_PYTHON": "1"},
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:]
        return
    fields: dict[str, Any] = {"threshold": {"count": 2, "window": "10s"}} if kind == "threshold" else {"suppress": "10s"}
    r = rule(kind, group_by=["transport"], max_groups=max_groups, **fields)
    s = Stream()
    for n in range(4000):
        s.mail(n * 0.004, transport=f"t{n}")
    checks = 0
    live = RuleRunner._live

    def counted(runner: RuleRunner, fp: Any, c: int) -> bool:
        nonlocal checks
        checks += 1
        return live(runner, fp, c)

    monkeypatch.setattr(RuleRunner, "_live", counted)
    detector = Detector([r])
    runner = None
    most = 0
    overflow_used = False
    for index, record in enumerate(s.records()):
        before = checks
        detector.process(record)
        most = max(most, checks - before)
        runner = detector.runners[(SITE, r.id)]
        overflow_used = overflow_used or '{"transport":"__other__"}' in runner.fps
        assert len(runner.fps) <= max_groups + 1
        if index % 50 == 0:  # what makes the scan needless: every fingerprint held is live at the clock
            assert all(live(runner, fp, runner.clock) for fp in runner.fps.values())
    assert overflow_used
    assert 0 < checks <= 4000 and most <= 3


# ---------------------------------------------------------------------------- ratio, distinct, absence, shift


def test_ratio_fires_with_rounded_ratio_and_resolves_to_zero_when_t_is_zero() -> None:
    # t:       0s      1s     2s      12s
    # outcome: failed  sent   failed  (tick)      at_least 0.5, min_total 3, window 10s
    # note:                   fire 2/3            resolved: t = 0 → ratio 0.0
    r = rule("ratio", where={"outcome": "failed"}, ratio={"at_least": 0.5, "min_total": 3, "window": "10s"})
    s = Stream()
    a = s.mail(0)
    s.mail(1, outcome="sent")
    c = s.mail(2)
    s.tick(12)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 2, 2, {"count": 2, "total": 3, "ratio": 0.6667}, [a, c]),
        note("resolved", 2, 2, 12, {"count": 0, "total": 0, "ratio": 0.0}, [], ended=12),
    ]


def test_ratio_of_restricts_the_total() -> None:
    # t:       0s      1s        2s        3s
    # outcome: failed  deferred  deferred  sent     of: outcome in [sent, failed]; at_least 0.5, min_total 2
    # t counts only failed and sent: 1 of 2 = 0.5 at 3s (without `of` it would be 1 of 4)
    r = rule("ratio", where={"outcome": "failed"},
             ratio={"of": {"outcome": {"in": ["sent", "failed"]}}, "at_least": 0.5, "min_total": 2, "window": "60s"})
    s = Stream()
    a = s.mail(0)
    s.mail(1, outcome="deferred")
    s.mail(2, outcome="deferred")
    s.mail(3, outcome="sent")
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 3, 3, {"count": 1, "total": 2, "ratio": 0.5}, [a])]


def test_ratio_at_least_is_inclusive() -> None:
    # t:       0..2s sent ×3, 3..9s failed ×7    at_least 0.7, min_total 10: 7/10 ≥ 0.7 fires at 9s
    r = rule("ratio", where={"outcome": "failed"}, evidence=2, ratio={"at_least": 0.7, "min_total": 10, "window": "60s"})
    s = Stream()
    for t in range(3):
        s.mail(t, outcome="sent")
    failed = [s.mail(t) for t in range(3, 10)]
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 9, 9, {"count": 7, "total": 10, "ratio": 0.7}, failed[-2:], total=7)]
    # 6 of 10 does not fire
    s = Stream()
    for t in range(4):
        s.mail(t, outcome="sent")
    for t in range(4, 10):
        s.mail(t)
    assert run([r], s) == []


def test_distinct_counts_null_fields_in_count_but_not_in_distinct() -> None:
    # t:           0s    1s      2s   3s   4s
    # error_class: null  absent  x    x    y        distinct error_class ≥ 2 → fires at 4s: distinct 2, count 5
    r = rule("distinct", distinct={"field": "error_class", "count": 2, "window": "60s"})
    s = Stream()
    ids = [s.mail(0, error_class=None), s.mail(1), s.mail(2, error_class="x"), s.mail(3, error_class="x"),
           s.mail(4, error_class="y")]
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 4, 4, {"distinct": 2, "count": 5}, ids)]


def test_distinct_over_a_list_field_counts_whole_lists() -> None:
    # t:     0s           1s           2s                        3s
    # flags: [eval_call]  [eval_call]  [core_file, eval_call]    []      distinct flags ≥ 3
    # Each list is one value; the empty list is not null. Fires at 3s with 3 distinct of 4.
    r = Rule.model_validate({"id": "odd-flags", "title": "Odd flags", "severity": "low", "subsystem": "files",
                             "signal": "file_edit", "kind": "distinct",
                             "distinct": {"field": "flags", "count": 3, "window": "60s"}})
    s = Stream()
    ids = [s.add(make_signal(SITE, "file_edit", at(t), f"edit-{t:05d}", path="a.php", change="modified", size_delta=1,
                             flags=flags))
           for t, flags in enumerate([["eval_call"], ["eval_call"], ["core_file", "eval_call"], []])]
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 3, 3, {"distinct": 3, "count": 4}, ids)]


def test_absence_fires_through_ticks_alone_and_resolves_on_the_next_signal() -> None:
    # t:      0s   10s  20s  30s    40s  45s
    # signal: a    .    .    .      .    b
    # tick:        T    T    T      T
    # note:                  fire   s    resolved (silent 0s)         absence after 30s
    r = rule("absence", absence={"after": "30s"})
    s = Stream()
    a = s.mail(0)
    for t in (10, 20, 30, 40):
        s.tick(t)
    b = s.mail(45)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 30, 30, {"last_seen_at": iso(0), "silent_for_s": 30.0}, [a]),
        note("resolved", 2, 30, 45, {"last_seen_at": iso(45), "silent_for_s": 0.0}, [b], suppressed=1, ended=45),
    ]


def test_absence_needs_a_first_signal_and_rounds_silent_for_to_ms() -> None:
    # ticks only: never armed, never fires
    r = rule("absence", absence={"after": "30s"})
    s = Stream()
    for t in range(0, 200, 10):
        s.tick(t)
    assert run([r], s) == []
    # t:      0.25s   31.123s (tick)   → silent_for_s = 30.873
    s = Stream()
    a = s.mail(0.25)
    s.tick(31.123)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 31.123, 31.123, {"last_seen_at": iso(0.25), "silent_for_s": 30.873}, [a]),
    ]


def test_absence_evidence_is_the_last_signal_by_ts_then_id() -> None:
    # arrival: zz@10s  aa@10s  mm@5s (late-but-allowed)  tick@40s → evidence: zz (largest (ts, id))
    r = rule("absence", absence={"after": "30s"})
    s = Stream()
    zz = s.mail(10, id_="zz-000001")
    s.mail(10, id_="aa-000002")
    s.mail(5, id_="mm-000003")
    s.tick(40)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 40, 40, {"last_seen_at": iso(10), "silent_for_s": 30.0}, [zz]),
    ]


def test_shift_waits_for_window_plus_baseline_since_the_first_record() -> None:
    # t:      0s     25s  26s  27s   30s
    # signal: .      a    b    c     .          shift window 10s, baseline 20s, factor 2, min_count 2
    # tick:   T                      T
    # note:   first             (27s − 0s < 30s: gated)   fires at 30s: n=3, b=0
    r = rule("shift", shift={"window": "10s", "baseline": "20s", "factor": 2, "min_count": 2})
    s = Stream()
    s.tick(0)
    ids = [s.mail(25), s.mail(26), s.mail(27)]
    s.tick(30)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 30, 30, {"count": 3, "baseline_count": 0, "factor": 3000000000.0}, ids),
    ]


def test_shift_first_is_the_first_record_routed_to_the_rule() -> None:
    # arrival: auth@0s (not routed to this mail rule)  tick@5s (first = 5s)  a@30s b@31s c@32s  tick@35s
    # shift window 10s, baseline 20s, factor 2, min_count 2: gated until 5s + 30s = 35s
    # (had `first` been the site's first record, 0s, it would fire at 31s)
    r = rule("shift", shift={"window": "10s", "baseline": "20s", "factor": 2, "min_count": 2})
    s = Stream()
    s.add(make_signal(SITE, "auth", at(0), "auth-000001", outcome="failure", method="password"))
    s.tick(5)
    ids = [s.mail(30), s.mail(31), s.mail(32)]
    s.tick(35)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 35, 35, {"count": 3, "baseline_count": 0, "factor": 3000000000.0}, ids),
    ]


def test_shift_baseline_window_is_half_open_too() -> None:
    # t:      1s   2s   12s  13s  14s   21s
    # signal: a    b    c    d    e     .          shift window 10s, baseline 10s, factor 1.5, min_count 1
    # tick:                             T
    # at 21s: current (11s, 21s] = c d e → n 3; baseline (1s, 11s] = b → 1 (a is exactly out); 21s − 1s ≥ 20s
    r = rule("shift", shift={"window": "10s", "baseline": "10s", "factor": 1.5, "min_count": 1})
    s = Stream()
    s.mail(1)
    s.mail(2)
    ids = [s.mail(12), s.mail(13), s.mail(14)]
    s.tick(21)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 21, 21, {"count": 3, "baseline_count": 1, "factor": 3.0}, ids),
    ]


def test_shift_late_but_allowed_signals_enter_the_baseline() -> None:
    # arrival: tick@0s  tick@25s  a@10s b@11s c@12s   d@20s  e@21s   f@22s
    # window:                     (late-but-allowed:  (current window (15s, 25s])
    #                              baseline (5s, 15s])
    # shift window 10s, baseline 10s, factor 1, min_count 1: n ≥ b only once f arrives (3 ≥ 3)
    r = rule("shift", shift={"window": "10s", "baseline": "10s", "factor": 1, "min_count": 1})
    s = Stream()
    s.tick(0)
    s.tick(25)
    for t in (10, 11, 12):
        s.mail(t)
    ids = [s.mail(20), s.mail(21), s.mail(22)]
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 25, 25, {"count": 3, "baseline_count": 3, "factor": 1.0}, ids),
    ]


def test_shift_factor_is_rounded_to_4_decimals() -> None:
    # t:      0s   1s 2s 3s   12s 13s   20s
    # signal: .    a  b  c    d   e     .          window 10s, baseline 10s, factor 0.5: 2 ≥ 0.5 × 3
    # tick:   T                         T          factor 2/3 → 0.6667
    r = rule("shift", shift={"window": "10s", "baseline": "10s", "factor": 0.5, "min_count": 1})
    s = Stream()
    s.tick(0)
    for t in (1, 2, 3):
        s.mail(t)
    ids = [s.mail(12), s.mail(13)]
    s.tick(20)
    assert [brief(x) for x in run([r], s)] == [
        note("firing", 1, 20, 20, {"count": 2, "baseline_count": 3, "factor": 0.6667}, ids),
    ]


# ---------------------------------------------------------------------------- alert ids and evidence


def test_alert_id_formula_with_group_json_unescaped_and_sorted() -> None:
    # t:   0s   (transport é, error_class x)   threshold 1: fires at 0s
    r = rule("threshold", threshold={"count": 1, "window": "10s"}, group_by=["transport", "error_class"])
    s = Stream()
    s.mail(0, transport="é", error_class="x")
    records = run([r], s)
    text = "threshold-rule\nshop\n{\"error_class\":\"x\",\"transport\":\"é\"}\n2026-11-28T10:00:00.000Z"
    assert records[0]["alert_id"] == hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    assert list(records[0]["group"]) == ["error_class", "transport"]


def test_evidence_keeps_the_most_recent_n_by_ts_then_id_listed_ascending() -> None:
    # arrival: zz@5s  aa@5s  mm@3s  bb@4s         threshold 4 in 60s, evidence 2 → fires at the 4th
    # (ts, id) order: mm@3 bb@4 aa@5 zz@5 → kept: aa@5, zz@5; evidence_total 4
    r = rule("threshold", threshold={"count": 4, "window": "60s"}, evidence=2)
    s = Stream()
    s.mail(5, id_="zz-000001")
    s.mail(5, id_="aa-000002")
    s.mail(3, id_="mm-000003")
    s.mail(4, id_="bb-000004")
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 5, 5, {"count": 4}, ["aa-000002", "zz-000001"], total=4)]


# ---------------------------------------------------------------------------- match


def test_match_without_bundle_suppresses_then_carries_the_count() -> None:
    # t:      0s     3s    5s    10s                12s   20s
    # signal: a      b     c     d                  e     f                    match, suppress 10s
    # note:   emit   s     s     emit (2 carried)   s     emit (1 carried)
    r = rule("match", suppress="10s")
    s = Stream()
    a = s.mail(0)
    s.mail(3)
    s.mail(5)
    d = s.mail(10)
    s.mail(12)
    f = s.mail(20)
    records = run([r], s)
    assert [brief(x) for x in records] == [
        note("firing", 1, 0, 0, {"count": 1}, [a]),
        note("firing", 1, 10, 10, {"count": 1}, [d], suppressed=2),
        note("firing", 1, 20, 20, {"count": 1}, [f], suppressed=1),
    ]
    assert records[0]["alert_id"] == sha_id("match-rule", SITE, "{}", iso(0), a)
    assert records[1]["alert_id"] == sha_id("match-rule", SITE, "{}", iso(10), d)


def test_match_suppress_0s_notifies_every_signal_with_its_own_id() -> None:
    # t:      0s   0s   1s (sent: not matching)
    # signal: a    b    x                        match where outcome=failed, suppress 0s
    r = rule("match", where={"outcome": "failed"}, suppress="0s")
    s = Stream()
    a = s.mail(0)
    b = s.mail(0)
    s.mail(1, outcome="sent")
    records = run([r], s)
    assert sorted(x["alert_id"] for x in records) == sorted([sha_id("match-rule", SITE, "{}", iso(0), a),
                                                             sha_id("match-rule", SITE, "{}", iso(0), b)])
    assert sorted(x["evidence"][0]["id"] for x in records) == [a, b]


def test_match_started_at_is_the_signal_ts_when_late_but_allowed() -> None:
    # arrival: tick@100s  a@70s (late-but-allowed)  → started_at 70s, evaluated_at 100s
    r = rule("match")
    s = Stream()
    s.tick(100)
    a = s.mail(70)
    records = run([r], s)
    assert [brief(x) for x in records] == [note("firing", 1, 70, 100, {"count": 1}, [a])]
    assert records[0]["alert_id"] == sha_id("match-rule", SITE, "{}", iso(70), a)


def test_match_bundle_closes_on_a_later_signal_and_on_a_tick_and_suppressed_bundles_add_their_size() -> None:
    # t:      0s   3s   9.999s   10s                12s    20s (tick)          26s    36s (tick)
    # signal: a    b    c        d                  e      .                   f      .
    # bundle: open join join     close(a,b,c)+open  join   close → suppressed  open   close → emit, 2 carried
    # match, bundle 10s, suppress 15s, evidence 2
    r = rule("match", bundle="10s", suppress="15s", evidence=2)
    s = Stream()
    a = s.mail(0)
    b = s.mail(3)
    c = s.mail(9.999)
    s.mail(10)
    s.mail(12)
    s.tick(20)
    f = s.mail(26)
    s.tick(36)
    records = run([r], s)
    assert [brief(x) for x in records] == [
        note("firing", 1, 0, 10, {"count": 3}, [b, c], total=3),
        note("firing", 1, 26, 36, {"count": 1}, [f], suppressed=2),
    ]
    assert records[0]["alert_id"] == sha_id("match-rule", SITE, "{}", iso(0), a)
    assert records[1]["alert_id"] == sha_id("match-rule", SITE, "{}", iso(26), f)


def test_match_bundle_opened_by_a_late_but_allowed_signal_closes_at_once() -> None:
    # arrival: tick@100s  a@80s (late-but-allowed, opens a 10s bundle already due)  → closes at 100s
    r = rule("match", bundle="10s")
    s = Stream()
    s.tick(100)
    a = s.mail(80)
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 80, 100, {"count": 1}, [a])]


def test_match_ignores_for_and_resolve_after() -> None:
    # match rules have no pending or resolved state: for and resolve_after change nothing
    r = rule("match", for_="1h", resolve_after="1h", suppress="0s")
    s = Stream()
    a = s.mail(0)
    s.tick(7200)
    assert [brief(x) for x in run([r], s)] == [note("firing", 1, 0, 0, {"count": 1}, [a])]
