"""Cron schedules and time zones of scheduled absence (rules.md "Scheduled absence").

A schedule means what the ``cronsim`` package (2.x) computes for it, in local
time of an IANA zone. Zones come from the ``tzdata`` package, never from the
host's ``/usr/share/zoneinfo``: the same rule on two machines must expect the
same runs, whatever each machine's zone files say about daylight saving.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from schemas.excerpt import excerpt

CRON_FIELDS = "minute, hour, day of month, month, day of week"


@cache
def zone_names() -> frozenset[str]:
    """Every IANA zone name the pinned ``tzdata`` knows (links such as ``US/Eastern`` included)."""
    text = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


@cache
def load_zone(name: str) -> tzinfo:
    """The zone called ``name``, read from ``tzdata``; a ValueError naming the mistake otherwise.

    ``UTC`` is :data:`datetime.UTC` itself: cronsim treats that object as the
    zone without daylight saving it is (and takes its fast path).
    """
    if name == "UTC":
        return UTC
    if name not in zone_names():
        raise ValueError(f"unknown time zone {excerpt(name)}; use an IANA name such as Europe/Berlin or UTC")
    with resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as data:
        return ZoneInfo.from_file(data, key=name)


def check_schedule(expression: str) -> str:
    """A five-field cron expression cronsim accepts, returned as given; a ValueError with the reason otherwise.

    cronsim also reads six fields (seconds first); the contract's schedules
    have five, so any other count is refused here, before cronsim sees it.
    """
    fields = len(expression.split())
    if fields != 5:
        raise ValueError(f"{excerpt(expression)} has {fields} field(s); a schedule has five ({CRON_FIELDS})")
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as error:
        raise ValueError(f"{excerpt(expression)} is not a cron expression cronsim accepts: {error}") from None
    return expression


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def next_run(expression: str, zone: tzinfo, last: int) -> int | None:
    """``next(last)`` of rules.md: the first run of the schedule strictly after ``last`` (epoch ms), or None.

    ``last`` is read in ``zone`` at millisecond precision and cronsim gives
    its runs from there. After a fall-back, cronsim can answer with the first
    pass of a repeated local time while ``last`` lies in the second pass: such
    answers are skipped (at most one hour of them). None when cronsim finds no
    run within its 50 years, or the next run lies past what ``datetime``
    represents (year 9999).
    """
    local = (_EPOCH + last * _MS).astimezone(zone)
    try:
        for run in CronSim(expression, local):
            at = (run - _EPOCH) // _MS
            if at > last:
                return at
    except (OverflowError, ValueError):
        pass  # the search ran past year 9999: there is no next run to wait for
    return None


@dataclass(frozen=True)
class Schedule:
    """A scheduled absence's parameters, ready for the engine (the zone loaded, ``grace`` in ms)."""

    expression: str
    zone_name: str
    zone: tzinfo
    grace: int

    def next_run(self, last: int) -> int | None:
        """``next(last)``: see :func:`next_run`."""
        return next_run(self.expression, self.zone, last)
