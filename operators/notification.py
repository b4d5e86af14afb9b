"""Notifications as the engine decides them, and their record form (alerts.md).

The engine builds a small :class:`Notification` with the :data:`Decision`
that made it; the record — a :class:`schemas.alerts.NotificationRecord`,
the one definition of what the flow emits and delivery reads (evidence
decoded, summary written, link added) — is made only when it is written out,
because notifications are rare next to signals.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Literal

from schemas.alerts import NotificationRecord, record_line
from schemas.durations import format_duration, spoken_duration
from schemas.records import evidence_envelope
from schemas.timestamps import format_ts, parse_ts

if TYPE_CHECKING:
    from operators.compiled import CompiledRule

DEFAULT_LINK_BASE = "http://localhost:8080"

Notified = Literal["fired", "renotified", "resolved"]
"""The decisions that emit a notification."""
Decision = Notified | Literal["suppressed"]
"""Why an evaluation of a firing (or just firing) alert came out as it did, named as Alertmanager names its ``NotifyReason``.

``fired``: an episode's first notification (every notification of a ``match``
rule); ``renotified``: a ``firing`` one after ``suppress`` elapsed with the
condition still true; ``resolved``: the episode ended; ``suppressed``: the
condition held (a ``match`` signal arrived) but nothing was sent. A
suppressed instant makes no notification: it is counted in the next
notification's ``suppressed_count`` (rules.md), and that is where its metric
is taken from (:func:`decision_counts`), which keeps the count off the per-signal path.
"""


def alert_id(rule_id: str, site: str, group: str, started_at: int, opener_id: str | None = None) -> str:
    """The episode id: first 32 hex chars of SHA-256 over the episode's identity (rules.md)."""
    text = f"{rule_id}\n{site}\n{group}\n{format_ts(started_at)}"
    if opener_id is not None:
        text += f"\n{opener_id}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class Notification:
    """One notification of one episode, as decided by the engine (and why: ``reason``)."""

    __slots__ = (
        "alert_id", "ended_at", "evaluated_at", "evidence", "evidence_total", "group_json", "order",
        "reason", "rule", "seq", "site", "started_at", "suppressed_count", "value",
    )

    def __init__(
        self, *, rule: CompiledRule, site: str, group_json: str, alert_id: str, seq: int, reason: Notified,
        started_at: int, evaluated_at: int, value: dict[str, Any], suppressed_count: int, evidence: list[bytes],
        evidence_total: int, order: int,
    ) -> None:
        self.rule = rule
        self.site = site
        self.group_json = group_json
        self.alert_id = alert_id
        self.seq = seq
        self.reason = reason
        self.started_at = started_at
        self.evaluated_at = evaluated_at
        self.value = value
        self.suppressed_count = suppressed_count
        self.evidence = evidence
        self.evidence_total = evidence_total
        self.order = order

    @property
    def status(self) -> Literal["firing", "resolved"]:
        """The record's ``status``: what the decision says of the episode."""
        return "resolved" if self.reason == "resolved" else "firing"

    def sort_key(self) -> tuple[Any, ...]:
        """Output order (cli.md), with the per-(site, rule) emission order as a last tie-break."""
        return (self.evaluated_at, self.site, self.rule.id, self.group_json, self.seq, self.alert_id, self.order)

    def record(self, link_base: str = DEFAULT_LINK_BASE) -> NotificationRecord:
        """The notification record.

        Built without validation (``model_construct``): every field comes from
        validated input or the engine, and the flow's output is checked
        against the model by the tests, not per notification at run time.
        """
        rule = self.rule.rule
        return NotificationRecord.model_construct(
            v=1,
            alert_id=self.alert_id,
            seq=self.seq,
            status=self.status,
            rule=self.rule.header,
            severity=rule.severity,
            site=self.site,
            subsystem=rule.subsystem,
            group=json.loads(self.group_json),
            summary=summarize(self),
            started_at=format_ts(self.started_at),
            evaluated_at=format_ts(self.evaluated_at),
            ended_at=format_ts(self.evaluated_at) if self.reason == "resolved" else None,
            value=self.value,
            suppressed_count=self.suppressed_count,
            evidence=[evidence_envelope(raw) for raw in self.evidence],
            evidence_total=self.evidence_total,
            link=f"{link_base.rstrip('/')}/alerts/{self.alert_id}",
            deliver=list(rule.deliver),
        )

    def emitted(self, link_base: str = DEFAULT_LINK_BASE) -> Emitted:
        """The notification as the flow writes it out."""
        record = self.record(link_base)
        return Emitted(sort_key=self.sort_key(), record=record, line=record_line(record), reason=self.reason)

    def to_json(self, link_base: str = DEFAULT_LINK_BASE) -> str:
        """The record as one compact JSON line (no newline)."""
        return record_line(self.record(link_base))


@dataclass(frozen=True, slots=True)
class Emitted:
    """One notification as the flow outputs it: its place in the output order, its record, the record's JSON line."""

    sort_key: tuple[Any, ...]
    record: NotificationRecord
    line: str
    reason: Notified

    @property
    def kafka_key(self) -> str:
        """The key of its Kafka message: the site, as producers key signals, so a site's alerts keep their order."""
        return self.record.site


def decision_counts(emitted: list[Emitted]) -> dict[tuple[str, Decision], int]:
    """Decisions by (rule id, reason): one per notification, plus the ``suppressed`` instants each one reports."""
    counts: dict[tuple[str, Decision], int] = {}
    for item in emitted:
        record = item.record
        key: tuple[str, Decision] = (record.rule.id, item.reason)
        counts[key] = counts.get(key, 0) + 1
        if record.suppressed_count:
            key = (record.rule.id, "suppressed")
            counts[key] = counts.get(key, 0) + record.suppressed_count
    return counts


def _group_text(notification: Notification) -> str:
    if notification.group_json == "{}":
        return ""
    parts = [f"{key}={value}" for key, value in json.loads(notification.group_json).items()]
    return " (" + ", ".join(parts) + ")"


_PREFIXES: dict[Notified, str] = {"fired": "", "renotified": "Still firing: ", "resolved": "Resolved: "}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _local_time(text: str, zone: tzinfo) -> str:
    """An envelope timestamp as a wall-clock time of ``zone``, like ``Tue 1 Dec 09:00`` (English whatever the locale)."""
    moment = (_EPOCH + timedelta(milliseconds=parse_ts(text))).astimezone(zone)
    return f"{_DAYS[moment.weekday()]} {moment.day} {_MONTHS[moment.month - 1]} {moment.hour:02d}:{moment.minute:02d}"


def _absence_text(notification: Notification, types: str) -> str:
    """The silence in human terms: how long (fixed ``after``), or which run is missing (``schedule``).

    A resolution says what arrived: its value is taken at the resolving signal.
    """
    value = notification.value
    schedule = notification.rule.schedule
    resolved = notification.status == "resolved"
    if schedule is None:
        if resolved:
            return f"matching {types} signal seen at {value['last_seen_at']}"
        silent = spoken_duration(round(value["silent_for_s"] * 1000))
        return f"no matching {types} signal for {silent} (last seen {value['last_seen_at']})"
    zone = schedule.zone
    last = _local_time(value["last_seen_at"], zone)
    expected = value["expected_at"]
    if resolved:
        after = "no later run on the schedule" if expected is None else f"next run expected {_local_time(expected, zone)}"
        return f"matching {types} signal seen at {last} {schedule.zone_name} ({after})"
    # Firing means past next(last) + grace, so there is an expected run.
    missed = f"expected {_local_time(expected, zone)} {schedule.zone_name}, {format_duration(schedule.grace)} grace"
    return f"no matching {types} signal since {last} ({missed})"


def summarize(notification: Notification) -> str:
    """One line in human terms: what matched, with the numbers."""
    rule = notification.rule
    value = notification.value
    kind = rule.kind
    window = rule.window_text
    types = "/".join(sorted(rule.types))
    group = _group_text(notification)
    prefix = _PREFIXES[notification.reason]
    if kind == "match":
        count = value["count"]
        text = f"{rule.rule.title}: {count} matching {types} signal{'s' if count != 1 else ''}"
    elif kind == "threshold":
        text = f"{value['count']} matching {types} signals in the last {window} (threshold {rule.params.count})"
    elif kind == "ratio":
        text = f"{value['count']} of {value['total']} {types} signals matched in the last {window} ({value['ratio']:.0%})"
    elif kind == "distinct":
        text = f"{value['distinct']} distinct {rule.params.field} values in the last {window} over {value['count']} signals"
    elif kind == "absence":
        text = _absence_text(notification, types)
    elif value["baseline_count"] == 0:
        text = f"{value['count']} {types} signals in the last {window}, none in the baseline before it"
    else:
        text = f"{value['count']} {types} signals in the last {window} vs {value['baseline_count']} in the baseline (×{value['factor']:g})"
    return prefix + text + group
