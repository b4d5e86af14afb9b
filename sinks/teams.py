"""The ``teams`` channel: an Adaptive Card for a Microsoft Teams Workflows webhook (alerts.md "Channels").

The old Office 365 connector (MessageCard) path is retired; a Workflows
webhook ("Post to a channel when a webhook request is received") takes a
``message`` envelope with one Adaptive Card attachment::

    {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                         "contentUrl": null, "content": {<AdaptiveCard 1.4>}}]}

The card: a headline (``[SEVERITY] title``, coloured by severity, green when
resolved), the summary, the collapsed/suppressed notes, a fact set (site,
subsystem, group, started, re-evaluated, ended), up to five evidence lines in
monospace, the rule description and ids, and an "Open alert" button to
``link``. The whole request body stays within :data:`MAX_BYTES` (Teams' 28 KB
message limit read strictly) whatever the alert: texts are cut to the limits
of :data:`sinks.alert_view.TEXT_LIMITS`, and when the encoded message is still
too big (four-byte characters everywhere, a long link) those limits are
scaled down, to a tenth at most, and the card rendered again.

Teams answers ``202 Accepted`` once the workflow has *taken* the request:
that is recorded as delivered, but it is not proof the card was posted — the
workflow runs afterwards, and its failures show only in the workflow's run
history. Texts are not markdown-escaped (Adaptive Card hosts differ in what
they honour), so a ``*`` in the record may render as emphasis.

Delivery guarantee and backpressure: those of :class:`sinks.channel.HttpChannel`.
"""

from __future__ import annotations

from typing import Any

from schemas.alerts import NotificationRecord, ReceivedRecord
from schemas.records import compact_json
from schemas.rules import TeamsChannel
from sinks.alert_view import AlertView, alert_view, clipped
from sinks.channel import HttpChannel, json_request

MAX_BYTES = 28_000
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
URL_CHARS = 3000
SCALES = (1.0, 0.5, 0.25, 0.1)
_COLOURS = {"CRITICAL": "Attention", "HIGH": "Attention", "MEDIUM": "Warning", "LOW": "Accent", "INFO": "Accent"}


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def _card(view: AlertView) -> dict[str, Any]:
    colour = "Good" if view.resolved else _COLOURS.get(view.severity, "Default")
    body = [_text(view.headline, size="Large", weight="Bolder", color=colour), _text(view.summary)]
    body += [_text(note, isSubtle=True) for note in view.notes]
    body.append({"type": "FactSet", "facts": [{"title": label, "value": value} for label, value in view.facts]})
    if view.evidence:
        body.append(_text(view.evidence_title, weight="Bolder", spacing="Medium"))
        body += [_text(line, fontType="Monospace", size="Small", spacing="None") for line in view.evidence]
    if view.description:
        body.append(_text(view.description, isSubtle=True, spacing="Medium"))
    body.append(_text(view.footer, isSubtle=True, size="Small"))
    card: dict[str, Any] = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                            "version": "1.4", "msteams": {"width": "Full"}, "body": body}
    if view.link.startswith(("https://", "http://")) and len(view.link) <= URL_CHARS:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open alert", "url": view.link}]
    return card


def _message(card: dict[str, Any]) -> bytes:
    envelope = {"type": "message", "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": None, "content": card}]}
    return compact_json(envelope).encode("utf-8")


def render(record: NotificationRecord, collapsed: int = 0) -> bytes:
    """The request body of one notification: a message with one Adaptive Card, at most :data:`MAX_BYTES`."""
    view = alert_view(record, collapsed)
    for scale in SCALES[:-1]:
        body = _message(_card(clipped(view, scale)))
        if len(body) <= MAX_BYTES:
            return body
    # At the smallest scale every text of a valid record is cut short enough: about 10 KB at most even when
    # every character is an escaped control character (6 bytes of JSON each).
    return _message(_card(clipped(view, SCALES[-1])))


class TeamsSender(HttpChannel):
    """Adaptive Cards to one Teams Workflows webhook."""

    config: TeamsChannel

    def request(self, notification: ReceivedRecord, collapsed: int) -> tuple[bytes, dict[str, str]]:
        """The JSON body; the Workflows trigger needs no other header."""
        return json_request(render(notification.record, collapsed))
