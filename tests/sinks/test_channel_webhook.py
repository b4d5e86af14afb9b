"""The webhook channel against a real receiver that verifies signatures with the independent ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime

from standardwebhooks import Webhook

from delivery.channels import open_sender
from schemas.alerts import ReceivedRecord
from schemas.rules import WebhookChannel
from sinks.channel import SendResult
from sinks.webhook import render, signed_headers
from tests.support.factories import ALERT_ID, make_notification, resolved_notification, typed
from tests.support.receivers import WebhookReceiver, send_all

KEY = b"0123456789abcdef0123456789abcdef"
WHSEC = "whsec_" + base64.b64encode(KEY).decode()


def webhook(url: str, secret_env: str | None = "HOOK_SECRET") -> WebhookChannel:
    return WebhookChannel.model_validate({"name": "oncall", "type": "webhook", "url": url, "secret_env": secret_env})


def test_signed_notifications_verify_with_standardwebhooks() -> None:
    firing, resolved = make_notification(), resolved_notification()
    with WebhookReceiver(secret=WHSEC) as hook:
        results = send_all(webhook(hook.url), firing, resolved, environ={"HOOK_SECRET": WHSEC})
        received = hook.wait_for(2)
    assert results == [SendResult(True, 204, False, None, "")] * 2
    assert hook.problems == []
    assert [seen.headers["webhook-id"] for seen in received] == [f"{ALERT_ID}:1", f"{ALERT_ID}:3"]
    assert [seen.json for seen in received] == [firing, resolved]
    assert all(seen.headers["webhook-signature"].startswith("v1,") for seen in received)


def test_a_plain_text_secret_is_the_key_itself() -> None:
    """A secret without ``whsec_`` is used as its UTF-8 bytes (as the dispatcher reads gateway secrets)."""
    with WebhookReceiver(secret=b"plain text secret") as hook:
        [result] = send_all(webhook(hook.url), make_notification(), environ={"HOOK_SECRET": "plain text secret"})
        hook.wait_for(1)
    assert result.delivered and hook.problems == []


def test_the_same_id_on_every_retry_and_the_attempt_time_as_timestamp() -> None:
    start = int(time.time()) - 120  # within standardwebhooks' five-minute tolerance, in the past and the future
    ticks = iter([start, start + 60, start + 240])
    notification = make_notification(seq=2)
    with WebhookReceiver(secret=WHSEC) as hook:
        results = send_all(webhook(hook.url), notification, notification, notification, environ={"HOOK_SECRET": WHSEC},
                           clock=lambda: next(ticks))
        received = hook.wait_for(3)
    assert all(result.delivered for result in results) and hook.problems == []
    assert {seen.headers["webhook-id"] for seen in received} == {f"{ALERT_ID}:2"}
    assert [seen.headers["webhook-timestamp"] for seen in received] == [str(start), str(start + 60), str(start + 240)]
    assert len({seen.headers["webhook-signature"] for seen in received}) == 3  # the timestamp is signed too


def test_collapsed_notifications_are_counted_in_the_body() -> None:
    notification = make_notification(seq=6)
    with WebhookReceiver(secret=WHSEC) as hook:
        send_all(webhook(hook.url), notification, environ={"HOOK_SECRET": WHSEC}, collapsed=4)
        [seen] = hook.wait_for(1)
    assert hook.problems == []
    assert list(seen.json) == [*notification, "collapsed"] and seen.json["collapsed"] == 4
    assert seen.body == json.dumps({**notification, "collapsed": 4}, separators=(",", ":"), ensure_ascii=False).encode()


def test_without_a_secret_nothing_is_signed_but_the_id_is_sent() -> None:
    with WebhookReceiver(secret=None) as hook:
        [result] = send_all(webhook(hook.url, secret_env=None), make_notification())
        [seen] = hook.wait_for(1)
    assert result.delivered and hook.problems == []
    assert "webhook-signature" not in seen.headers and seen.headers["webhook-id"] == f"{ALERT_ID}:1"


def test_a_receiver_with_another_secret_rejects_and_that_is_permanent() -> None:
    with WebhookReceiver(secret="whsec_" + base64.b64encode(b"another key entirely").decode()) as hook:
        [result] = send_all(webhook(hook.url), make_notification(), environ={"HOOK_SECRET": WHSEC})
        hook.wait_for(1)
    assert hook.problems == ["request 1: signature: No matching signature found"]
    assert result == SendResult(False, 401, False, None, 'HTTP 401: {"error":"invalid signature or body"}')


def test_signature_header_matches_the_reference_implementation() -> None:
    """Rendering alone, no network: our header equals what ``standardwebhooks`` signs for the same id, time and body."""
    notification = make_notification()
    body = b'{"any":"body"}'
    headers = signed_headers(typed(notification), body, 1_795_860_840, KEY)
    reference = Webhook(WHSEC).sign(f"{ALERT_ID}:1", datetime.fromtimestamp(1_795_860_840, UTC), body.decode())
    assert headers == {"content-type": "application/json", "webhook-id": f"{ALERT_ID}:1", "webhook-timestamp": "1795860840",
                       "webhook-signature": reference}


def test_the_body_is_the_received_bytes_forwarded_with_collapsed_inserted_only_when_some() -> None:
    """Not re-encoded: a line as received (here with escaped non-ASCII and spaces) goes out byte for byte, and signed so."""
    record = make_notification(summary="Mail to müller failed")
    line = json.dumps(record, ensure_ascii=True, separators=(", ", ": ")).encode("ascii")
    notification = ReceivedRecord.parse(line + b"\r\n")
    assert render(notification, 0) == line
    assert render(notification, 3) == line[:-1] + b',"collapsed":3}'

    async def send() -> list[SendResult]:
        sender = open_sender(webhook(hook.url), {"HOOK_SECRET": WHSEC})
        try:
            return [await sender.send(notification, 0), await sender.send(notification, 3)]
        finally:
            await sender.aclose()

    with WebhookReceiver(secret=WHSEC) as hook:
        results = asyncio.run(send())
        plain, collapsed = hook.wait_for(2)
    assert all(result.delivered for result in results) and hook.problems == []  # signatures verified over these bytes
    assert plain.body == line and collapsed.body == line[:-1] + b',"collapsed":3}'
    assert collapsed.json == {**record, "collapsed": 3}
