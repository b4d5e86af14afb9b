"""The ``webhook`` channel: the notification record as JSON, signed the Standard Webhooks way (alerts.md "Channels").

Request: ``POST`` to the channel's URL with

- body: the record's bytes exactly as delivery received them (the flow's
  compact JSON, UTF-8), forwarded, not re-encoded; when the delivery service
  collapsed held notifications of the same alert into this one, a last
  top-level key ``"collapsed": N`` (N > 0) says how many — absent otherwise,
  so an uncollapsed body is the record itself;
- ``webhook-id``: ``alert_id:seq``, the same on every retry, so a receiver
  dedupes by it;
- ``webhook-timestamp``: the attempt time, Unix seconds;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``
  when the channel has ``secret_env`` (a ``whsec_`` base64 secret or raw text,
  as the dispatcher's wire protocol reads it).

Delivery guarantee and backpressure: those of :class:`sinks.channel.HttpChannel`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from protocol.wire import secret_bytes, sign
from schemas.alerts import NotificationRecord, ReceivedRecord
from schemas.rules import WebhookChannel
from sinks.channel import ChannelConfigError, HttpChannel, env_value


def render(notification: ReceivedRecord, collapsed: int = 0) -> bytes:
    """The request body: the record's received bytes, with ``,"collapsed":N`` before the closing ``}`` when N > 0."""
    raw = notification.raw
    if collapsed <= 0:
        return raw
    assert raw.endswith(b"}")  # a validated record is one JSON object, surrounding whitespace dropped
    return b'%s,"collapsed":%d}' % (raw[:-1], collapsed)


def webhook_id(record: NotificationRecord) -> str:
    """``alert_id:seq``: the notification's identity, the receiver's idempotency key."""
    return f"{record.alert_id}:{record.seq}"


def signed_headers(record: NotificationRecord, body: bytes, timestamp: int, key: bytes | None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (no signature without a key)."""
    message_id = webhook_id(record)
    headers = {"content-type": "application/json", "webhook-id": message_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        headers["webhook-signature"] = sign(key, message_id, timestamp, body)
    return headers


class WebhookSender(HttpChannel):
    """Signed JSON POSTs to one webhook channel."""

    config: WebhookChannel

    def __init__(self, config: WebhookChannel, environ: Mapping[str, str], *, timeout: float, clock: Callable[[], float]) -> None:
        super().__init__(config, environ, timeout=timeout, clock=clock)
        self._key: bytes | None = None
        if config.secret_env is not None:
            secret = env_value(config.name, config.secret_env, environ, "secret_env")
            try:
                self._key = secret_bytes(secret)
            except ValueError as error:  # the message never echoes the secret
                reason = str(error).removeprefix("secret: ")
                raise ChannelConfigError(f"channel {config.name}: secret_env: {config.secret_env}: {reason}") from None

    def request(self, notification: ReceivedRecord, collapsed: int) -> tuple[bytes, dict[str, str]]:
        """The body and the headers signed at the attempt time."""
        body = render(notification, collapsed)
        return body, signed_headers(notification.record, body, int(self.clock()), self._key)
