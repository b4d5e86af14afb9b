"""What each service documents it accepts, checked independently of our renderers: Slack Block Kit, Teams Adaptive Cards, e-mail.

The checks are written from the services' documented limits, so the
receivers (``tests/support/receivers.py``) and the golden-file tests call the
same ones, and a renderer cannot pass by agreeing with itself.
"""

from __future__ import annotations

import json
import re
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any

# Slack's documented Block Kit limits (api.slack.com/reference/block-kit).
SLACK_MAX_BLOCKS = 50
SLACK_HEADER_CHARS = 150
SLACK_SECTION_CHARS = 3000
SLACK_FIELD_CHARS = 2000
SLACK_MAX_FIELDS = 10
SLACK_CONTEXT_ELEMENTS = 10
SLACK_BUTTON_TEXT = 75
SLACK_URL_CHARS = 3000
_BUTTON_KEYS = {"type", "text", "url", "action_id", "style", "value"}
_SLACK_BLOCK_KEYS = {
    "header": {"type", "text", "block_id"},
    "section": {"type", "text", "fields", "accessory", "block_id"},
    "context": {"type", "elements", "block_id"},
    "actions": {"type", "elements", "block_id"},
    "divider": {"type", "block_id"},
}


def _text_object(value: Any, where: str, limit: int, kinds: tuple[str, ...] = ("plain_text", "mrkdwn")) -> list[str]:
    if not isinstance(value, dict) or value.get("type") not in kinds or not set(value) <= {"type", "text", "emoji", "verbatim"}:
        return [f"{where}: not a text object of type {'/'.join(kinds)}: {value!r:.80}"]
    text = value.get("text")
    if not isinstance(text, str) or not text:
        return [f"{where}: empty text"]
    return [f"{where}: {len(text)} chars, limit {limit}"] if len(text) > limit else []


def _slack_block(block: Any, where: str) -> list[str]:
    if not isinstance(block, dict) or block.get("type") not in _SLACK_BLOCK_KEYS:
        return [f"{where}: unknown block {block!r:.80}"]
    kind = block["type"]
    if extra := set(block) - _SLACK_BLOCK_KEYS[kind]:
        return [f"{where}: unknown keys {sorted(extra)}"]
    if kind == "header":
        return _text_object(block.get("text"), f"{where} header", SLACK_HEADER_CHARS, ("plain_text",))
    if kind == "section":
        if "text" not in block and "fields" not in block:
            return [f"{where}: section without text or fields"]
        problems = _text_object(block["text"], f"{where} section text", SLACK_SECTION_CHARS) if "text" in block else []
        fields = block.get("fields", [])
        if not isinstance(fields, list) or len(fields) > SLACK_MAX_FIELDS or ("fields" in block and not fields):
            problems.append(f"{where}: fields must be 1..{SLACK_MAX_FIELDS}")
            return problems
        for index, item in enumerate(fields):
            problems += _text_object(item, f"{where} field {index}", SLACK_FIELD_CHARS)
        return problems
    if kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= SLACK_CONTEXT_ELEMENTS:
            return [f"{where}: context needs 1..{SLACK_CONTEXT_ELEMENTS} elements"]
        return [problem for index, item in enumerate(elements) for problem in _text_object(item, f"{where} element {index}", 3000)]
    if kind == "actions":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
            return [f"{where}: actions need 1..25 elements"]
        problems = []
        for index, button in enumerate(elements):
            if not isinstance(button, dict) or button.get("type") != "button" or not set(button) <= _BUTTON_KEYS:
                problems.append(f"{where} element {index}: not a button")
                continue
            problems += _text_object(button.get("text"), f"{where} button {index}", SLACK_BUTTON_TEXT, ("plain_text",))
            url = button.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > SLACK_URL_CHARS:
                problems.append(f"{where} button {index}: bad url")
        return problems
    return []


def slack_problems(payload: Any) -> list[str]:
    """What Slack would reject (or cut) in an incoming-webhook payload with blocks."""
    if not isinstance(payload, dict) or not set(payload) <= {"text", "blocks", "unfurl_links", "unfurl_media", "username", "icon_emoji"}:
        return [f"payload keys {sorted(payload) if isinstance(payload, dict) else payload!r:.80}"]
    problems = []
    if not isinstance(payload.get("text"), str) or not payload["text"]:
        problems.append("no top-level text (the notification fallback)")
    blocks = payload.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= SLACK_MAX_BLOCKS:
        return [*problems, f"blocks must be a list of 1..{SLACK_MAX_BLOCKS}"]
    for index, block in enumerate(blocks):
        problems += _slack_block(block, f"block {index}")
    return problems


TEAMS_MAX_BYTES = 28_000
"""Teams' message limit is "28 KB"; the strict reading (decimal kilobytes) is checked."""
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
_CARD_ELEMENTS = {"TextBlock", "FactSet", "Container", "ColumnSet", "Column", "RichTextBlock", "TextRun"}


def _card_element_problems(element: Any, where: str) -> list[str]:
    if not isinstance(element, dict) or element.get("type") not in _CARD_ELEMENTS:
        return [f"{where}: unknown card element {element!r:.80}"]
    kind = element["type"]
    if kind in ("TextBlock", "TextRun") and (not isinstance(element.get("text"), str) or not element["text"]):
        return [f"{where}: {kind} without text"]
    if kind == "FactSet":
        facts = element.get("facts")
        if not isinstance(facts, list) or not facts or not all(
            isinstance(fact, dict) and set(fact) == {"title", "value"} and all(isinstance(v, str) for v in fact.values()) for fact in facts
        ):
            return [f"{where}: FactSet facts must be {{title, value}} strings"]
    children = element.get("items") or element.get("columns") or element.get("inlines") or []
    return [problem for index, child in enumerate(children) for problem in _card_element_problems(child, f"{where}.{index}")]


def teams_problems(raw: bytes) -> list[str]:
    """What a Teams Workflows webhook ("post to a channel when a webhook request is received") would not show."""
    problems = [f"{len(raw)} bytes, limit {TEAMS_MAX_BYTES}"] if len(raw) > TEAMS_MAX_BYTES else []
    try:
        message = json.loads(raw)
    except ValueError as error:
        return [*problems, f"body is not JSON: {error}"]
    attachments = message.get("attachments") if isinstance(message, dict) else None
    if not isinstance(message, dict) or message.get("type") != "message" or not isinstance(attachments, list) or len(attachments) != 1:
        return [*problems, "not a message envelope with one attachment"]
    attachment = attachments[0]
    if not isinstance(attachment, dict) or attachment.get("contentType") != ADAPTIVE_CARD \
            or not isinstance(attachment.get("content"), dict):
        return [*problems, f"attachment is not an Adaptive Card: {attachment!r:.80}"]
    card = attachment["content"]
    if card.get("type") != "AdaptiveCard" or card.get("version") not in ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5"):
        problems.append(f"card type {card.get('type')!r} version {card.get('version')!r}")
    body = card.get("body")
    if not isinstance(body, list) or not body:
        return [*problems, "card without body"]
    for index, element in enumerate(body):
        problems += _card_element_problems(element, f"body.{index}")
    for index, action in enumerate(card.get("actions", [])):
        url = action.get("url") if isinstance(action, dict) else None
        if not isinstance(action, dict) or action.get("type") != "Action.OpenUrl" or not action.get("title") or not isinstance(url, str) \
                or not url.startswith(("http://", "https://")):
            problems.append(f"action {index}: not an Action.OpenUrl with title and url")
    return problems


_ALLOWED_HTML = {"html", "head", "meta", "title", "body", "h1", "h2", "p", "table", "tr", "th", "td", "pre", "a", "strong", "div", "span"}
_SUBJECT = re.compile(r"^\[(CRITICAL|HIGH|MEDIUM|LOW|INFO)\] [a-z0-9][a-z0-9._-]*: \S.*$")
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)


def message_ids(message: EmailMessage, header: str) -> list[str]:
    """The message ids a threading header (``In-Reply-To``, ``References``) lists."""
    return str(message.get(header, "") or "").split()


def email_problems(message: EmailMessage) -> list[str]:
    """Headers, both parts, threading headers and an HTML part whose tags are all ours (escaping worked)."""
    problems = []
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        if not message.get(name):
            problems.append(f"no {name}")
    if message.get("Auto-Submitted") != "auto-generated":
        problems.append(f"Auto-Submitted {message.get('Auto-Submitted')!r}")
    if not _SUBJECT.match(str(message.get("Subject", ""))):
        problems.append(f"subject {message.get('Subject')!r} is not '[SEVERITY] site: title'")
    ids = [str(message.get("Message-ID", "")), *message_ids(message, "In-Reply-To"), *message_ids(message, "References")]
    problems += [f"malformed message id {value!r}" for value in ids if not _MESSAGE_ID.match(value)]
    if bool(message.get("In-Reply-To")) != bool(message.get("References")) or (
        message.get("In-Reply-To") and str(message["In-Reply-To"]) not in message_ids(message, "References")
    ):
        problems.append("In-Reply-To and References disagree")
    if message.get_content_type() != "multipart/alternative":
        return [*problems, f"content type {message.get_content_type()}, expected multipart/alternative"]
    parts = list(message.iter_parts())
    if [part.get_content_type() for part in parts] != ["text/plain", "text/html"]:
        return [*problems, f"parts {[part.get_content_type() for part in parts]}, expected text/plain then text/html"]
    if not all(part.get_content_charset() == "utf-8" for part in parts):
        problems.append("a part is not utf-8")
    tags = _Tags()
    tags.feed(parts[1].get_content())  # type: ignore[attr-defined]
    if unexpected := tags.tags - _ALLOWED_HTML:
        problems.append(f"unexpected HTML tags {sorted(unexpected)} (record text not escaped?)")
    return problems
