"""The wire protocol of ``POST {url}/v1/batches`` (docs/protocol.md): body, signature, responses.

Rendering and signing are pure functions of their arguments, so they are
tested (and reimplemented in other languages) without a network; the
dispatcher only adds the clock and the HTTP client.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import enum
import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from datetime import UTC

ENDPOINT = "/v1/batches"
MAX_BATCH_SIGNALS = 1000
MAX_BATCH_BYTES = 1 << 20
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a gateway secret: base64 after ``whsec_`` (Standard Webhooks), else the UTF-8 bytes.

    Missing ``=`` padding after ``whsec_`` is tolerated, as the reference
    Standard Webhooks libraries do. Raises :class:`ValueError` (never echoing
    the secret) when the secret is empty or its base64 is not valid.
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError("secret: must be a non-empty string")
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("secret: the part after 'whsec_' is not valid base64") from None
    if not key:
        raise ValueError("secret: the part after 'whsec_' is empty")
    return key


def sign(key: bytes, batch_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}``."""
    digest = hmac.new(key, f"{batch_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _head(site: str, batch_id: str, sent_at: str) -> str:
    return f'{{"site":{json.dumps(site)},"batch_id":{json.dumps(batch_id)},"sent_at":{json.dumps(sent_at)},"signals":['


def encode_batch(site: str, batch_id: str, sent_at: str, lines: list[str]) -> bytes:
    """The request body: compact JSON, UTF-8, the signals being the already-encoded compact lines, in order."""
    return (_head(site, batch_id, sent_at) + ",".join(lines) + "]}").encode("utf-8")


def batch_overhead(site: str, batch_id: str) -> int:
    """Bytes of a body around its signals (``sent_at`` has a fixed width), for the 1 MiB limit."""
    return len(encode_batch(site, batch_id, "0000-00-00T00:00:00.000Z", []))


def headers(batch_id: str, timestamp: int, signature: str, user_agent: str) -> dict[str, str]:
    """The request headers of one attempt (Standard Webhooks names)."""
    return {
        "content-type": "application/json",
        "webhook-id": batch_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "user-agent": user_agent,
    }


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date (RFC 9110); ``None`` if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class Kind(enum.Enum):
    """What one attempt's response means for the batch in flight."""

    DELIVERED = "delivered"  # 2xx (maybe duplicate) or 409: the batch leaves the buffer
    RETRY = "retry"  # 5xx, 408, timeout, connection error: keep the batch, back off, counts for the breaker
    RATE_LIMITED = "rate_limited"  # 429: keep the batch, wait as told, does not count for the breaker
    CLIENT_ERROR = "client_error"  # other 3xx/4xx: keep the batch, open the breaker at once


@dataclass(frozen=True)
class Outcome:
    """One attempt, classified; ``reason`` is the failure label counted in the stats."""

    kind: Kind
    reason: str
    status: int | None = None
    retry_after: float | None = None
    accepted: int | None = None
    rejected: list[tuple[int, str]] = field(default_factory=list)
    duplicate: bool = False


def _accepted_body(content: bytes) -> tuple[int | None, list[tuple[int, str]], bool]:
    """``accepted``, ``rejected`` and ``duplicate`` from a 2xx body; a body that is not the documented shape reads as empty."""
    try:
        body = json.loads(content) if content else {}
    except (ValueError, UnicodeError):
        return None, [], False
    if not isinstance(body, dict):
        return None, [], False
    accepted = body.get("accepted")
    rejected: list[tuple[int, str]] = []
    for item in body.get("rejected") or []:
        if isinstance(item, dict) and isinstance(item.get("index"), int) and not isinstance(item.get("index"), bool):
            rejected.append((item["index"], str(item.get("reason", ""))))
    return (accepted if isinstance(accepted, int) and not isinstance(accepted, bool) else None), rejected, body.get("duplicate") is True


def classify(status: int, retry_after: str | None, content: bytes, now: float) -> Outcome:
    """Classify one HTTP response (see docs/protocol.md, "Responses")."""
    wait = parse_retry_after(retry_after, now)
    if 200 <= status < 300:
        accepted, rejected, duplicate = _accepted_body(content)
        return Outcome(Kind.DELIVERED, "duplicate" if duplicate else "accepted", status, None, accepted, rejected, duplicate)
    if status == 409:
        return Outcome(Kind.DELIVERED, "duplicate", status, duplicate=True)
    if status == 429:
        return Outcome(Kind.RATE_LIMITED, "rate_limited", status, wait)
    if status == 503:
        return Outcome(Kind.RETRY, "unavailable", status, wait)
    if status >= 500 or status == 408:
        return Outcome(Kind.RETRY, "server_error", status, wait)
    return Outcome(Kind.CLIENT_ERROR, "client_error", status, wait)
