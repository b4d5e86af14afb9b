"""Real receivers on loopback for the delivery tests: webhook, Slack, Teams and SMTP.

Each is a real server in a background thread (``http.server`` for HTTP,
``aiosmtpd`` for SMTP), started on a free port of 127.0.0.1 and usable as a
context manager. Each records every request it got (``received`` /
``messages``) together with the problems it found in it, and answers like the
real service: a webhook receiver verifies ``webhook-signature`` with the
independent ``standardwebhooks`` package; the Slack endpoint answers ``ok``
or a Slack-style error text, the Teams endpoint ``202``; the SMTP server
``250``. Tell one to misbehave with a script:

    with WebhookReceiver(secret="whsec_...") as hook:
        hook.answer(Reply(500), Reply(429, headers={"retry-after": "7"}), Hang(5.0))
        ...                                   # the next three requests get these answers
        hook.wait_for(4)                      # event-based, with a deadline
        assert not hook.problems

``stop()`` makes the port refuse connections until ``start()`` again (same
port); :func:`refused_url` is a URL nobody listens on. The checks
(:func:`slack_problems`, :func:`teams_problems`, :func:`email_problems`) are
written from the services' documented limits, not from our renderers, so
golden-file tests can call them too.

Import from tests as ``from tests.sinks.receivers import ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from standardwebhooks import Webhook, WebhookVerificationError

from schemas.alerts import NotificationRecord
from schemas.rules import Channel
from sinks.channel import SendResult, open_sender

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
WAIT = 10.0
"""Default deadline of :meth:`wait_for`: generous, since the machine is shared; a passing test never waits it out."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def refused_url(path: str = "/hook") -> str:
    """An HTTP URL on loopback whose connections are refused."""
    return f"http://{LOOPBACK}:{free_port()}{path}"


# -- notifications ---------------------------------------------------------------------------------------------

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


def send_all(config: Channel, *notifications: Mapping[str, Any], environ: Mapping[str, str] | None = None, collapsed: int = 0,
             timeout: float = 5.0, clock: Callable[[], float] = time.time) -> list[SendResult]:
    """Open the channel's sender, send each notification once (in order, in one event loop), close it; the results."""

    async def run() -> list[SendResult]:
        sender = open_sender(config, environ or {}, timeout=timeout, clock=clock)
        try:
            return [await sender.send(notification, collapsed) for notification in notifications]
        finally:
            await sender.aclose()

    return asyncio.run(run())


# -- HTTP ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Answer the next request with this status, headers and body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hang:
    """Hold the next request without answering for ``seconds`` (or until :meth:`HttpReceiver.release`), then answer normally."""

    seconds: float


@dataclass
class Received:
    """One request as the receiver got it, what it found wrong with it, and what it answered."""

    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float
    problems: list[str]
    status: int = 0
    answered: bool = False  # the answer was written to the client

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class _Recorder(Generic[T]):
    """What every receiver does: record what arrived, let a test wait for it, hold answers until released."""

    noun = "requests"

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = threading.Condition()
        self._release = threading.Event()

    def release(self) -> None:
        """Let every held request go now."""
        self._release.set()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[T]:
        """Block until at least ``count`` have arrived; fail, saying how many came, after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._items) >= count, timeout):
                raise AssertionError(f"expected {count} {self.noun} within {timeout}s, got {len(self._items)}")
            return list(self._items)

    def wait_until(self, ready: Callable[[list[T]], bool], what: str, timeout: float = WAIT) -> list[T]:
        """Block until ``ready`` holds for what arrived so far (checked at each arrival or answer); fail after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: ready(self._items), timeout):
                raise AssertionError(f"{what}: not within {timeout}s ({len(self._items)} {self.noun})")
            return list(self._items)

    def _record(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def start(self) -> None:
        """Start listening."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop listening."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()


class HttpReceiver(_Recorder[Received]):
    """An HTTP server on loopback that records POSTs, checks them with :meth:`check`, and answers as scripted."""

    path = "/hook"
    ok = Reply(200)
    invalid = Reply(400, b"invalid payload")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self.script: deque[Reply | Hang] = deque()
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def received(self) -> list[Received]:
        """Every request so far (answered, or held by :class:`Hang`), in arrival order."""
        return self._items

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://{LOOPBACK}:{self.port}{self.path}"

    @property
    def problems(self) -> list[str]:
        """Every problem found in every request so far, prefixed with the request's number."""
        return [f"request {index}: {problem}" for index, seen in enumerate(self.received, 1) for problem in seen.problems]

    def check(self, seen: Received) -> list[str]:
        """What is wrong with one request (overridden per service); an invalid request is answered with :attr:`invalid`."""
        return []

    def answer(self, *actions: Reply | Hang) -> None:
        """Queue answers for the next requests, in order; after them the receiver answers normally again."""
        with self._changed:
            if any(isinstance(action, Hang) for action in actions):
                self._release.clear()
            self.script.extend(actions)

    def start(self) -> None:
        """Listen (again) on :attr:`port`."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with receiver._changed:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._changed:
                    receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                receiver._handle(self)

        self._release.clear()
        server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        server.daemon_threads = True
        server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # a client that gave up
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`; held requests are let go."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._changed:  # kept-alive connections too: a server that went down answers nothing more
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        seen = Received(handler.path, {name.lower(): value for name, value in handler.headers.items()},
                        handler.rfile.read(length), self.clock(), [])
        if seen.path != self.path:
            seen.problems.append(f"path {seen.path}, expected {self.path}")
        seen.problems.extend(self.check(seen))
        with self._changed:
            action = self.script.popleft() if self.script else None
        reply = action if isinstance(action, Reply) else (self.invalid if seen.problems else self.ok)
        seen.status = reply.status
        self._record(seen)
        if isinstance(action, Hang):  # recorded first: the request arrived, the answer comes too late
            self._release.wait(action.seconds)
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.send_header("content-length", str(len(reply.body)))
            handler.end_headers()
            handler.wfile.write(reply.body)
            handler.wfile.flush()
        except OSError:
            return  # the client gave up (timeout) before the answer
        with self._changed:
            seen.answered = True
            self._changed.notify_all()


class WebhookReceiver(HttpReceiver):
    """A webhook endpoint: verifies Standard Webhooks signatures (``secret`` given) and checks the id against the body."""

    ok = Reply(204)
    invalid = Reply(401, b'{"error":"invalid signature or body"}', {"content-type": "application/json"})

    def __init__(self, secret: str | bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.secret = secret

    def check(self, seen: Received) -> list[str]:
        """Signature (``standardwebhooks``), content type, ``webhook-id`` = ``alert_id:seq`` of the body."""
        problems: list[str] = []
        if seen.headers.get("content-type") != "application/json":
            problems.append(f"content-type {seen.headers.get('content-type')!r}")
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(seen.body, seen.headers)
            except WebhookVerificationError as error:
                problems.append(f"signature: {error}")
        elif "webhook-signature" in seen.headers:
            problems.append("signed without a secret")
        if not re.fullmatch(r"\d+", seen.headers.get("webhook-timestamp", "")):
            problems.append(f"webhook-timestamp {seen.headers.get('webhook-timestamp')!r}")
        try:
            body = seen.json
        except ValueError as error:
            return [*problems, f"body is not JSON: {error}"]
        expected = f"{body.get('alert_id')}:{body.get('seq')}" if isinstance(body, dict) else None
        if seen.headers.get("webhook-id") != expected:
            problems.append(f"webhook-id {seen.headers.get('webhook-id')!r}, body says {expected!r}")
        return problems


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


class SlackReceiver(HttpReceiver):
    """A Slack incoming-webhook endpoint: ``200 ok``, or ``400 invalid_blocks`` when the payload breaks Slack's limits."""

    path = "/services/T0000000000/B0000000000/XXXXXXXXSECRETTOKEN24CH"
    ok = Reply(200, b"ok", {"content-type": "text/plain"})
    invalid = Reply(400, b"invalid_blocks", {"content-type": "text/plain"})

    def check(self, seen: Received) -> list[str]:
        """Content type and :func:`slack_problems`."""
        if seen.headers.get("content-type") != "application/json":
            return [f"content-type {seen.headers.get('content-type')!r}"]
        try:
            return slack_problems(seen.json)
        except ValueError as error:
            return [f"body is not JSON: {error}"]


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


class TeamsReceiver(HttpReceiver):
    """A Teams Workflows webhook: ``202 Accepted`` (accepted, not yet shown), ``400`` for what Teams would not show."""

    path = "/workflows/0123456789abcdef/triggers/manual/paths/invoke?api-version=1&sig=XXXXXXXXXXXXXXXXSECRETSIGNATURE43CHARSXXXX"
    ok = Reply(202)
    invalid = Reply(400, b'{"error":{"code":"InvalidRequestContent","message":"bad card"}}', {"content-type": "application/json"})

    def check(self, seen: Received) -> list[str]:
        """Content type and :func:`teams_problems`."""
        if seen.headers.get("content-type") != "application/json":
            return [f"content-type {seen.headers.get('content-type')!r}"]
        return teams_problems(seen.body)


# -- SMTP ------------------------------------------------------------------------------------------------------

_ALLOWED_HTML = {"html", "head", "meta", "title", "body", "h1", "h2", "p", "table", "tr", "th", "td", "pre", "a", "strong", "div", "span"}
_SUBJECT = re.compile(r"^\[(CRITICAL|HIGH|MEDIUM|LOW|INFO)\] [a-z0-9][a-z0-9._-]*: \S.*$")
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)


def _ids(message: EmailMessage, header: str) -> list[str]:
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
    ids = [str(message.get("Message-ID", "")), *_ids(message, "In-Reply-To"), *_ids(message, "References")]
    problems += [f"malformed message id {value!r}" for value in ids if not _MESSAGE_ID.match(value)]
    if bool(message.get("In-Reply-To")) != bool(message.get("References")) or (
        message.get("In-Reply-To") and str(message["In-Reply-To"]) not in _ids(message, "References")
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


@dataclass
class Mail:
    """One message the SMTP server accepted, with its envelope and session."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    tls: bool
    login: str | None
    problems: list[str]


class _Handler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        scripted = self.receiver._next("RCPT")
        if scripted is not None:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        scripted = self.receiver._next("DATA")
        if scripted == "hang":
            self.receiver.holding.set()
            await asyncio.to_thread(self.receiver._release.wait, WAIT)
            scripted = None
        if scripted is not None:
            return scripted
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        mail = Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message, raw, session.ssl is not None, login, email_problems(message))
        self.receiver._record(mail)
        return "250 2.0.0 Message accepted"


class SmtpReceiver(_Recorder[Mail]):
    """An aiosmtpd server on loopback; optionally STARTTLS (``tls``) and AUTH (``credentials``, offered only after STARTTLS).

    ``answer("RCPT", "450 4.2.1 Mailbox busy")`` or ``answer("DATA", "554 5.7.1 Rejected")``
    makes the next RCPT or DATA fail with that reply; ``answer("DATA", "hang")``
    holds the next DATA until :meth:`release` (a server that stops answering).
    """

    noun = "messages"

    def __init__(self, *, tls: ssl.SSLContext | None = None, credentials: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.logins: list[tuple[str, bool]] = []  # (login, succeeded)
        self.credentials = credentials
        self.script: deque[tuple[str, str]] = deque()
        self.holding = threading.Event()
        """Set once a DATA command is being held (``answer("DATA", "hang")``)."""
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs |= {"tls_context": tls, "require_starttls": True}
        if credentials is not None:
            kwargs |= {"authenticator": self._authenticate, "auth_required": True, "auth_require_tls": tls is not None}
        self._controller = _FreePortController(_Handler(self), hostname=LOOPBACK, port=0, **kwargs)

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        return int(self._controller.port)

    @property
    def messages(self) -> list[Mail]:
        """Every message accepted so far."""
        return self._items

    @property
    def problems(self) -> list[str]:
        """Every problem found in every accepted message, prefixed with its number."""
        return [f"message {index}: {problem}" for index, mail in enumerate(self.messages, 1) for problem in mail.problems]

    def answer(self, command: str, reply: str) -> None:
        """Queue a reply for the next ``command`` (``RCPT`` or ``DATA``)."""
        with self._changed:
            if reply == "hang":
                self._release.clear()
            self.script.append((command, reply))

    def threads(self) -> dict[str, list[Mail]]:
        """Messages grouped the way mail clients thread them: by the first id in ``References``, else their own ``Message-ID``."""
        threads: dict[str, list[Mail]] = {}
        for mail in self.messages:
            references = _ids(mail.message, "References")
            threads.setdefault(references[0] if references else str(mail.message["Message-ID"]), []).append(mail)
        return threads

    def start(self) -> None:
        """Start listening."""
        self._controller.start()

    def stop(self) -> None:
        """Stop listening (held DATA commands are let go first)."""
        self._release.set()
        self._controller.stop()

    def _next(self, command: str) -> str | None:
        with self._changed:
            if self.script and self.script[0][0] == command:
                return self.script.popleft()[1]
        return None

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == self.credentials
        self.logins.append((data.login.decode() if isinstance(data, LoginPassword) else repr(data), ok))
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)  # handled=False: aiosmtpd answers 535


class _FreePortController(Controller):
    """aiosmtpd's controller on port 0: it learns the port the system chose before checking the server is up."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1/localhost made with the ``openssl`` tool (``cryptography`` is not installed)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """The server side of STARTTLS with that certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def all_problems(receivers: Iterable[HttpReceiver | SmtpReceiver]) -> list[str]:
    """Every problem any of ``receivers`` found, named by receiver type."""
    return [f"{type(receiver).__name__}: {problem}" for receiver in receivers for problem in receiver.problems]
