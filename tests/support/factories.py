"""Notification records for the channel and delivery tests: alerts.md's example, its resolved form, and the largest, most hostile one.

Each is validated against ``schemas.alerts.NotificationRecord`` when made, so
a test never sends a record the flow could not emit (except the huge one, on
purpose); :func:`typed` and :func:`received` give the forms channels take.
"""

from __future__ import annotations

from typing import Any

from schemas.alerts import NotificationRecord, ReceivedRecord, RuleSummary
from schemas.records import compact_json

ALERT_ID = "3f9a0c1d2e4b5a697887766554433221"
HOSTILE = "<script>alert('x')</script> & <@U123> *bold* _it_ ``` [link](http://evil.example) \u00e9\U0001f525\r\n\x00"
"""Text that breaks every format it is not escaped for: HTML, Slack mrkdwn and mentions, code fences, headers, JSON."""


def make_notification(**changes: Any) -> dict[str, Any]:
    """A valid notification record (alerts.md's example, three evidence signals), with ``changes`` applied on top."""
    evidence = [
        {"v": 1, "id": f"01JDQ3V6Z8Q6W5M2Y0XK7R4T{index:02d}", "site": "shop-eu", "type": "mail",
         "ts": f"2026-11-28T10:1{index}:00.000Z", "data": {"outcome": "failed", "transport": "smtp", "error_class": "timeout"}}
        for index in range(3)
    ]
    record: dict[str, Any] = {
        "v": 1, "alert_id": ALERT_ID, "seq": 1, "status": "firing",
        "rule": {"id": "mail-delivery-failing", "title": "Mail delivery is failing", "kind": "ratio",
                 "description": "Most outbound mail failed over the last 15 minutes."},
        "severity": "high", "site": "shop-eu", "subsystem": "mail", "group": {"transport": "smtp"},
        "summary": "12 of 15 mail signals matched in the last 15m (80%) (transport=smtp)",
        "started_at": "2026-11-28T10:14:00.000Z", "evaluated_at": "2026-11-28T10:14:00.000Z", "ended_at": None,
        "value": {"count": 12, "total": 15, "ratio": 0.8}, "suppressed_count": 0,
        "evidence": evidence, "evidence_total": 12,
        "link": f"http://localhost:8080/alerts/{ALERT_ID}", "deliver": ["oncall"],
    }
    record.update(changes)
    if "link" not in changes:  # the link names the alert
        record["link"] = f"http://localhost:8080/alerts/{record['alert_id']}"
    NotificationRecord.model_validate(record)
    return record


def resolved_notification(**changes: Any) -> dict[str, Any]:
    """The same alert, resolved (notification 3)."""
    return make_notification(**{"seq": 3, "status": "resolved", "evaluated_at": "2026-11-28T10:44:00.000Z",
                                "ended_at": "2026-11-28T10:44:00.000Z", "evidence": [], "evidence_total": 0,
                                "summary": "Resolved: 1 of 15 mail signals matched in the last 15m (7%) (transport=smtp)",
                                "value": {"count": 1, "total": 15, "ratio": 0.0667}, **changes})


def huge_notification() -> dict[str, Any]:
    """Larger and more hostile than any valid record (``deliver`` rejects it): a channel's every limit must still hold."""
    long = (HOSTILE + "é✓🔥") * 60
    evidence = [
        {"v": 1, "id": f"id-{index:03d}", "site": "s" * 63, "type": "php_error", "ts": "2026-11-28T10:14:00.000Z",
         "data": {"level": "fatal", "component": "plugin:" + "🔥" * 100, "file": HOSTILE * 10, "message_hash": "a" * 64}}
        for index in range(100)
    ]
    return make_notification() | dict(
        rule={"id": "r" * 64, "title": long[:1000], "kind": "match", "description": long[:1000]},
        site="s" * 63, subsystem="x" * 32, summary=long * 3, severity="critical",
        group={"component": long[:500], "file": long[:500], "level": HOSTILE},
        value={"count": 10**9}, suppressed_count=123456, evidence=evidence, evidence_total=10**9,
        link="https://logystera.example/alerts/" + "a" * 2500, seq=7,
    )


def typed(record: dict[str, Any]) -> NotificationRecord:
    """``record`` as the typed model, not validated: hostile records too, since a renderer must not rely on validation."""
    return NotificationRecord.model_construct(**{**record, "rule": RuleSummary.model_construct(**record["rule"])})


def received(record: dict[str, Any]) -> ReceivedRecord:
    """``record`` as delivery receives it: the typed record and its compact JSON line, as the flow writes it."""
    return ReceivedRecord(typed(record), compact_json(record).encode("utf-8"))
