"""``logystera silence add | list | expire``: silences in the store, as an on-call person makes them (docs/silences.md).

Every mistake is one line and exit 2 (a :class:`schemas.errors.UsageError`):
a bad matcher (unknown field, a regex that does not compile), an end before
the start, a missing ``--by`` or ``--comment``, a silence no rule of the rule
set can ever match (a typo in a rule id should not look like a working silence).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

from delivery.holds import Silence, iso_ms
from delivery.silences import SILENCE_ID, new_silence, read_silences, silence_by_id, write_silence
from schemas.errors import UsageError
from schemas.excerpt import clip
from schemas.matchers import Matcher, all_match, notification_fields, parse_matcher
from schemas.rules import Rule
from schemas.signals import SITE_PATTERN
from sinks.clickhouse import Store

MAX_OPEN_SHOWN = 20
"""Open alerts ``silence add`` lists one by one; the rest are counted."""
MAX_OPEN_READ = 100_000
"""Open alerts read to see what a new silence holds (the newest episodes first)."""
_OPEN = """SELECT alert_id, argMax(rule_id, seq), argMax(rule_kind, seq), argMax(severity, seq), argMax(site, seq),
    argMax(subsystem, seq), argMax(group_json, seq), argMax(summary, seq)
FROM {db}.alerts_final GROUP BY alert_id HAVING argMax(status, seq) = 'firing'
ORDER BY max(evaluated_at) DESC LIMIT {limit}"""
_SITE = re.compile(SITE_PATTERN)
_HELD_COUNTS = """SELECT held_by, count() FROM {db}.deliveries_final WHERE outcome = 'silenced' GROUP BY held_by"""


def parse_time(text: str, option: str) -> int:
    """An RFC 3339 instant with its offset (``2026-12-07T01:00:00Z``, ``…+01:00``) as epoch ms."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: {clip(text)} is not a time: use RFC 3339, e.g. 2026-12-07T01:00:00Z") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{option}: {clip(text)} has no offset: add Z (UTC) or one like +01:00")
    return round(parsed.timestamp() * 1000)


def parse_matchers(texts: Sequence[str]) -> list[Matcher]:
    """``--match`` values as matchers; the first bad one is the error."""
    matchers = []
    for text in texts:
        try:
            matchers.append(parse_matcher(text))
        except ValueError as error:
            raise UsageError(f"--match: {error}") from None
    return matchers


def can_match(matchers: Sequence[Matcher], rule: Rule) -> bool:
    """Whether some notification of ``rule`` could satisfy every matcher (sites and grouped values unknown: any)."""
    known = {"rule": rule.id, "kind": rule.kind, "severity": rule.severity, "subsystem": rule.subsystem}
    for matcher in matchers:
        if matcher.name in known:
            if not matcher.matches_value(known[matcher.name]):
                return False
        elif matcher.name == "site":
            if matcher.op == "=" and not _SITE.match(matcher.value):
                return False
        elif matcher.name not in rule.group_by and not matcher.matches_value(""):
            return False  # the rule's notifications do not have this group field: it reads as empty
    return True


def _open_alerts(store: Store) -> list[tuple[str, dict[str, str], str]]:
    """The open alerts (newest notification firing): (alert id, the fields matchers see, its summary)."""
    rows = store.query(_OPEN.format(db=store.database, limit=MAX_OPEN_READ)).result_rows
    return [(alert_id, notification_fields(site, rule, kind, severity, subsystem, json.loads(group)), summary)
            for alert_id, rule, kind, severity, site, subsystem, group, summary in rows]


def silence_add(store: Store, rules: Sequence[Rule], rules_dir: str, match: Sequence[str], start: str | None,
                end: str | None, duration_ms: int | None, by: str | None, comment: str | None, out: TextIO,
                now_ms: int | None = None) -> Silence:
    """Check, store and show a new silence: its id, its window, and the open alerts it holds now."""
    now = round(time.time() * 1000) if now_ms is None else now_ms
    matchers = parse_matchers(match)
    if by is None or comment is None:
        raise UsageError("silence add: --by and --comment are required (who silenced, and why)")
    starts_at = now if start is None else parse_time(start, "--start")
    if (end is None) == (duration_ms is None):
        raise UsageError("silence add: give exactly one of --end TIME and --for DURATION")
    ends_at = parse_time(end, "--end") if end is not None else starts_at + (duration_ms or 0)
    silence = new_silence(uuid.uuid4().hex, matchers, starts_at, ends_at, by, comment, now)
    if rules and not any(can_match(matchers, rule) for rule in rules):
        raise UsageError(f"silence add: no rule in {rules_dir} can match {silence.matcher_text} "
                         f"(check the rule id, kind, severity, subsystem and group fields)")
    write_silence(store, silence)
    print(f"silence {silence.id}: {silence.matcher_text} from {iso_ms(starts_at)} until {iso_ms(ends_at)} "
          f"({silence.created_by}: {silence.comment})", file=out)
    held = [(alert_id, fields, summary) for alert_id, fields, summary in _open_alerts(store) if all_match(matchers, fields)]
    print(f"it matches {len(held)} open alert{'s' if len(held) != 1 else ''}" + (":" if held else ""), file=out)
    for alert_id, fields, summary in held[:MAX_OPEN_SHOWN]:
        print(f"  {alert_id} {fields['rule']} {fields['site']} {fields['severity']}: {clip(summary, 100)}", file=out)
    if len(held) > MAX_OPEN_SHOWN:
        print(f"  … and {len(held) - MAX_OPEN_SHOWN} more", file=out)
    return silence


def silence_list(store: Store, expired: bool, out: TextIO, now_ms: int | None = None) -> None:
    """The silences not expired (with ``expired``, also the expired ones), newest first, with what each held."""
    now = round(time.time() * 1000) if now_ms is None else now_ms
    silences = read_silences(store, unexpired_at=None if expired else now)
    held = dict(store.query(_HELD_COUNTS.format(db=store.database)).result_rows) if silences else {}
    print("ID\tSTATE\tMATCHERS\tSTARTS\tENDS\tBY\tCOMMENT\tHELD", file=out)
    for silence in silences:
        print("\t".join((silence.id, silence.state(now), silence.matcher_text, iso_ms(silence.starts_at),
                         iso_ms(silence.ends_at), silence.created_by, silence.comment, str(held.get(silence.id, 0)))),
              file=out)


def silence_expire(store: Store, identifier: str, by: str | None, out: TextIO, now_ms: int | None = None) -> None:
    """End a silence now, as a new version (who expired it in ``updated_by``); an expired one stays as it is."""
    now = round(time.time() * 1000) if now_ms is None else now_ms
    if not SILENCE_ID.match(identifier):
        raise UsageError(f"silence expire: {clip(identifier)} is not a silence id (32 hexadecimal digits)")
    silence = silence_by_id(store, identifier)
    if silence is None:
        raise UsageError(f"silence expire: no silence {identifier}")
    if silence.ends_at <= now:
        print(f"silence {identifier} had already expired at {iso_ms(silence.ends_at)}", file=out)
        return
    ended = Silence(silence.id, silence.matchers, min(silence.starts_at, now), now, silence.created_by, silence.comment,
                    silence.created_at, now, (by or "").strip())
    write_silence(store, ended)
    print(f"silence {identifier} expired at {iso_ms(now)}", file=out)
