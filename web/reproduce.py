"""The reproduce commands of the alert page: the store's span of a site's records, replayed.

Detection is deterministic: the same records in the same order give the same notifications. The store keeps
the signals but not the ticks (clock records, not signals), so the span is rebuilt from both sides:

- the site's stored signals of the rule's types, from :func:`span_start` to the alert's last stored
  notification, ordered by (``ts``, ``seq``, ``id``);
- the gateway's ticks, synthesized in SQL on its grid (every :data:`TICK_INTERVAL_MS`, on multiples of it,
  as ``gateway/ticker.py`` stamps them), sorted after the signals of the same millisecond.

``logystera sql --format raw`` writes that span as JSON Lines, ``logystera replay`` runs the flow over it with
the rules and the link base of the alert, and ``grep`` keeps the alert's notifications. docs/web.md
("Reproduce") says when this gives back the stored notifications exactly and when it cannot.
"""

from __future__ import annotations

import shlex
import zlib
from dataclasses import dataclass

from schemas.rules import Rule

TICK_INTERVAL_MS = 10_000
"""The gateway's default ``--tick-interval``: the grid the synthesized ticks are put on."""
MARGIN_MS = 60_000
"""How much earlier than the rule strictly needs the span starts (a few ticks to settle the clock)."""


@dataclass(frozen=True)
class Span:
    """What to replay: the site's records of ``types`` with ``start_ms <= ts <= end_ms``."""

    site: str
    types: tuple[str, ...]
    start_ms: int
    end_ms: int


def lookback_ms(rule: Rule) -> int:
    """How far before ``started_at`` the rule's state reaches: its window (with a shift's baseline) or its silence."""
    if rule.threshold is not None:
        return rule.threshold.window
    if rule.ratio is not None:
        return rule.ratio.window
    if rule.distinct is not None:
        return rule.distinct.window
    if rule.shift is not None:
        return rule.shift.baseline + rule.shift.window
    if rule.absence is not None and rule.absence.after is not None:
        return rule.absence.after
    return rule.bundle or 0


def span_start(rule: Rule, started_at: int, last_seen_at: int | None, previous_started_at: int | None) -> int:
    """The first instant of the span that reproduces an episode that started at ``started_at``.

    ``last_seen_at`` is an absence's last matching signal (from its ``value``): the span must hold it. For a
    ``match`` whose first notification counted suppressed matches, ``previous_started_at`` is the start of
    the group's notification before it: the span begins there, so the replay opens the same quiet period
    and counts the same matches in it. Why earlier history is not needed is in docs/web.md.
    """
    start = started_at - lookback_ms(rule)
    if last_seen_at is not None:
        start = min(start, last_seen_at)
    if previous_started_at is not None:
        return previous_started_at
    return start - MARGIN_MS


def _sql_text(value: str) -> str:
    """A ClickHouse string literal (site ids and signal types are from a small alphabet; escaped all the same)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def span_sql(span: Span) -> str:
    """The query whose one column is the span's records as JSON lines, signals and synthesized ticks, in order."""
    site = _sql_text(span.site)
    types = ", ".join(_sql_text(name) for name in span.types)
    first_tick = -(-span.start_ms // TICK_INTERVAL_MS) * TICK_INTERVAL_MS
    # make_tick's id: the second and the site's CRC-32, so the replayed ticks are the gateway's, byte for byte.
    crc = f"{zlib.crc32(span.site.encode()):08x}"
    tick = (f"(1, concat('tick-', leftPad(toString(intDiv(t, 1000)), 10, '0'), '-{crc}'), {site}, 'tick', "
            "formatDateTime(fromUnixTimestamp64Milli(t, 'UTC'), '%Y-%m-%dT%H:%i:%S.000Z'))")
    return (
        "SELECT line FROM ("  # noqa: S608 - printed for the user to run; literals from the store and the rules, escaped
        f"SELECT envelope AS line, ts, 0 AS tick, seq, id FROM signals FINAL WHERE site = {site} AND type IN ({types})"
        f" AND ts BETWEEN fromUnixTimestamp64Milli(toInt64({span.start_ms})) AND fromUnixTimestamp64Milli(toInt64({span.end_ms}))"
        " UNION ALL "
        # A named tuple as JSON is the tick's compact line, keys in make_tick's order, and needs no double quote here.
        f"SELECT toJSONString(CAST({tick}, 'Tuple(v UInt8, id String, site String, type String, ts String)')), "
        "fromUnixTimestamp64Milli(t, 'UTC'), 1, NULL, '' "
        f"FROM (SELECT arrayJoin(range(toInt64({first_tick}), toInt64({span.end_ms + 1}), {TICK_INTERVAL_MS})) AS t)"
        ") ORDER BY ts, tick, seq, id"
    )


def shell_word(text: str) -> str:
    """``text`` as one shell word: in double quotes when nothing in it is special there (readable SQL), else shlex."""
    if text and not any(character in text for character in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def commands(span: Span, alert_id: str, store_dsn: str | None, rules_dir: str, link_base: str) -> list[str]:
    """The shell command lines, each one pasteable as printed: export the span, replay it, keep the alert's lines.

    Without ``store_dsn`` the export reads the store ``$LOGYSTERA_STORE`` names (``logystera sql``'s default).
    """
    signals = f"alert-{alert_id[:12]}.jsonl"
    replayed = f"alert-{alert_id[:12]}.replayed.jsonl"
    store = [] if store_dsn is None else ["--store", store_dsn]
    export = " ".join([*map(shlex.quote, ["logystera", "sql", *store, "--format", "raw"]), shell_word(span_sql(span))])
    replay = ["logystera", "replay", signals, "--rules", rules_dir, "--link-base", link_base, "--out", replayed]
    keep = ["grep", "-F", f'"alert_id":"{alert_id}"', replayed]
    return [f"{export} > {shlex.quote(signals)}", shlex.join(replay), shlex.join(keep)]
