"""The e-mail channel against a real aiosmtpd server on loopback: headers, both parts, threading, STARTTLS, AUTH, replies."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from delivery.channels import open_sender
from schemas.rules import EmailChannel, WebhookChannel
from sinks.channel import SendResult
from tests.support.factories import ALERT_ID, huge_notification, make_notification, received, resolved_notification
from tests.support.ports import free_port
from tests.support.receivers import SmtpReceiver, WebhookReceiver, self_signed_cert, send_all, server_tls

NOW = 1_795_860_840.0
CREDENTIALS = {"SMTP_USER": "alerts", "SMTP_PASSWORD": "s3cret-Pa55"}
OTHER_ALERT = "0123456789abcdef0123456789abcdef"


def mail_channel(port: int, to: tuple[str, ...] = ("ops@example.com",), **smtp: Any) -> EmailChannel:
    smtp = {"host": "127.0.0.1", "port": port, "sender": "Logystera <alerts@logystera.example>", **smtp}
    return EmailChannel.model_validate({"name": "ops-mail", "type": "email", "to": list(to), "smtp": smtp})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with openssl) and its key."""
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def test_delivered_with_headers_both_parts_and_escaped_html() -> None:
    with SmtpReceiver() as server:
        results = send_all(mail_channel(server.port, ("ops@example.com", "oncall@example.com")), make_notification(),
                           huge_notification(), clock=lambda: NOW)
        first, huge = server.wait_for(2)
    assert results == [SendResult(True, 250, False, None, "")] * 2
    assert server.problems == []  # headers, multipart/alternative text+html, utf-8, only our own HTML tags
    assert (first.mail_from, first.rcpt_tos) == ("alerts@logystera.example", ["ops@example.com", "oncall@example.com"])
    message = first.message
    assert message["Subject"] == "[HIGH] shop-eu: Mail delivery is failing"
    assert message["Date"] == "Sat, 28 Nov 2026 10:14:00 +0000"
    assert message["Auto-Submitted"] == "auto-generated"
    text, html = (part.get_content() for part in message.iter_parts())
    assert "12 of 15 mail signals matched in the last 15m (80%)" in text and "Re-evaluated: 2026-11-28T10:14:00.000Z" in text
    assert '<a href="http://localhost:8080/alerts/3f9a0c1d2e4b5a697887766554433221">' in html
    huge_html = next(part for part in huge.message.iter_parts() if part.get_content_type() == "text/html").get_content()
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in huge_html and "<script" not in huge_html
    assert "\n" not in huge.message["Subject"] and huge.message["Subject"].startswith("[CRITICAL] " + "s" * 63 + ": <script>")


def test_notifications_of_one_alert_thread_together() -> None:
    notifications = [make_notification(), make_notification(seq=2), resolved_notification(), make_notification(alert_id=OTHER_ALERT)]
    with SmtpReceiver() as server:
        send_all(mail_channel(server.port), *notifications, clock=lambda: NOW)
        server.wait_for(4)
        threads = server.threads()
    assert server.problems == []
    root = f"<{ALERT_ID}.1@logystera.example>"
    assert {key: [mail.message["Message-ID"] for mail in mails] for key, mails in threads.items()} == {
        root: [root, f"<{ALERT_ID}.2@logystera.example>", f"<{ALERT_ID}.3@logystera.example>"],
        f"<{OTHER_ALERT}.1@logystera.example>": [f"<{OTHER_ALERT}.1@logystera.example>"],
    }
    later = threads[root][1:]
    assert all(mail.message["In-Reply-To"] == root and mail.message["References"] == root for mail in later)
    assert "In-Reply-To" not in threads[root][0].message
    assert len({mail.message["Subject"] for mail in threads[root]}) == 1  # clients that thread by subject agree


def test_a_retry_carries_the_same_message_id_and_its_own_date() -> None:
    ticks = iter([NOW, NOW + 90])
    with SmtpReceiver() as server:
        send_all(mail_channel(server.port), make_notification(), make_notification(), clock=lambda: next(ticks))
        first, retry = server.wait_for(2)
    assert first.message["Message-ID"] == retry.message["Message-ID"]
    assert (first.message["Date"], retry.message["Date"]) == ("Sat, 28 Nov 2026 10:14:00 +0000", "Sat, 28 Nov 2026 10:15:30 +0000")


def test_starttls_and_auth(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The channel trusts a private CA through SSL_CERT_FILE, upgrades the connection, then logs in."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with SmtpReceiver(tls=server_tls(*certificate), credentials=("alerts", "s3cret-Pa55")) as server:
        [result] = send_all(mail_channel(server.port, starttls=True, username_env="SMTP_USER", password_env="SMTP_PASSWORD"),
                            make_notification(), environ=CREDENTIALS)
        [mail] = server.wait_for(1)
    assert result == SendResult(True, 250, False, None, "")
    assert (mail.tls, mail.login, server.logins, server.problems) == (True, "alerts", [("alerts", True)], [])


def test_a_wrong_password_is_permanent_and_not_shown(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with SmtpReceiver(tls=server_tls(*certificate), credentials=("alerts", "the-right-one")) as server:
        [result] = send_all(mail_channel(server.port, starttls=True, username_env="SMTP_USER", password_env="SMTP_PASSWORD"),
                            make_notification(), environ=CREDENTIALS)
    assert (result.delivered, result.status_code, result.retryable) == (False, 535, False)
    assert result.error.startswith("SMTP 535") and "s3cret" not in result.error
    assert set(server.logins) == {("alerts", False)} and server.messages == []  # smtplib tries PLAIN, then LOGIN


def test_an_untrusted_certificate_is_permanent(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with SmtpReceiver(tls=server_tls(*certificate)) as server:
        [result] = send_all(mail_channel(server.port, starttls=True), make_notification())
    assert (result.delivered, result.status_code, result.retryable) == (False, None, False)
    assert result.error.startswith("TLS certificate not trusted: ") and server.messages == []


def test_a_server_that_requires_starttls_refuses_a_plain_channel(certificate: tuple[Path, Path]) -> None:
    with SmtpReceiver(tls=server_tls(*certificate)) as server:
        [result] = send_all(mail_channel(server.port), make_notification())
    assert result == SendResult(False, 530, False, None, "SMTP 530: Must issue a STARTTLS command first")


@pytest.mark.parametrize(("command", "reply", "retryable"), [
    ("RCPT", "450 4.2.1 Mailbox busy", True),
    ("RCPT", "550 5.1.1 No such user", False),
    ("DATA", "451 4.3.0 Try again later", True),
    ("DATA", "554 5.7.1 Rejected as spam", False),
])
def test_smtp_replies_4xx_retry_5xx_do_not(command: str, reply: str, retryable: bool) -> None:
    code, text = int(reply[:3]), reply[4:]
    with SmtpReceiver() as server:
        server.answer(command, reply)
        [result] = send_all(mail_channel(server.port), make_notification())
    expected = f"every recipient refused: {code} {text}" if command == "RCPT" else f"SMTP {code}: {text}"
    assert result == SendResult(False, code, retryable, None, expected)
    assert server.messages == []


def test_some_recipients_refused_is_delivered_with_the_refusals_named() -> None:
    """Retrying would send the accepted recipients a duplicate, so this counts as delivered; the error text keeps the refusal."""
    with SmtpReceiver() as server:
        server.answer("RCPT", "550 5.1.1 No such user")
        [result] = send_all(mail_channel(server.port, ("gone@example.com", "ops@example.com")), make_notification())
        [mail] = server.wait_for(1)
    assert result == SendResult(True, 250, False, None, "refused by 1 of 2 recipients: gone@example.com: 550 5.1.1 No such user")
    assert mail.rcpt_tos == ["ops@example.com"]


def test_a_server_that_stops_answering_times_out() -> None:
    with SmtpReceiver() as server:
        server.answer("DATA", "hang")
        [result] = send_all(mail_channel(server.port), make_notification(), timeout=0.5)
        server.release()
    assert result == SendResult(False, None, True, None, "no answer within 0.5s")


def test_connection_refused_is_retryable() -> None:
    [result] = send_all(mail_channel(free_port()), make_notification())
    assert result == SendResult(False, None, True, None, "connection refused")


def test_smtp_runs_off_the_event_loop() -> None:
    """While one SMTP conversation is held by the server, the same event loop delivers a webhook."""
    notification = received(make_notification())

    async def run(server: SmtpReceiver, hook: WebhookReceiver) -> tuple[SendResult, bool, SendResult]:
        mail = open_sender(mail_channel(server.port), {}, timeout=10.0)
        webhook = open_sender(WebhookChannel.model_validate({"name": "oncall", "type": "webhook", "url": hook.url}), {})
        held = asyncio.create_task(mail.send(notification))
        assert await asyncio.to_thread(server.holding.wait, 10.0)
        hooked = await webhook.send(notification)
        still_held = not held.done()
        server.release()
        mailed = await held
        await webhook.aclose()
        return hooked, still_held, mailed

    with SmtpReceiver() as server, WebhookReceiver() as hook:
        server.answer("DATA", "hang")
        hooked, still_held, mailed = asyncio.run(run(server, hook))
    assert hooked.delivered and still_held and mailed == SendResult(True, 250, False, None, "")
