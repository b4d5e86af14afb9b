"""What the HTTP channels (webhook, Slack, Teams) make of every kind of answer, against real receivers on loopback.

One attempt per ``send``: 2xx is delivered; 408, 429 and 5xx are retryable
(with ``Retry-After`` in seconds or as an HTTP-date, capped at an hour);
other 4xx and 3xx are permanent; a hang past the timeout and a refused
connection are retryable with no status. Error texts are one short line
without the URL's token. Opening a channel reads its environment variables
and fails with one line naming the channel and the variable.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import TypeAdapter

from delivery.channels import open_sender
from schemas.rules import Channel
from sinks.channel import ChannelConfigError, SendResult
from tests.support.factories import make_notification, received
from tests.support.receivers import Hang, HttpReceiver, Reply, SlackReceiver, TeamsReceiver, WebhookReceiver, refused_url, send_all

CHANNEL = TypeAdapter(Channel)
NOW = 1_795_860_840.0
RECEIVERS: dict[str, Callable[[], HttpReceiver]] = {"webhook": WebhookReceiver, "slack": SlackReceiver, "teams": TeamsReceiver}
OK_STATUS = {"webhook": 204, "slack": 200, "teams": 202}


def channel(kind: str, **fields: Any) -> Any:
    """A validated channel of ``kind`` named ``test-<kind>``."""
    return CHANNEL.validate_python({"name": f"test-{kind}", "type": kind, **fields})


def send_through(kind: str, receiver: HttpReceiver, *actions: Reply | Hang, timeout: float = 5.0) -> tuple[SendResult, HttpReceiver]:
    """One notification to ``receiver`` (its URL from the environment, as in production) after scripting ``actions``."""
    receiver.answer(*actions)
    [result] = send_all(channel(kind, url_env="HOOK_URL"), make_notification(), environ={"HOOK_URL": receiver.url},
                        timeout=timeout, clock=lambda: NOW)
    return result, receiver


@pytest.mark.parametrize("kind", RECEIVERS)
def test_delivered_and_the_receiver_found_nothing_wrong(kind: str) -> None:
    with RECEIVERS[kind]() as receiver:
        result, _ = send_through(kind, receiver)
        assert result == SendResult(True, OK_STATUS[kind], False, None, "")
        assert len(receiver.wait_for(1)) == 1 and receiver.problems == []


@pytest.mark.parametrize("kind", RECEIVERS)
@pytest.mark.parametrize(("reply", "retryable", "retry_after"), [
    (Reply(500, b"rollup_error"), True, None),
    (Reply(502), True, None),
    (Reply(503, headers={"retry-after": "120"}), True, 120.0),
    (Reply(408), True, None),
    (Reply(429, b"rate_limited", {"retry-after": "7"}), True, 7.0),
    (Reply(429, headers={"retry-after": email.utils.formatdate(NOW + 90, usegmt=True)}), True, 90.0),
    (Reply(429, headers={"retry-after": "86400"}), True, 3600.0),
    (Reply(429, headers={"retry-after": "soon"}), True, None),
    (Reply(400, b"invalid_payload"), False, None),
    (Reply(403, b"invalid_token", {"retry-after": "5"}), False, None),
    (Reply(404, b"no_service"), False, None),
    (Reply(410, b"channel_is_archived"), False, None),
    (Reply(301, headers={"location": "http://127.0.0.1:9/elsewhere"}), False, None),
])
def test_answers_map_to_results(kind: str, reply: Reply, retryable: bool, retry_after: float | None) -> None:
    with RECEIVERS[kind]() as receiver:
        result, _ = send_through(kind, receiver, reply)
        assert len(receiver.wait_for(1)) == 1  # one attempt, redirects not followed
    body = reply.body.decode()
    error = f"HTTP {reply.status}: {body}" if body else f"HTTP {reply.status}"
    assert result == SendResult(False, reply.status, retryable, retry_after, error)


@pytest.mark.parametrize("kind", RECEIVERS)
def test_error_texts_never_show_the_token_and_stay_short(kind: str) -> None:
    with RECEIVERS[kind]() as receiver:
        token = max(re.split(r"[/?&=]", receiver.path), key=len)  # Slack's token segment, Teams' sig value
        echo = f"no_service for POST {receiver.url}\n{receiver.path}\ntoken {token}\n".encode() + b"x" * 100_000
        result, _ = send_through(kind, receiver, Reply(404, echo))
    assert result.status_code == 404 and not result.retryable
    assert "127.0.0.1" not in result.error and "\n" not in result.error and (len(token) < 16 or token not in result.error)
    assert result.error.startswith("HTTP 404: no_service for POST <redacted> <redacted> token ") and len(result.error) <= 200


@pytest.mark.parametrize("kind", RECEIVERS)
def test_a_hang_past_the_timeout_is_retryable_without_status(kind: str) -> None:
    with RECEIVERS[kind]() as receiver:
        result, _ = send_through(kind, receiver, Hang(10), timeout=0.3)
        assert len(receiver.wait_for(1)) == 1  # it arrived; the answer would have come too late
        receiver.release()
    assert result == SendResult(False, None, True, None, "no answer within 0.3s")


@pytest.mark.parametrize("kind", RECEIVERS)
def test_connection_refused_is_retryable(kind: str) -> None:
    [result] = send_all(channel(kind, url=refused_url()), make_notification())
    assert result == SendResult(False, None, True, None, "connection refused")


def test_receiver_down_then_up_with_one_sender() -> None:
    """A kept-alive connection does not hide an outage: down is refused, up again is delivered."""
    receiver = WebhookReceiver()
    notification = received(make_notification())

    async def run() -> list[SendResult]:
        sender = open_sender(channel("webhook", url=receiver.url), {}, timeout=5.0)
        results = [await sender.send(notification)]
        receiver.stop()
        results.append(await sender.send(notification))
        receiver.start()
        results.append(await sender.send(notification))
        await sender.aclose()
        return results

    receiver.start()
    try:
        first, down, up = asyncio.run(run())
    finally:
        receiver.stop()
    assert (first.delivered, down.delivered, up.delivered) == (True, False, True)
    assert down == SendResult(False, None, True, None, "connection refused")
    assert [seen.headers["webhook-id"] for seen in receiver.received] == [f"{notification.record.alert_id}:1"] * 2


@pytest.mark.parametrize(("kind", "fields", "environ", "message"), [
    ("slack", {"url_env": "OPS_SLACK_WEBHOOK_URL"}, {},
     "channel test-slack: url_env: environment variable OPS_SLACK_WEBHOOK_URL is not set"),
    ("teams", {"url_env": "OPS_TEAMS_WEBHOOK_URL"}, {"OPS_TEAMS_WEBHOOK_URL": ""},
     "channel test-teams: url_env: environment variable OPS_TEAMS_WEBHOOK_URL is not set"),
    ("slack", {"url_env": "OPS_SLACK_WEBHOOK_URL"}, {"OPS_SLACK_WEBHOOK_URL": "hooks.slack.com/services/T0/B0/SECRETTOKEN"},
     "channel test-slack: url_env: environment variable OPS_SLACK_WEBHOOK_URL is not an http(s) URL"),
    ("webhook", {"url": "http://127.0.0.1:9/hook", "secret_env": "ONCALL_WEBHOOK_SECRET"}, {},
     "channel test-webhook: secret_env: environment variable ONCALL_WEBHOOK_SECRET is not set"),
    ("webhook", {"url": "http://127.0.0.1:9/hook", "secret_env": "ONCALL_WEBHOOK_SECRET"}, {"ONCALL_WEBHOOK_SECRET": "whsec_not*base64"},
     "channel test-webhook: secret_env: ONCALL_WEBHOOK_SECRET: the part after 'whsec_' is not valid base64"),
    ("email", {"to": ["ops@example.com"], "smtp": {"host": "localhost", "username_env": "SMTP_USER"}}, {"SMTP_USER": "alerts"},
     "channel test-email: smtp: username_env and password_env go together"),
    ("email", {"to": ["ops@example.com"], "smtp": {"host": "localhost", "username_env": "SMTP_USER", "password_env": "SMTP_PASSWORD"}},
     {"SMTP_USER": "alerts"}, "channel test-email: smtp.password_env: environment variable SMTP_PASSWORD is not set"),
])
def test_opening_a_channel_names_what_is_missing(kind: str, fields: dict[str, Any], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ChannelConfigError) as raised:
        open_sender(channel(kind, **fields), environ)
    assert str(raised.value) == message
    assert all(value not in message for value in environ.values() if value)  # never the secret or URL itself


def test_the_example_channels_open_with_their_environment() -> None:
    """Every channel of rules/channels.yaml opens once its variables are set (and names the first missing one otherwise)."""
    from schemas.rule_loader import load_rules

    channels = load_rules("rules").channels
    environ = {"ONCALL_WEBHOOK_URL": "https://oncall.example/hooks/logystera",
               "ONCALL_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "OPS_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/X",
               "OPS_TEAMS_WEBHOOK_URL": "https://example.webhook.office.com/x",
               "OPS_SMTP_USERNAME": "alerts", "OPS_SMTP_PASSWORD": "secret"}

    async def open_all() -> list[str]:
        senders = [open_sender(config, environ) for config in channels]
        for sender in senders:
            await sender.aclose()
        return [sender.config.name for sender in senders]

    assert asyncio.run(open_all()) == ["oncall", "ops-slack", "ops-teams", "ops-mail"]
    with pytest.raises(ChannelConfigError, match=r"^channel oncall: url_env: environment variable ONCALL_WEBHOOK_URL is not set$"):
        open_sender(channels[0], {})
