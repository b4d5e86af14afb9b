"""Scheduled absence (rules.md "Scheduled absence"), one timeline at a time.

Each scenario is a cron job's runs and the gateway's ticks with explicit UTC
timestamps; the comments give the local time of the rule's zone. ``detect``
(from test_engine) also replays every scenario through the naive reference,
so these hand-checked expectations check the reference too.

Berlin is UTC+1 in winter (CET) and UTC+2 in summer (CEST). In 2026 the
clocks go forward on Sun 29 Mar at 01:00Z (02:00 CET → 03:00 CEST: local
02:00–03:00 does not exist) and back on Sun 25 Oct at 01:00Z (03:00 CEST →
02:00 CET: local 02:00–03:00 happens twice).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import Stream, detect
from test_engine_vs_reference import BASE_MS, check_same, rule_sets, streams

from schemas.factory import make_signal, make_tick, signal_line
from schemas.rules import Rule
from schemas.timestamps import format_ts, parse_ts, parse_ts_checked

SITE = "shop"


def ms(text: str) -> int:
    """Epoch ms of a ``YYYY-MM-DDTHH:MM:SS[.fff]`` UTC time (the ``Z`` is added here)."""
    return parse_ts_checked(text + "Z")


def iso(text: str) -> str:
    """The envelope spelling of a UTC time given without fraction or ``Z``."""
    return text + ".000Z" if "." not in text else text + "Z"


def cron_rule(absence: dict[str, Any], **fields: Any) -> Rule:
    """A per-job absence rule on finished runs and heartbeats; ``for_`` stands for ``for``."""
    doc: dict[str, Any] = {
        "id": "job-late", "title": "A scheduled job is late", "severity": "high", "subsystem": "cron",
        "signal": "cron", "where": {"event": {"in": ["finished", "heartbeat"]}}, "group_by": ["job"],
        "kind": "absence", "absence": absence,
    }
    if "for_" in fields:
        fields["for"] = fields.pop("for_")
    doc.update(fields)
    return Rule.model_validate(doc)


class Jobs(Stream):
    """Cron runs and ticks of one site."""

    def run(self, when: str, job: str = "backup", event: str = "finished") -> str:
        return self.add(make_signal(SITE, "cron", ms(when), f"run-{len(self.lines):04d}", job=job, event=event))

    def ticks(self, *whens: str) -> None:
        for when in whens:
            self.add(make_tick(SITE, ms(when)))


def brief(record: dict[str, Any]) -> tuple[Any, ...]:
    """(status, seq, started_at, evaluated_at, value, suppressed_count, evidence ids)."""
    return (record["status"], record["seq"], record["started_at"], record["evaluated_at"], record["value"],
            record["suppressed_count"], [e["id"] for e in record["evidence"]])


def value(last: str, expected: str | None, silent: float) -> dict[str, Any]:
    return {"last_seen_at": iso(last), "expected_at": None if expected is None else iso(expected), "silent_for_s": silent}


WEEKDAYS_9 = {"schedule": "0 9 * * mon-fri", "timezone": "Europe/Berlin", "grace": "30m"}


def test_a_weekday_job_is_not_late_over_the_weekend_and_is_on_tuesday() -> None:
    # Fri 27 Nov 09:00 CET  run                       (08:00Z)
    # Sat, Sun, Mon 08:59   ticks: no run is due until Mon 09:00 → nothing, however long the silence
    # Mon 30 Nov 09:00:20   run (Monday's)
    # Tue 1 Dec 09:29:59    tick: Tuesday's run is missing, grace not over yet
    # Tue 1 Dec 09:30:00    tick: fires (expected Tue 09:00, 30m grace)
    # Tue 1 Dec 12:00       tick: still firing, suppressed (suppress 1d)
    # Wed 2 Dec 09:00:05    run: last moves past the missed run → resolved at once
    r = cron_rule(WEEKDAYS_9, suppress="1d")
    s = Jobs()
    s.run("2026-11-27T08:00:00")
    s.ticks("2026-11-28T08:30:00", "2026-11-28T20:00:00", "2026-11-29T08:30:00", "2026-11-30T07:59:59")
    monday = s.run("2026-11-30T08:00:20")
    s.ticks("2026-11-30T08:31:00", "2026-12-01T08:29:59", "2026-12-01T08:30:00", "2026-12-01T11:00:00")
    wednesday = s.run("2026-12-02T08:00:05")
    records, _ = detect([r], s)
    assert [brief(x) for x in records] == [
        ("firing", 1, iso("2026-12-01T08:30:00"), iso("2026-12-01T08:30:00"),
         value("2026-11-30T08:00:20", "2026-12-01T08:00:00", 88180.0), 0, [monday]),
        ("resolved", 2, iso("2026-12-01T08:30:00"), iso("2026-12-02T08:00:05"),
         value("2026-12-02T08:00:05", "2026-12-03T08:00:00", 0.0), 1, [wednesday]),
    ]
    assert records[0]["summary"] == (
        "no matching cron signal since Mon 30 Nov 09:00 (expected Tue 1 Dec 09:00 Europe/Berlin, 30m grace) (job=backup)"
    )
    assert records[1]["summary"] == (
        "Resolved: matching cron signal seen at Wed 2 Dec 09:00 Europe/Berlin (next run expected Thu 3 Dec 09:00) (job=backup)"
    )


def test_friday_missing_is_noticed_friday_not_after_the_weekend() -> None:
    # Thu 26 Nov 09:00 run; Fri 27 Nov 09:30 CET (08:30Z): Friday's run is missing → fires on Friday.
    r = cron_rule(WEEKDAYS_9)
    s = Jobs()
    thursday = s.run("2026-11-26T08:00:00")
    s.ticks("2026-11-27T08:29:00", "2026-11-27T08:30:00")
    assert [brief(x) for x in detect([r], s)[0]] == [
        ("firing", 1, iso("2026-11-27T08:30:00"), iso("2026-11-27T08:30:00"),
         value("2026-11-26T08:00:00", "2026-11-27T08:00:00", 88200.0), 0, [thursday]),
    ]


NIGHTLY_0230 = {"schedule": "30 2 * * *", "timezone": "Europe/Berlin", "grace": "10m"}


def test_spring_forward_a_run_at_a_local_time_that_does_not_exist_is_expected_at_0300() -> None:
    # Sat 28 Mar 02:30 CET run (01:30Z). Sun 29 Mar has no 02:30: cronsim expects the run at 03:00 CEST (01:00Z),
    # so the alert comes at 03:10 CEST (01:10Z). A late run at 03:20 CEST resolves it; Monday's run is at 02:30 CEST.
    r = cron_rule(NIGHTLY_0230)
    s = Jobs()
    saturday = s.run("2026-03-28T01:30:00")
    s.ticks("2026-03-29T00:40:00", "2026-03-29T01:09:59", "2026-03-29T01:10:00")
    late = s.run("2026-03-29T01:20:00")
    assert [brief(x) for x in detect([r], s)[0]] == [
        ("firing", 1, iso("2026-03-29T01:10:00"), iso("2026-03-29T01:10:00"),
         value("2026-03-28T01:30:00", "2026-03-29T01:00:00", 85200.0), 0, [saturday]),
        ("resolved", 2, iso("2026-03-29T01:10:00"), iso("2026-03-29T01:20:00"),
         value("2026-03-29T01:20:00", "2026-03-30T00:30:00", 0.0), 0, [late]),
    ]


def test_spring_forward_a_job_that_ran_at_0300_is_on_time() -> None:
    r = cron_rule(NIGHTLY_0230)
    s = Jobs()
    s.run("2026-03-28T01:30:00")
    s.run("2026-03-29T01:00:05")  # 03:00:05 CEST, as cron ran it
    s.ticks("2026-03-29T01:10:00", "2026-03-30T00:39:59")  # Mon 02:39:59 CEST: before Monday's 02:30 + 10m
    assert detect([r], s)[0] == []


def test_fall_back_the_repeated_0230_is_expected_once_at_its_first_pass() -> None:
    # Sat 24 Oct 02:30 CEST run (00:30Z). Sun 25 Oct: 02:30 happens at 00:30Z (CEST) and again at 01:30Z (CET);
    # cronsim expects the first pass. The job runs at the first pass; the second pass is not a run to wait for:
    # nothing is due until Mon 26 Oct 02:30 CET (01:30Z).
    r = cron_rule(NIGHTLY_0230)
    s = Jobs()
    s.run("2026-10-24T00:30:00")
    sunday = s.run("2026-10-25T00:30:02")
    s.ticks("2026-10-25T01:40:00", "2026-10-25T23:00:00", "2026-10-26T01:39:59", "2026-10-26T01:40:00")
    assert [brief(x) for x in detect([r], s)[0]] == [
        ("firing", 1, iso("2026-10-26T01:40:00"), iso("2026-10-26T01:40:00"),
         value("2026-10-25T00:30:02", "2026-10-26T01:30:00", 90598.0), 0, [sunday]),
    ]


def test_fall_back_a_missed_first_pass_fires_and_the_second_pass_run_resolves() -> None:
    # The first pass 02:30 CEST (00:30Z) is missed: fires at 02:40 CEST (00:40Z). The job runs at the second
    # 02:30 (CET, 01:30Z): last moves past the missed run; next(last) is Monday 02:30 CET.
    r = cron_rule(NIGHTLY_0230)
    s = Jobs()
    saturday = s.run("2026-10-24T00:30:00")
    s.ticks("2026-10-25T00:39:59", "2026-10-25T00:40:00", "2026-10-25T01:00:00")
    second = s.run("2026-10-25T01:30:00")
    records = detect([r], s)[0]
    assert [brief(x) for x in records] == [
        ("firing", 1, iso("2026-10-25T00:40:00"), iso("2026-10-25T00:40:00"),
         value("2026-10-24T00:30:00", "2026-10-25T00:30:00", 87000.0), 0, [saturday]),
        ("resolved", 2, iso("2026-10-25T00:40:00"), iso("2026-10-25T01:30:00"),
         value("2026-10-25T01:30:00", "2026-10-26T01:30:00", 0.0), 1, [second]),
    ]
    assert records[0]["summary"] == (
        "no matching cron signal since Sat 24 Oct 02:30 (expected Sun 25 Oct 02:30 Europe/Berlin, 10m grace) (job=backup)"
    )


def test_fall_back_a_run_inside_the_second_pass_skips_cronsims_earlier_answer() -> None:
    # last = 02:10 CET, second pass (01:10Z). cronsim, reading local time, first answers 02:30 of the first
    # pass (00:30Z), which is not after last: the next run is Monday 02:30 CET (01:30Z on 26 Oct).
    r = cron_rule(NIGHTLY_0230)
    s = Jobs()
    run = s.run("2026-10-25T01:10:00")
    s.ticks("2026-10-25T01:40:00", "2026-10-26T01:39:59", "2026-10-26T01:40:00")
    assert [brief(x) for x in detect([r], s)[0]] == [
        ("firing", 1, iso("2026-10-26T01:40:00"), iso("2026-10-26T01:40:00"),
         value("2026-10-25T01:10:00", "2026-10-26T01:30:00", 88200.0), 0, [run]),
    ]


EVERY_5 = {"schedule": "*/5 * * * *", "grace": "30s"}  # UTC by default


def test_a_late_but_allowed_run_moves_last_past_the_missed_run_and_resolves() -> None:
    # 10:00 run; the 10:05 run is due by 10:05:30. Ticks fire it at 10:05:30; at 10:05:40 the 10:05 run's
    # signal arrives with ts 10:05:05 (35 s back: late but allowed): last = 10:05:05, next = 10:10 → resolved
    # at the clock 10:05:40, which the late signal did not move.
    r = cron_rule(EVERY_5)
    s = Jobs()
    first = s.run("2026-11-30T10:00:00")
    s.ticks("2026-11-30T10:05:29.999", "2026-11-30T10:05:30", "2026-11-30T10:05:40")
    late = s.run("2026-11-30T10:05:05")
    s.ticks("2026-11-30T10:10:29")
    assert [brief(x) for x in detect([r], s)[0]] == [
        ("firing", 1, iso("2026-11-30T10:05:30"), iso("2026-11-30T10:05:30"),
         value("2026-11-30T10:00:00", "2026-11-30T10:05:00", 330.0), 0, [first]),
        ("resolved", 2, iso("2026-11-30T10:05:30"), iso("2026-11-30T10:05:40"),
         value("2026-11-30T10:05:05", "2026-11-30T10:10:00", 35.0), 1, [late]),
    ]


def test_a_late_but_allowed_run_before_the_grace_ends_prevents_the_alert() -> None:
    r = cron_rule(EVERY_5)
    s = Jobs()
    s.run("2026-11-30T10:00:00")
    s.ticks("2026-11-30T10:05:25")
    s.run("2026-11-30T10:05:02")  # arrives late but allowed, before 10:05:30
    s.ticks("2026-11-30T10:05:30", "2026-11-30T10:10:29")
    assert detect([r], s)[0] == []


def test_a_late_run_is_ignored_and_does_not_move_last() -> None:
    # clock 10:06:10; a run with ts 10:05:05 is 65 s back: late, ignored. 10:05 stays missing.
    r = cron_rule(EVERY_5)
    s = Jobs()
    first = s.run("2026-11-30T10:00:00")
    s.ticks("2026-11-30T10:05:20", "2026-11-30T10:06:10")
    s.run("2026-11-30T10:05:05")
    records, detector = detect([r], s)
    assert [brief(x) for x in records] == [
        ("firing", 1, iso("2026-11-30T10:06:10"), iso("2026-11-30T10:06:10"),
         value("2026-11-30T10:00:00", "2026-11-30T10:05:00", 370.0), 0, [first]),
    ]
    assert detector.late_lines == {4}


def test_for_resolve_after_and_suppress_on_a_five_minute_schedule() -> None:
    # for 1m, resolve_after 2m, suppress 10m; runs every 5 minutes, grace 1m (UTC).
    # 10:00 run. 10:05 missing: true from 10:06 → pending at 10:06, fires at 10:07 (for 1m).
    # Ticks each minute 10:08–10:16 are suppressed (9); 10:17 re-notifies (seq 2, suppressed 9).
    # 10:17:30 run: false from then; resolve_after 2m → resolved by the tick at 10:19:30, not 10:19:29.
    r = cron_rule({"schedule": "*/5 * * * *", "grace": "1m"}, for_="1m", resolve_after="2m", suppress="10m")
    s = Jobs()
    first = s.run("2026-11-30T10:00:00")
    s.ticks(*(f"2026-11-30T10:{minute:02d}:00" for minute in range(1, 18)))
    back = s.run("2026-11-30T10:17:30")
    s.ticks("2026-11-30T10:18:00", "2026-11-30T10:19:29", "2026-11-30T10:19:30")
    assert [brief(x) for x in detect([r], s)[0]] == [
        ("firing", 1, iso("2026-11-30T10:06:00"), iso("2026-11-30T10:07:00"),
         value("2026-11-30T10:00:00", "2026-11-30T10:05:00", 420.0), 0, [first]),
        ("firing", 2, iso("2026-11-30T10:06:00"), iso("2026-11-30T10:17:00"),
         value("2026-11-30T10:00:00", "2026-11-30T10:05:00", 1020.0), 9, [first]),
        ("resolved", 3, iso("2026-11-30T10:06:00"), iso("2026-11-30T10:19:30"),
         value("2026-11-30T10:17:30", "2026-11-30T10:20:00", 120.0), 0, [back]),
    ]


def test_for_is_cancelled_by_a_run_inside_the_pending_period() -> None:
    r = cron_rule({"schedule": "*/5 * * * *", "grace": "1m"}, for_="2m")
    s = Jobs()
    s.run("2026-11-30T10:00:00")
    s.ticks("2026-11-30T10:06:00", "2026-11-30T10:07:00")  # pending since 10:06
    s.run("2026-11-30T10:07:30")  # before 10:08: back to inactive, nothing emitted
    s.ticks("2026-11-30T10:08:00", "2026-11-30T10:10:59")
    assert detect([r], s)[0] == []


def test_each_job_has_its_own_next_run() -> None:
    # Both jobs follow the weekday schedule; only the one that missed Tuesday fires.
    r = cron_rule(WEEKDAYS_9)
    s = Jobs()
    s.run("2026-11-30T08:00:00", job="backup")
    report = s.run("2026-11-30T08:00:00", job="report")
    s.run("2026-12-01T08:00:10", job="backup")
    s.ticks("2026-12-01T08:30:00")
    records = detect([r], s)[0]
    assert [(x["group"], x["value"]["expected_at"], x["evidence"][0]["id"]) for x in records] == [
        ({"job": "report"}, iso("2026-12-01T08:00:00"), report),
    ]


def test_a_schedule_without_runs_ahead_never_fires_and_its_groups_stay_live() -> None:
    # `*/30` days are the 1st and 31st, and (a `*` in a day field means AND) they must be February's fifth
    # Monday: never. cronsim gives up after 50 years; the condition is false. The group is still armed for
    # good, so with max_groups 1 the next job goes to the overflow group.
    r = cron_rule({"schedule": "0 0 */30 2 mon#5", "grace": "1m"}, max_groups=1)
    s = Jobs()
    s.run("2026-11-30T08:00:00", job="backup")
    s.ticks("2026-12-30T08:00:00")
    s.run("2026-12-30T08:00:00", job="report")
    records, detector = detect([r], s)
    assert records == []
    (runner,) = detector.sites[SITE].runners
    assert sorted(runner.fps) == ['{"job":"__other__"}', '{"job":"backup"}']


def test_a_fixed_silence_summary_reads_in_hours_and_minutes() -> None:
    r = cron_rule({"after": "2h"})
    s = Jobs()
    s.run("2026-11-30T08:00:00")
    s.ticks("2026-11-30T10:00:02.460")
    (record,) = detect([r], s)[0]
    assert record["value"] == {"last_seen_at": iso("2026-11-30T08:00:00"), "silent_for_s": 7202.46}
    assert record["summary"] == "no matching cron signal for 2h 0m (last seen 2026-11-30T08:00:00.000Z) (job=backup)"


# ---------------------------------------------------------------------------- engine = reference across DST changes

DST_STARTS = ("2026-03-29T00:57:00", "2026-10-25T00:57:00")  # three minutes before Berlin's clocks change
DST_SCHEDULES = (
    "0-59/2 2 * * *",  # fixed hour: cronsim reads local wall time (spring: never; fall: skips the second pass)
    "1 2 * * *",
    "58,59 1 * * *",
    "0,1,5 3 * * *",
    "*/2 * * * *",  # every other minute: cronsim walks real instants, both passes included
    "*/3 1-3 * * *",
)


def shifted(lines: list[bytes], delta: int) -> list[bytes]:
    """The same stream ``delta`` ms later."""
    out = []
    for raw in lines:
        envelope = json.loads(raw)
        envelope["ts"] = format_ts(parse_ts(envelope["ts"]) + delta)
        out.append(signal_line(envelope).encode())
    return out


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engine_equals_reference_across_daylight_saving_changes(data: Any) -> None:
    """The property tests of test_engine_vs_reference, moved to Berlin's DST nights, with Berlin schedules."""
    docs = list(data.draw(rule_sets(("absence", "absence", "threshold"), 3)))
    for doc in docs:
        if doc["kind"] == "absence":
            grace = data.draw(st.sampled_from(["1s", "20s", "1m", "1500ms", "5m"]))
            doc["absence"] = {"schedule": data.draw(st.sampled_from(DST_SCHEDULES)), "timezone": "Europe/Berlin", "grace": grace}
    start = ms(data.draw(st.sampled_from(DST_STARTS)))
    check_same(tuple(docs), shifted(data.draw(streams()), start - BASE_MS))
