"""The ``slack`` channel: a Block Kit message for a Slack incoming webhook (alerts.md "Channels").

The message has at most six blocks, whatever the alert: a header
(``[SEVERITY] title``), a section with the summary (and the collapsed and
suppressed counts), a section of fields (site, subsystem, group, started,
re-evaluated, ended), a section with a short evidence excerpt in a code
block, a button to ``link``, and a context line (rule description, alert id,
notification number, rule id). Slack's limits — 50 blocks, 150 characters of
header, 3,000 per section text, 2,000 per field, 3,000 per URL — hold because
every text is cut to its limit *after* escaping; evidence lines that do not
fit are left out whole. A ``link`` longer than a Slack URL may be (or not
http(s)) gets no button.

Slack answers ``200 ok``; errors are short text bodies with the status
(``400 invalid_blocks``, ``403 invalid_token``, ``404 no_service``,
``410 channel_is_archived``, ``429`` with ``Retry-After``, ``500
rollup_error``). They map by status like every HTTP channel (408/429/5xx
retryable, other 4xx permanent) and the body's code is the error text.

Delivery guarantee and backpressure: those of :class:`sinks.channel.HttpChannel`.
"""

from __future__ import annotations

from typing import Any

from schemas.alerts import NotificationRecord, ReceivedRecord
from schemas.records import compact_json
from schemas.rules import SlackChannel
from sinks.alert_view import AlertView, alert_view, clip, fit
from sinks.channel import HttpChannel, json_request

HEADER_CHARS = 150
SECTION_CHARS = 3000
FIELD_CHARS = 2000
URL_CHARS = 3000
FALLBACK_CHARS = 1000
"""The top-level ``text``: what a phone notification shows; Slack allows far more, nobody reads it."""


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: only ``&``, ``<`` and ``>`` (so record text never becomes a link or a mention)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """Escaped for a code block: a triple backtick in the text must not close the block (a zero-width space splits it)."""
    return escape(text).replace("```", "`\u200b`\u200b`")


def _mrkdwn(text: str, limit: int) -> dict[str, str]:
    return {"type": "mrkdwn", "text": fit(text, limit, escape)}


def _evidence(view: AlertView) -> dict[str, Any]:
    """The excerpt as a code block of whole lines; the first always fits (300 characters, at most five times longer escaped)."""
    head, tail = f"*{escape(view.evidence_title)}*\n```", "```"
    lines: list[str] = []
    for line in map(_code, view.evidence):
        if len(head) + len("\n".join([*lines, line])) + len(tail) > SECTION_CHARS:
            break
        lines.append(line)
    return {"type": "section", "text": {"type": "mrkdwn", "text": head + "\n".join(lines) + tail}}


def render(record: NotificationRecord, collapsed: int = 0) -> dict[str, Any]:
    """The incoming-webhook payload (``text`` fallback and ``blocks``) of one notification."""
    view = alert_view(record, collapsed)
    notes = "".join(f"\n_{escape(note)}_" for note in view.notes)  # never cut: the collapsed count must show
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(view.headline, HEADER_CHARS)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": fit(view.summary, SECTION_CHARS - len(notes), escape) + notes}},
        {"type": "section", "fields": [_mrkdwn(f"*{label}*\n{value}", FIELD_CHARS) for label, value in view.facts]},
    ]
    if view.evidence:
        blocks.append(_evidence(view))
    if view.link.startswith(("https://", "http://")) and len(view.link) <= URL_CHARS:
        button = {"type": "button", "text": {"type": "plain_text", "text": "Open alert"}, "url": view.link}
        blocks.append({"type": "actions", "elements": [button]})
    context = [view.description, view.footer] if view.description else [view.footer]
    blocks.append({"type": "context", "elements": [_mrkdwn(text, SECTION_CHARS) for text in context]})
    return {"text": fit(f"{view.headline}: {view.summary}", FALLBACK_CHARS, escape), "blocks": blocks}


def render_bytes(record: NotificationRecord, collapsed: int = 0) -> bytes:
    """The request body: the payload as compact UTF-8 JSON."""
    return compact_json(render(record, collapsed)).encode("utf-8")


class SlackSender(HttpChannel):
    """Block Kit messages to one Slack incoming webhook."""

    config: SlackChannel

    def request(self, notification: ReceivedRecord, collapsed: int) -> tuple[bytes, dict[str, str]]:
        """The JSON body; Slack needs no other header."""
        return json_request(render_bytes(notification.record, collapsed))
