"""Rendered payloads of every channel against golden files in ``tests/sinks/golden/``, byte for byte.

Cases: a firing notification, the resolved one, one that replaces collapsed
notifications (rate limit), and the largest, most hostile record we can build
(webhook bodies are the record itself, so the webhook has no huge case).
Slack and Teams payloads are kept pretty-printed, so a diff is readable; the
test checks the golden text and also that the wire body is exactly the
compact encoding of it. E-mails are kept as the exact bytes sent (CRLF).

After an intended change of rendering, regenerate and review the diff::

    LOGYSTERA_UPDATE_GOLDEN=1 .venv/bin/pytest tests/sinks/test_channel_golden.py
    git diff tests/sinks/golden/
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sinks import email as email_channel
from sinks import slack, teams, webhook
from tests.support.factories import huge_notification, make_notification, received, resolved_notification, typed
from tests.support.limits import slack_problems, teams_problems

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LOGYSTERA_UPDATE_GOLDEN") == "1"
DATE = 1795860840.0  # 2026-11-28T10:14:00Z, the notification's own time
CASES: dict[str, Callable[[], tuple[dict[str, Any], int]]] = {
    "firing": lambda: (make_notification(), 0),
    "resolved": lambda: (resolved_notification(), 0),
    "collapsed": lambda: (make_notification(seq=5, summary="Still firing: 14 of 15 mail signals matched in the last 15m (93%)",
                                            suppressed_count=3), 4),
    "huge": lambda: (huge_notification(), 2),
}


def check_golden(name: str, data: bytes) -> None:
    """Compare with ``golden/name`` (or write it when regenerating)."""
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"{path} is missing: regenerate with LOGYSTERA_UPDATE_GOLDEN=1"
    assert data == path.read_bytes(), f"{name} differs from its golden file (regenerate and review the diff if intended)"


def shows_collapsed(rendered: str, collapsed: int) -> bool:
    """Whether a human-facing rendering says how many notifications this one replaces (it must, when any)."""
    return (f"Replaces {collapsed} earlier notification" in rendered) == (collapsed > 0)


def pretty(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def compact(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("case", [case for case in CASES if case != "huge"])
def test_webhook_body(case: str) -> None:
    notification, collapsed = CASES[case]()
    body = webhook.render(received(notification), collapsed)
    check_golden(f"webhook-{case}.json", body + b"\n")
    sent = json.loads(body)
    assert sent.pop("collapsed", 0) == collapsed
    assert sent == notification and list(sent) == list(notification)  # the record itself, keys in order


@pytest.mark.parametrize("case", CASES)
def test_slack_payload(case: str) -> None:
    notification, collapsed = CASES[case]()
    payload = slack.render(typed(notification), collapsed)
    check_golden(f"slack-{case}.json", pretty(payload))
    assert slack.render_bytes(typed(notification), collapsed) == compact(json.loads((GOLDEN / f"slack-{case}.json").read_bytes()))
    assert slack_problems(payload) == []
    assert shows_collapsed(json.dumps(payload, ensure_ascii=False), collapsed)


@pytest.mark.parametrize("case", CASES)
def test_teams_payload(case: str) -> None:
    notification, collapsed = CASES[case]()
    body = teams.render(typed(notification), collapsed)
    check_golden(f"teams-{case}.json", pretty(json.loads(body)))
    assert body == compact(json.loads((GOLDEN / f"teams-{case}.json").read_bytes()))
    assert teams_problems(body) == []
    assert shows_collapsed(body.decode(), collapsed)


@pytest.mark.parametrize("case", CASES)
def test_email_message(case: str) -> None:
    notification, collapsed = CASES[case]()
    message = email_channel.render(typed(notification), collapsed, sender="Logystera <alerts@logystera.example>",
                                   to=["ops@example.com", "oncall@example.com"], date=DATE)
    check_golden(f"email-{case}.eml", message.as_bytes())
    assert all(shows_collapsed(part.get_content(), collapsed) for part in message.iter_parts())  # type: ignore[attr-defined]
