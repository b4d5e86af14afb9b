"""Schedules and zones of scheduled absence (schemas/schedule.py), and durations as summaries spell them."""

from __future__ import annotations

from datetime import UTC

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.durations import spoken_duration
from schemas.schedule import check_schedule, load_zone, next_run, zone_names
from schemas.timestamps import format_ts, parse_ts_checked


def test_zones_come_from_the_tzdata_package_not_the_host() -> None:
    berlin = load_zone("Europe/Berlin")
    assert str(berlin) == "Europe/Berlin"
    assert load_zone("UTC") is UTC
    assert {"Europe/Berlin", "US/Eastern", "Etc/UTC"} <= zone_names()
    # Names that are files of a host's zoneinfo directory but not zones of tzdata are refused.
    for name in ("posixrules", "right/UTC", "../../etc/passwd", "", "europe/berlin"):
        with pytest.raises(ValueError, match="unknown time zone"):
            load_zone(name)


def at(text: str) -> int:
    return parse_ts_checked(text)


def test_next_run_is_strictly_after_last_at_millisecond_precision() -> None:
    zone = load_zone("Europe/Berlin")
    # 09:00 CET is 08:00Z: a run exactly at last is not "after" it; one millisecond before it is.
    assert format_ts(next_run("0 9 * * *", zone, at("2026-11-30T08:00:00.000Z"))) == "2026-12-01T08:00:00.000Z"
    assert format_ts(next_run("0 9 * * *", zone, at("2026-11-30T07:59:59.999Z"))) == "2026-11-30T08:00:00.000Z"


def test_next_run_is_none_when_cronsim_finds_none() -> None:
    # Days 1 and 31 that must also be February's fifth Monday (a `*` in a day field means AND): never.
    assert next_run("0 0 */30 2 mon#5", UTC, at("2026-11-30T08:00:00Z")) is None
    # The year after 9999 is not a date: there is no run to wait for, rather than an error (signals stop at 2199,
    # so this instant is given in milliseconds, not as a signal's ts).
    assert next_run("0 0 1 1 *", UTC, 253_383_811_200_000) is None  # 9999-06-01T00:00:00Z


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet="0123456789*/,-#LW MONFRIJASUTEDC?", max_size=30))
def test_any_expression_is_accepted_or_refused_with_a_reason(text: str) -> None:
    try:
        assert check_schedule(text) == text
    except ValueError as error:
        assert str(error)


@pytest.mark.parametrize(("ms", "text"), [
    (0, "0s"), (999, "0s"), (45_500, "45s"), (90_000, "1m 30s"), (3_599_999, "59m 59s"),
    (7_202_460, "2h 0m"), (86_399_000, "23h 59m"), (273_600_000, "3d 4h"), (-5, "0s"),
])
def test_spoken_duration(ms: int, text: str) -> None:
    assert spoken_duration(ms) == text
