"""Durations as rule authors write them (``90s``, ``15m``, ``1d``), held as milliseconds.

Imports no model: every command parses its duration options with it (rule
fields that are durations are :data:`schemas.rules.Duration` and ``Window``).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from schemas.excerpt import excerpt
from schemas.integers import MAX_SAFE_INTEGER

DURATION_PATTERN = r"^[0-9]+(ms|s|m|h|d)$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_WINDOW_MS = 7 * 86_400_000


def parse_duration(value: Any) -> int:
    """``"15m"`` → ``900000``; anything else is a ValueError naming the expected form.

    A duration is an integer of milliseconds, so it lies within 2^53 − 1 like
    every integer (about 285,000 years); the digits are counted before they
    are converted, so a thousand-digit duration costs nothing.
    """
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            unit = match.group(1)
            digits = value[: -len(unit)]
            ms = int(digits) * _UNIT_MS[unit] if len(digits.lstrip("0")) <= len(str(MAX_SAFE_INTEGER)) else MAX_SAFE_INTEGER + 1
            if ms > MAX_SAFE_INTEGER:
                raise ValueError(f"{excerpt(value)} is longer than 2^53 − 1 milliseconds")
            return ms
    raise ValueError(f"{excerpt(value)} is not a duration like 90s, 15m, 1h or 1d")


def duration_option(text: str) -> int:
    """An argparse ``type`` for every duration option (``--timeout 10s``): milliseconds, or a usage error naming the option."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def format_duration(ms: int) -> str:
    """The shortest exact spelling of a duration (``900000`` → ``15m``)."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def spoken_duration(ms: int) -> str:
    """A length of time the way a person reads it, to its two largest units, rounded down.

    ``7202460`` → ``2h 0m``, ``90000`` → ``1m 30s``, ``273600000`` → ``3d 4h``,
    ``45500`` → ``45s``. For summaries; exact numbers stay in ``value``.
    """
    seconds = max(ms, 0) // 1000
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{days}d {hour}h"
    if hours:
        return f"{hours}h {minute}m"
    if minutes:
        return f"{minutes}m {second}s"
    return f"{second}s"


def check_window(ms: int) -> int:
    """A rule's window (already in milliseconds): more than 0, at most 7 days; else a ValueError saying which."""
    if ms <= 0:
        raise ValueError("must be > 0")
    if ms > MAX_WINDOW_MS:
        raise ValueError("must be ≤ 7d")
    return ms
