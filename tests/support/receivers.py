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
port); :func:`refused_url` is a URL nobody listens on. The checks of what
each service accepts are in ``tests/support/limits.py``, the notification
records in ``tests/support/factories.py``.

Import from tests as ``from tests.support.receivers import ...``.
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from standardwebhooks import Webhook, WebhookVerificationError

from delivery.channels import open_sender
from schemas.rules import Channel
from sinks.channel import SendResult
from tests.support.factories import received
from tests.support.limits import email_problems, message_ids, slack_problems, teams_problems
from tests.support.ports import LOOPBACK, free_port

T = TypeVar("T")
WAIT = 10.0
"""Default deadline of :meth:`wait_for`: generous, since the machine is shared; a passing test never waits it out."""


def refused_url(path: str = "/hook") -> str:
    """An HTTP URL on loopback whose connections are refused."""
    return f"http://{LOOPBACK}:{free_port()}{path}"


def send_all(config: Channel, *notifications: Mapping[str, Any], environ: Mapping[str, str] | None = None, collapsed: int = 0,
             timeout: float = 5.0, clock: Callable[[], float] = time.time) -> list[SendResult]:
    """Open the channel's sender, send each notification once (in order, in one event loop), close it; the results."""

    async def run() -> list[SendResult]:
        sender = open_sender(config, environ or {}, timeout=timeout, clock=clock)
        try:
            return [await sender.send(received(notification), collapsed) for notification in notifications]
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
            references = message_ids(mail.message, "References")
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
