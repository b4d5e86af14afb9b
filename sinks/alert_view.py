"""What the human-facing channels (Slack, Teams, e-mail) show of a notification, before any markup.

One reading of the record for all three, so a Slack message, a Teams card
and an e-mail say the same thing in the same words; each channel module only
adds its markup, its escaping and its size limits. Everything here is plain
text taken from the record, not yet escaped for any format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from schemas.alerts import NotificationRecord
from schemas.records import compact_json

_CONTROL_BUT_NEWLINE = re.compile(r"\r\n?|[\x00-\x09\x0b-\x1f\x7f-\x9f]")

EVIDENCE_SHOWN = 5
"""Signals shown in the excerpt: enough to recognise the pattern; the link leads to all of them."""
EVIDENCE_LINE_CHARS = 300
"""One evidence signal is at most 2 KiB of JSON (signals.md); the excerpt shows its start."""
TEXT_LIMITS = {"headline": 200, "summary": 2000, "fact": 500, "description": 1000, "evidence": EVIDENCE_LINE_CHARS}
"""Characters per text of a :func:`clipped` view at full scale (Teams, e-mail; Slack has limits of its own)."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked with ``…``."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def fit(text: str, limit: int, transform: Callable[[str], str]) -> str:
    """``transform(text)`` (an escaping) cut so that the *result* has at most ``limit`` characters.

    Clipping after escaping could cut an entity or escape sequence in half;
    clipping before it could overshoot, so the source is clipped until its
    transform fits (each round removes at least the overshoot).
    """
    cut = limit
    while True:
        out = transform(clip(text, cut))
        if len(out) <= limit:
            return out
        cut -= len(out) - limit


def plain(text: Any) -> str:
    """``text`` without control characters other than newlines (CR LF and CR become LF): what a person can read."""
    return _CONTROL_BUT_NEWLINE.sub(lambda match: "\n" if match.group().startswith("\r") else " ", str(text))


def single_line(text: Any) -> str:
    """``text`` with control characters and every run of whitespace (newlines included) made one space: for headers and titles."""
    return " ".join(plain(text).split())


@dataclass(frozen=True, slots=True)
class AlertView:
    """The parts of one notification as a person reads them (unescaped, unclipped except evidence lines)."""

    severity: str  # upper case: HIGH
    resolved: bool
    headline: str  # "[HIGH] Mail delivery is failing", "[HIGH] Resolved: Mail delivery is failing"
    subject: str  # "[HIGH] shop-eu: Mail delivery is failing": the same for every notification of an alert
    summary: str
    description: str  # the rule's description, "" without one
    facts: tuple[tuple[str, str], ...]  # (label, value): site, subsystem, group, started, re-evaluated, ended
    notes: tuple[str, ...]  # collapsed and suppressed counts, in words
    evidence_title: str  # "Evidence (first 5 of 12 signals)"
    evidence: tuple[str, ...]  # compact JSON of the first signals, each clipped
    link: str
    footer: str  # "alert 3f9a… · notification 2 · rule mail-delivery-failing"


def alert_view(record: NotificationRecord, collapsed: int = 0) -> AlertView:
    """Read a notification record (alerts.md) for people; ``collapsed`` > 0 adds a note saying how many it replaces."""
    rule = record.rule
    severity = record.severity.upper()
    resolved = record.status == "resolved"
    summary = plain(record.summary)
    title = single_line(rule.title) or rule.id  # every format needs some text where the title goes
    site = single_line(record.site)
    facts = [("Site", site), ("Subsystem", single_line(record.subsystem))]
    if record.group:
        facts.append(("Group", plain(", ".join(f"{key}={_scalar(value)}" for key, value in record.group.items()))))
    facts += [("Started", record.started_at), ("Re-evaluated", record.evaluated_at)]
    if record.ended_at:
        facts.append(("Ended", record.ended_at))
    notes = []
    if collapsed > 0:
        notes.append(f"Replaces {collapsed} earlier notification{'s' if collapsed != 1 else ''} of this alert, "
                     "held back by the channel's rate limit.")
    if record.suppressed_count > 0:
        count = record.suppressed_count
        notes.append(f"{count} evaluation{'s' if count != 1 else ''} silenced since the previous notification.")
    evidence = record.evidence[:EVIDENCE_SHOWN]
    total = max(record.evidence_total, len(record.evidence))
    if not evidence:
        evidence_title = "No evidence attached"
    elif total > len(evidence):
        evidence_title = f"Evidence (first {len(evidence)} of {total} signals)"
    else:
        evidence_title = f"Evidence ({total} signal{'s' if total != 1 else ''})"
    return AlertView(
        severity=severity,
        resolved=resolved,
        headline=f"[{severity}] {'Resolved: ' if resolved else ''}{title}",
        subject=f"[{severity}] {site}: {title}",
        summary=summary if summary.strip() else "(no summary)",
        description=plain(rule.description or ""),
        facts=tuple(facts),
        notes=tuple(notes),
        evidence_title=evidence_title,
        evidence=tuple(clip(compact_json(signal), EVIDENCE_LINE_CHARS) for signal in evidence),
        link=record.link,
        footer=f"alert {record.alert_id} · notification {record.seq} · rule {rule.id}",
    )


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else compact_json(value)


def clipped(view: AlertView, scale: float = 1.0) -> AlertView:
    """``view`` with the record's texts cut to :data:`TEXT_LIMITS` times ``scale`` (at least 10 characters each)."""

    def cut(text: str, name: str) -> str:
        return clip(text, max(int(TEXT_LIMITS[name] * scale), 10))

    return replace(
        view,
        headline=cut(view.headline, "headline"),
        summary=cut(view.summary, "summary"),
        description=cut(view.description, "description"),
        facts=tuple((label, cut(value, "fact")) for label, value in view.facts),
        evidence=tuple(cut(line, "evidence") for line in view.evidence),
    )
