"""The ``email`` channel: a multipart text + HTML message over SMTP, threaded per alert (alerts.md "Channels").

The message (:func:`render`):

- ``Subject: [SEVERITY] site: title`` — the same for every notification of an
  alert (mail clients that thread by subject keep them together; the status is
  the first line of the body);
- ``Message-ID: <alert_id.seq@domain>`` (domain of the sender address), the
  same on every retry of a notification;
- threading: notification 1's id is the thread root; every later notification
  names it in ``In-Reply-To`` and ``References``, so all notifications of one
  ``alert_id`` form one thread even when some were collapsed or not sent;
- ``Auto-Submitted: auto-generated`` (RFC 3834) and
  ``X-Auto-Response-Suppress: All``, so auto-responders stay quiet;
- ``multipart/alternative``: ``text/plain`` then ``text/html``, both UTF-8,
  quoted-printable; every text from the record is HTML-escaped in the HTML
  part; texts are cut to :data:`sinks.alert_view.TEXT_LIMITS`; the MIME
  boundary is derived from ``alert_id:seq`` (and cannot occur in
  quoted-printable text), so rendering is a pure function.

Sending (:class:`EmailSender`): ``smtplib`` in a worker thread (never on the
event loop), one connection per attempt: EHLO, STARTTLS when configured
(certificate checked against the system's CAs, or ``SSL_CERT_FILE``), AUTH
when the channel names credentials, then MAIL/RCPT/DATA. The reply code
decides: 4xx is transient (retryable), 5xx permanent; timeouts and refused or
dropped connections are retryable; a certificate that is not trusted or a
server without STARTTLS/AUTH is a permanent (configuration) failure. When
some recipients are refused and others accepted, the attempt counts as
delivered (retrying would send the others a duplicate) and the refusals are
in the error text.

Delivery guarantee: at most one message per :meth:`EmailSender.send`, with
the same ``Message-ID`` on every retry. Under backpressure nothing queues
here; ``timeout`` bounds each SMTP command, not the attempt as a whole.
"""

from __future__ import annotations

import asyncio
import html
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, parseaddr

from schemas.alerts import NotificationRecord, ReceivedRecord
from schemas.rules import EmailChannel
from sinks.alert_view import AlertView, alert_view, clip, clipped
from sinks.channel import ChannelConfigError, SendResult, delivered, env_value, failed, one_line

SUBJECT_CHARS = 200


def _domain(sender: str) -> str:
    address = parseaddr(sender)[1]
    return address.rpartition("@")[2] or "localhost"


def message_id(alert_id: str, seq: int, sender: str) -> str:
    """``<alert_id.seq@domain>``: stable per notification, so a retried message is recognisably the same one."""
    return f"<{alert_id}.{seq}@{_domain(sender)}>"


def _text(view: AlertView) -> str:
    width = max(len(label) for label, _ in view.facts) + 2
    lines = [view.headline, "", view.summary, *view.notes, ""]
    lines += [f"{label + ':':<{width}}{value}" for label, value in view.facts]
    lines += ["", f"{view.evidence_title}:" if view.evidence else view.evidence_title, *(f"  {line}" for line in view.evidence)]
    if view.description:
        lines += ["", view.description]
    lines += ["", f"Open the alert: {view.link}", view.footer, ""]
    return "\n".join(lines)


def _html(view: AlertView) -> str:
    def e(text: str) -> str:
        return html.escape(text, quote=False)

    colour = "#2e7d32" if view.resolved else "#b71c1c"
    rows = "".join(f'<tr><th align="left">{e(label)}</th><td>{e(value)}</td></tr>' for label, value in view.facts)
    parts = [
        '<html><head><meta charset="utf-8"><title>', e(view.subject), "</title></head><body>",
        f'<h1 style="font-size:18px;color:{colour}">', e(view.headline), "</h1>",
        "<p>", e(view.summary), "</p>", *(f'<p style="font-style:italic">{e(note)}</p>' for note in view.notes),
        "<table>", rows, "</table>",
        "<h2 style=\"font-size:15px\">", e(view.evidence_title), "</h2>",
    ]
    if view.evidence:
        parts += ["<pre>", e("\n".join(view.evidence)), "</pre>"]
    if view.description:
        parts += ["<p>", e(view.description), "</p>"]
    parts += [f'<p><a href="{html.escape(view.link, quote=True)}">Open the alert</a></p>',
              '<p style="color:#666">', e(view.footer), "</p></body></html>"]
    return "".join(parts) + "\n"


def render(record: NotificationRecord, collapsed: int = 0, *, sender: str, to: list[str], date: float) -> EmailMessage:
    """The message of one notification; ``date`` (Unix seconds) is the attempt time for the ``Date`` header."""
    view = clipped(alert_view(record, collapsed))
    alert, seq = record.alert_id, record.seq
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = clip(view.subject, SUBJECT_CHARS)
    message["Date"] = formatdate(date, usegmt=True)
    message["Message-ID"] = message_id(alert, seq, sender)
    if seq > 1:
        root = message_id(alert, 1, sender)
        message["In-Reply-To"] = root
        message["References"] = root
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(_text(view), cte="quoted-printable")
    message.add_alternative(_html(view), subtype="html", cte="quoted-printable")
    message.set_boundary(f"=_logystera_{alert}_{seq}")
    for part in message.iter_parts():
        del part["MIME-Version"]  # add_alternative copies it into the part; it belongs to the message only
    return message


def smtp_failure(error: Exception, timeout: float) -> SendResult:
    """One failed SMTP attempt as a result: 4xx transient, 5xx permanent (RFC 5321), no answer retryable.

    The SMTP errors are ``OSError`` subclasses, so they are told apart first.
    """
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = sorted({code for code, _ in error.recipients.values()})
        replies = "; ".join(f"{code} {_reply(text)}" for code, text in list(error.recipients.values())[:3])
        return failed(one_line(f"every recipient refused: {replies}"), status_code=codes[0] if codes else None,
                      retryable=any(400 <= code < 500 for code in codes))
    if isinstance(error, smtplib.SMTPResponseException):
        code = error.smtp_code
        return failed(one_line(f"SMTP {code}: {_reply(error.smtp_error)}"), status_code=code if code > 0 else None,
                      retryable=not 500 <= code < 600)
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return failed(one_line(str(error)), retryable=False)
    if isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError):  # smtplib reports a read timeout as a disconnect
        return failed(f"no answer within {timeout:g}s", retryable=True)
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return failed("server closed the connection", retryable=True)
    if isinstance(error, ssl.SSLCertVerificationError):
        return failed(one_line(f"TLS certificate not trusted: {error.verify_message}"), retryable=False)
    if isinstance(error, ConnectionRefusedError):
        return failed("connection refused", retryable=True)
    return failed(one_line(f"{type(error).__name__}: {error}"), retryable=True)


def _reply(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


class EmailSender:
    """Threaded e-mails to one channel's recipients through its SMTP server."""

    def __init__(self, config: EmailChannel, environ: Mapping[str, str], *, timeout: float, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.timeout = timeout
        self.clock = clock
        smtp = config.smtp
        if (smtp.username_env is None) != (smtp.password_env is None):
            raise ChannelConfigError(f"channel {config.name}: smtp: username_env and password_env go together")
        self._login: tuple[str, str] | None = None
        if smtp.username_env is not None and smtp.password_env is not None:
            self._login = (env_value(config.name, smtp.username_env, environ, "smtp.username_env"),
                           env_value(config.name, smtp.password_env, environ, "smtp.password_env"))
        # The system's CAs, or those of SSL_CERT_FILE / SSL_CERT_DIR (how a private relay's CA is trusted).
        self._tls = ssl.create_default_context() if smtp.starttls else None

    async def send(self, notification: ReceivedRecord, collapsed: int = 0) -> SendResult:
        """Render and send once; the blocking SMTP conversation runs in a worker thread."""
        message = render(notification.record, collapsed, sender=self.config.smtp.sender, to=list(self.config.to),
                         date=self.clock())
        return await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> SendResult:
        smtp = self.config.smtp
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=self.timeout) as client:
                if self._tls is not None:
                    client.starttls(context=self._tls)
                if self._login is not None:
                    client.login(*self._login)
                refused = client.send_message(message, from_addr=parseaddr(smtp.sender)[1], to_addrs=list(self.config.to))
        except (smtplib.SMTPException, OSError) as error:
            return smtp_failure(error, self.timeout)
        if refused:
            replies = "; ".join(f"{address}: {code} {_reply(text)}" for address, (code, text) in refused.items())
            return SendResult(True, 250, False, None, one_line(f"refused by {len(refused)} of {len(self.config.to)} recipients: {replies}"))
        return delivered(250)

    async def aclose(self) -> None:
        """Nothing to release: every attempt opens and closes its own connection."""
