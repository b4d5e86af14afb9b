"""Who sent a request: Standard Webhooks headers and signature, checked over the raw body before it is parsed.

The signature is the dispatcher's own (:func:`protocol.wire.sign`): one
implementation of the HMAC for both ends. The key depends on the site, and
the site is in the body, so the body must *start* with its ``site`` member
(``{"site":"shop-eu",...``, docs/protocol.md §1), complete within its first
:data:`SITE_PREFIX_BYTES`: the gateway reads the site from that prefix as
soon as it has arrived (an unregistered site is refused before the rest of
the body is read), picks the key, and parses nothing before the signature
holds. Nothing here echoes a header value back.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

from gateway.errors import Rejected
from protocol.wire import sign
from schemas.signals import SITE_PATTERN

BATCH_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_SITE_PREFIX_RE = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"site"[ \t\r\n]*:[ \t\r\n]*"(' + SITE_PATTERN[1:-1].encode() + rb')"')
SITE_PREFIX_BYTES = 1024
"""The ``site`` member must end within this many bytes of the body: room for the longest site id and ample whitespace."""
MAX_SIGNATURES = 8
"""Signatures considered in one ``webhook-signature`` header (Standard Webhooks allows several, space-separated)."""


def signature_headers(headers: Mapping[str, str], now: float, tolerance_s: int) -> tuple[str, int, str]:
    """``(batch_id, timestamp, signature)`` from the request headers, the timestamp within ``tolerance_s`` of ``now``."""
    batch_id, timestamp, signature = (headers.get(name) for name in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    missing = [name for name, value in (("webhook-id", batch_id), ("webhook-timestamp", timestamp), ("webhook-signature", signature))
               if not value]
    if missing:
        raise Rejected("missing_signature", f"{', '.join(missing)}: header required (Standard Webhooks signature, docs/protocol.md §1)")
    assert batch_id is not None and timestamp is not None and signature is not None
    if not BATCH_ID_RE.fullmatch(batch_id):
        raise Rejected("invalid_batch_id", "webhook-id: must be the batch_id, 8–64 characters of [A-Za-z0-9_-]")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise Rejected("invalid_timestamp", "webhook-timestamp: must be whole seconds since the Unix epoch")
    skew = int(timestamp) - int(now)
    if abs(skew) > tolerance_s:
        direction = "ahead of" if skew > 0 else "behind"
        raise Rejected(
            "stale_timestamp",
            f"webhook-timestamp: {abs(skew)} s {direction} the gateway's clock, more than the {tolerance_s} s allowed "
            "(sign each attempt anew; check the site's clock)",
        )
    return batch_id, int(timestamp), signature


def site_of(prefix: bytes) -> str:
    """The site named by the ``site`` member the body starts with (``prefix``: its first :data:`SITE_PREFIX_BYTES` or fewer)."""
    match = _SITE_PREFIX_RE.match(prefix)
    if match is None:
        raise Rejected("no_site", 'body: must be a JSON object whose first member is "site" with a valid site id, within its first '
                                  f"{SITE_PREFIX_BYTES} bytes (docs/protocol.md §1)")
    return match.group(1).decode("ascii")


def signature_matches(key: bytes, batch_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether one of the ``v1,`` signatures in ``header`` is the body's, compared in constant time."""
    expected = sign(key, batch_id, timestamp, body).encode("ascii")
    found = False
    for candidate in header.split(" ")[:MAX_SIGNATURES]:
        # Header values arrive decoded as latin-1; compare bytes (compare_digest refuses non-ASCII str).
        found |= hmac.compare_digest(candidate.encode("latin-1", "replace"), expected)
    return found
