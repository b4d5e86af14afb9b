"""The pure decisions of delivery/holds.py and schemas/matchers.py: matchers, silences, mute times across DST, inhibition.

No store and no clock: every instant is given, so a Berlin night with a
clock change is as easy to test as any other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from delivery.holds import INHIBITED, MUTED, SILENCED, HoldPolicy, Inhibitor, Silence, fields_of, mute_active
from schemas.alerts import NotificationRecord
from schemas.matchers import MAX_MATCHED_VALUE, parse_matcher
from schemas.rules import InhibitRule, MuteTime
from tests.support.factories import make_notification


def ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def record(number: int = 1, seq: int = 1, **changes: Any) -> NotificationRecord:
    alert_id = f"{number:032x}"
    return NotificationRecord.model_validate(make_notification(alert_id=alert_id, seq=seq, **changes))


def absence(number: int, site: str, rule: str, status: str = "firing", seq: int = 1, **changes: Any) -> NotificationRecord:
    """A notification of an absence rule (the kind the default pack's inhibit rule targets)."""
    resolved = {"ended_at": "2026-11-28T10:44:00.000Z"} if status == "resolved" else {}
    return record(number, seq, site=site, status=status, rule={"id": rule, "title": "t", "kind": "absence", "description": None},
                  value={"last_seen_at": "2026-11-28T10:01:00.000Z", "silent_for_s": 300.0}, group={},
                  subsystem="integration", **resolved, **changes)


# -- matchers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fields", "expected"), [
    ("site=shop-eu", {"site": "shop-eu"}, True),
    ("site=shop-eu", {"site": "shop-eu2"}, False),
    ("site!=shop-eu", {"site": "blog-us"}, True),
    ("rule=~php-.*", {"rule": "php-fatal-spike"}, True),
    ("rule=~php", {"rule": "php-fatal-spike"}, False),  # anchored: the whole value
    ("rule!~php-.*", {"rule": "php-fatal-spike"}, False),
    ("transport!=smtp", {}, True),  # an absent group field reads as empty
    ("transport=~.*", {}, True),
    ("transport=", {}, True),
], ids=lambda value: str(value))
def test_a_matcher_compares_a_field_as_alertmanager_does(text: str, fields: dict[str, str], expected: bool) -> None:
    assert parse_matcher(text).matches(fields) is expected


@pytest.mark.parametrize(("text", "message"), [
    ("siteshop-eu", "siteshop-eu: not a matcher: give field=value, field!=value, field=~regex or field!~regex"),
    ("colour=red", "colour: unknown field: use site, rule, kind, severity, subsystem or a group field "
                   "(a payload field a rule groups by, e.g. component)"),
    ("rule=~php-(", "rule=~php-(: not a regular expression: missing ), unterminated subpattern at position 4"),
    ("rule=~" + "a" * 1001, "rule=~: the value has 1001 characters; at most 1000"),
])
def test_a_bad_matcher_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_matcher(text)
    assert str(caught.value) == message


def test_a_regex_never_runs_on_an_attacker_sized_value_and_such_a_value_is_never_held_by_it() -> None:
    long = "a" * (MAX_MATCHED_VALUE + 1)
    assert not parse_matcher("component=~a*").matches({"component": long})
    assert not parse_matcher("component!~b.*").matches({"component": long})  # not held either way: fail open
    assert parse_matcher("component=~a*").matches({"component": long[:MAX_MATCHED_VALUE]})


def test_the_fields_of_a_notification_are_its_own_then_its_group() -> None:
    fields = fields_of(record(group={"transport": "smtp"}))
    assert fields == {"transport": "smtp", "site": "shop-eu", "rule": "mail-delivery-failing", "kind": "ratio",
                      "severity": "high", "subsystem": "mail"}


# -- silences -------------------------------------------------------------------------------------------


def silence(*matchers: str, start: str = "2026-11-28T10:00:00+00:00", end: str = "2026-11-28T12:00:00+00:00") -> Silence:
    return Silence("a" * 32, tuple(map(parse_matcher, matchers)), ms(start), ms(end), "alice", "PHP 8.4 migration", ms(start))


def test_a_silence_holds_what_all_its_matchers_match_from_its_start_until_its_end() -> None:
    policy = HoldPolicy()
    policy.silences = (silence("site=shop-eu", "rule=~mail-.*"),)
    mail = record()
    at = ms("2026-11-28T11:00:00+00:00")
    held = policy.hold(mail, "oncall", None, at)
    assert held is not None and (held.outcome, held.by) == (SILENCED, "a" * 32)
    assert held.reason == f"silence {'a' * 32} (alice: PHP 8.4 migration) until 2026-11-28T12:00:00Z"
    assert policy.hold(record(site="blog-us"), "oncall", None, at) is None
    assert policy.hold(mail, "oncall", None, ms("2026-11-28T09:59:59.999+00:00")) is None  # not started
    assert policy.hold(mail, "oncall", None, ms("2026-11-28T12:00:00+00:00")) is None  # the end is excluded
    assert [silence().state(ms(t)) for t in ("2026-11-28T09:00:00+00:00", "2026-11-28T10:00:00+00:00",
                                             "2026-11-28T12:00:00+00:00")] == ["pending", "active", "expired"]


# -- mute times -----------------------------------------------------------------------------------------


def mute(**interval: Any) -> MuteTime:
    return MuteTime.model_validate({"name": "sunday-maintenance", "timezone": "Europe/Berlin", "intervals": [interval]})


SUNDAY_NIGHT = mute(weekdays=["sunday"], times=[{"start": "01:00", "end": "04:00"}])


@pytest.mark.parametrize(("instant", "muted"), [
    # 2026-03-29: Berlin skips 02:00-03:00 (CET → CEST). 01:00 local = 00:00Z; 04:00 local = 02:00Z: two hours.
    ("2026-03-28T23:59:59+00:00", False),  # 00:59:59 CET
    ("2026-03-29T00:00:00+00:00", True),  # 01:00 CET
    ("2026-03-29T00:59:59+00:00", True),  # 01:59:59 CET; the next second is 03:00 CEST
    ("2026-03-29T01:00:00+00:00", True),  # 03:00 CEST
    ("2026-03-29T01:59:59+00:00", True),  # 03:59:59 CEST
    ("2026-03-29T02:00:00+00:00", False),  # 04:00 CEST
    # 2026-10-25: Berlin repeats 02:00-03:00 (CEST → CET). 01:00 CEST = 23:00Z; 04:00 CET = 03:00Z: four hours.
    ("2026-10-24T22:59:59+00:00", False),  # Saturday 00:59:59 CEST
    ("2026-10-24T23:00:00+00:00", True),  # Sunday 01:00 CEST
    ("2026-10-25T00:30:00+00:00", True),  # 02:30 CEST, the first time
    ("2026-10-25T01:30:00+00:00", True),  # 02:30 CET, the second time
    ("2026-10-25T02:59:59+00:00", True),  # 03:59:59 CET
    ("2026-10-25T03:00:00+00:00", False),  # 04:00 CET
    ("2026-11-01T00:30:00+00:00", True),  # a Sunday in winter time: 01:30 CET
    ("2026-11-02T00:30:00+00:00", False),  # Monday
])
def test_a_maintenance_window_is_local_wall_time_across_daylight_saving_changes(instant: str, muted: bool) -> None:
    assert mute_active(SUNDAY_NIGHT, ms(instant)) is muted


def test_days_of_month_count_from_the_end_and_months_and_ranges_narrow_a_window() -> None:
    last_days = mute(days_of_month=["-2:-1"], months=["january:march"])
    assert mute_active(last_days, ms("2026-02-27T12:00:00+00:00"))  # Feb 2026 has 28 days: 27 and 28
    assert not mute_active(last_days, ms("2026-02-26T12:00:00+00:00"))
    assert not mute_active(last_days, ms("2026-04-30T12:00:00+00:00"))  # April is not in the months
    weekdays = mute(weekdays=["monday:friday"], times=[{"start": "22:00", "end": "24:00"}])
    assert mute_active(weekdays, ms("2026-12-04T22:59:00+00:00"))  # Friday 23:59 CET
    assert not mute_active(weekdays, ms("2026-12-05T22:30:00+00:00"))  # Saturday


def test_a_mute_time_named_by_the_channel_or_the_rule_mutes_only_there() -> None:
    policy = HoldPolicy([SUNDAY_NIGHT], {"oncall": ["sunday-maintenance"]}, {"php-fatal-spike": ["sunday-maintenance"]})
    sunday, monday = ms("2026-11-01T00:30:00+00:00"), ms("2026-11-02T00:30:00+00:00")
    held = policy.hold(record(), "oncall", None, sunday)
    assert held is not None and (held.outcome, held.by, held.reason) == (
        MUTED, "sunday-maintenance", "mute time sunday-maintenance of the channel")
    assert policy.hold(record(), "ops-slack", None, sunday) is None
    assert policy.hold(record(), "oncall", None, monday) is None
    php = record(rule={"id": "php-fatal-spike", "title": "t", "kind": "ratio", "description": None})
    by_rule = policy.hold(php, "ops-slack", None, sunday)
    assert by_rule is not None and by_rule.reason == "mute time sunday-maintenance of the rule"


# -- inhibition -----------------------------------------------------------------------------------------

PACK_RULE = InhibitRule(name="silent-integration-hides-absences", source=["rule=integration-silent"],
                        target=["kind=absence", "rule!=integration-silent"], equal=["site"])


def test_a_firing_source_inhibits_targets_of_its_site_from_there_on_in_stream_order_until_it_resolves() -> None:
    inhibitor = Inhibitor([PACK_RULE])
    cron_before = absence(2, "shop-eu", "cron-job-stopped")
    assert inhibitor.observe(cron_before) is None  # before the source fired: sent
    source = absence(1, "shop-eu", "integration-silent")
    assert inhibitor.observe(source) is None  # the source does not inhibit itself
    held = inhibitor.observe(absence(3, "shop-eu", "backup-missed"))
    assert held is not None and (held.outcome, held.by) == (INHIBITED, f"{1:032x}")
    assert held.reason == f"inhibited by integration-silent alert {1:032x} (inhibit rule silent-integration-hides-absences)"
    assert inhibitor.observe(absence(4, "blog-us", "backup-missed")) is None  # another site
    assert inhibitor.observe(record(5, site="shop-eu")) is None  # not an absence
    assert inhibitor.observe(absence(1, "shop-eu", "integration-silent", "firing", 2)) is None  # re-notification
    assert inhibitor.observe(absence(3, "shop-eu", "backup-missed", seq=2)) is not None
    assert inhibitor.observe(absence(1, "shop-eu", "integration-silent", "resolved", 3)) is None
    assert inhibitor.observe(absence(3, "shop-eu", "backup-missed", seq=3)) is None  # the source resolved


def test_the_same_stream_is_always_inhibited_the_same_way() -> None:
    stream = [absence(1, "shop-eu", "integration-silent"), absence(2, "shop-eu", "cron-job-stopped"),
              absence(1, "shop-eu", "integration-silent", "resolved", 2), absence(2, "shop-eu", "cron-job-stopped", seq=2)]
    runs = [[inhibitor.observe(r) for r in stream] for inhibitor in (Inhibitor([PACK_RULE]), Inhibitor([PACK_RULE]))]
    assert runs[0] == runs[1] and [hold is not None for hold in runs[0]] == [False, True, False, False]


def test_remembered_records_leave_the_sources_as_observed_ones_did() -> None:
    history = [absence(1, "shop-eu", "integration-silent"), absence(2, "shop-eu", "cron-job-stopped"),
               absence(3, "blog-us", "integration-silent"), absence(4, "blog-us", "integration-silent"),
               absence(3, "blog-us", "integration-silent", "resolved", 2)]
    observed, remembered = Inhibitor([PACK_RULE]), Inhibitor([PACK_RULE])
    for past in history:
        observed.observe(past)
        remembered.remember(past)
    assert (observed.active, remembered.active) == (2, 2)  # shop-eu's alert 1, blog-us's alert 4
    for target in (absence(5, "shop-eu", "backup-missed"), absence(6, "blog-us", "backup-missed")):
        assert remembered.observe(target) == observed.observe(target) is not None
    assert [hold.by for hold in (remembered.observe(absence(7, "blog-us", "cron-job-stopped")),) if hold] == [f"{4:032x}"]
    remembered.remember(absence(1, "shop-eu", "integration-silent", "resolved", 2))
    assert remembered.active == 1 and remembered.observe(absence(8, "shop-eu", "backup-missed")) is None
    assert Inhibitor([]).rules == () and Inhibitor([PACK_RULE]).rules == (PACK_RULE,)


def test_a_silence_is_named_before_a_mute_time_and_a_mute_time_before_an_inhibition() -> None:
    policy = HoldPolicy([mute()], {"oncall": ["sunday-maintenance"]})  # an interval with no field: always on
    inhibited = Inhibitor([PACK_RULE])
    inhibited.observe(absence(1, "shop-eu", "integration-silent"))
    target = absence(2, "shop-eu", "cron-job-stopped")
    reason = inhibited.observe(target)
    at = ms("2026-11-28T11:00:00+00:00")
    assert policy.hold(target, "ops-slack", reason, at) == reason
    assert policy.hold(target, "oncall", reason, at).outcome == MUTED  # type: ignore[union-attr]
    policy.silences = (silence("site=shop-eu"),)
    assert policy.hold(target, "oncall", reason, at).outcome == SILENCED  # type: ignore[union-attr]

