"""Event-time parsing and formatting (signals.md, "Envelope").

Internally every instant is an ``int`` of milliseconds since the Unix epoch:
integer arithmetic keeps window boundaries exact, and the contract keeps at
most millisecond precision anyway (the fraction is truncated, not rounded).
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime

from schemas.errors import UsageError

TS_PATTERN = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?Z$"
)
"""The shape of ``ts``; the calendar and the range are :func:`parse_ts`'s checks."""
_TS_RE = re.compile(TS_PATTERN)
FIRST_YEAR, LAST_YEAR = 1970, 2199
"""The contract's range of ``ts``: with the fraction truncated to milliseconds, whole years are exactly
``1970-01-01T00:00:00.000Z`` … ``2199-12-31T23:59:59.999Z``, which every store column holds (``DateTime64(3)``:
1900–2299)."""
_LOOSE_TS = re.compile(
    r"(?P<date>[0-9]{4}-(?P<month>[0-9]{2})-(?P<day>[0-9]{2}))(?P<t>[Tt ])"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?P<fraction>[.,][0-9]*)?(?P<zone>.*)"
)
_DAY_CACHE: dict[str, int] = {}
SECOND_STARTS: dict[str, int] = {}
"""Epoch ms of the ``YYYY-MM-DDTHH:MM:SS`` prefixes :func:`parse_ts` met lately (bounded).

Public with :data:`MILLIS` so that the per-line parsing loop (:func:`schemas.records.parse_lines`)
can take the usual path, a known second and ``.mmmZ``, without a function call."""
_SECOND_CACHE_LIMIT = 65_536
MILLIS = {f"{ms:03d}": ms for ms in range(1000)}
"""The three fraction digits of ``.mmmZ`` as an int: a lookup costs less than ``int()`` per record."""
_DAY_CACHE_LIMIT = 4096
MS_PER_DAY = 86_400_000


class TimestampError(UsageError, ValueError):
    """A ``ts`` string that matches the shape but names no real instant (Feb 30) or one out of the contract's range."""


def _day_start_ms(date_part: str) -> int:
    """Epoch milliseconds of ``YYYY-MM-DD`` 00:00 UTC, validating the range and the calendar date (cached per day)."""
    cached = _DAY_CACHE.get(date_part)
    if cached is not None:
        return cached
    year, month, day = int(date_part[0:4]), int(date_part[5:7]), int(date_part[8:10])
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise TimestampError(f"year {date_part[0:4]} out of range {FIRST_YEAR}–{LAST_YEAR}")
    if day > calendar.monthrange(year, month)[1]:
        raise TimestampError(f"{date_part} is not a calendar date")
    value = calendar.timegm((year, month, day, 0, 0, 0)) * 1000
    if len(_DAY_CACHE) >= _DAY_CACHE_LIMIT:
        _DAY_CACHE.clear()
    _DAY_CACHE[date_part] = value
    return value


def parse_ts(text: str) -> int:
    """Parse an already shape-checked ``ts`` string into epoch milliseconds.

    The shape (upper-case ``T``/``Z``, ranges of each part) is enforced by the
    schema pattern; this adds the range and calendar checks and the ms truncation. Records
    arrive roughly in time order and many share a second (every site's tick,
    bursts), so the start of each second is cached.
    """
    second = SECOND_STARTS.get(text[:19])
    if second is None:
        second = _day_start_ms(text[0:10]) + int(text[11:13]) * 3_600_000 + int(text[14:16]) * 60_000 + int(text[17:19]) * 1000
        if len(SECOND_STARTS) >= _SECOND_CACHE_LIMIT:
            SECOND_STARTS.clear()
        SECOND_STARTS[text[:19]] = second
    if len(text) == 24:  # the usual ".mmmZ"
        return second + MILLIS[text[20:23]]
    if text[19] == ".":
        return second + int(text[20:-1][:3].ljust(3, "0"))
    return second


def ts_problem(text: str) -> str:
    """What is wrong with a ``ts`` string that does not match :data:`TS_PATTERN`, in words.

    Only called on rejection (never on the hot path), so it can afford to
    look at the string several ways; the first problem found is named.
    """
    found = _LOOSE_TS.fullmatch(text)
    if found is None:
        return f"{text[:40]!r} is not a timestamp like 2026-11-28T10:00:00.000Z"
    zone, fraction = found["zone"], found["fraction"]
    if zone in ("", " "):
        return "no time zone: end with Z (UTC)"
    if zone != "Z" and zone != "z":
        if re.fullmatch(r"[+-][0-9]{2}:?[0-9]{2}", zone):
            return f"offset {zone} not allowed, use Z (UTC)"
        return f"{zone[:20]!r} after the time: only Z (UTC) is allowed"
    if found["t"] != "T" or zone != "Z":
        return "lower-case t/z or a space as separator: use upper-case T and Z"
    if fraction is not None and (fraction[0] != "." or len(fraction) == 1):
        return "fraction must be '.' and at least one digit"
    month, day = int(found["month"]), int(found["day"])
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        return f"{found['date']} is not a date"
    hour, minute, second = int(found["hour"]), int(found["minute"]), int(found["second"])
    if second == 60:
        return "leap second (:60) not allowed: seconds are 00–59"
    if hour > 23 or minute > 59 or second > 59:
        return f"{found['hour']}:{found['minute']}:{found['second']} is not a time of day"
    return "not a timestamp like 2026-11-28T10:00:00.000Z"


def parse_ts_checked(text: str) -> int:
    """Parse a ``ts`` string from an untrusted place (stored records, tests, CLI options)."""
    if not _TS_RE.match(text):
        raise TimestampError(f"{text!r}: {ts_problem(text)}")
    return parse_ts(text)


def format_ts(ms: int) -> str:
    """Format epoch milliseconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (always three fraction digits)."""
    seconds, millis = divmod(ms, 1000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"
