"""Logystera's site-side dispatcher: validate signals, buffer them locally, send signed batches to the gateway.

The public surface (modules starting with ``_`` are private and may change)::

    Dispatcher(site, secret, url, *, buffer_path, ...)   emit / start / flush / stop / close / stats
    Signals(site, identity_key)                          builders: auth, mail, cron, php_error, config_change,
                                                         db_event, request, plugin, file_edit, integration
    hash_identity(value, site_key)                       HMAC-SHA256 hex, keyed per site
    network_prefix(ip)                                   IPv4 → /24, IPv6 → /48
    sign_batch(secret, batch_id, timestamp, body)        the webhook-signature header value

What the dispatcher shares with the server side is written once, in ``protocol/``:
:mod:`protocol.wire` (body, Standard Webhooks signing, ``Retry-After``, response classes; the
gateway verifies with it, the webhook channel signs with it), :mod:`protocol.resilience`
(full-jitter backoff, circuit breaker; the delivery service retries with it) and
:mod:`protocol.lease` (the file lease: one sender per buffer file here, one ticker in the gateway).
This package imports only ``schemas/`` and ``protocol/`` of ours, and the server never imports it.

Errors: :class:`InvalidSignal` (a ``ValueError``) for a signal that breaks
the contract; plain ``ValueError`` for a wrong constructor argument. Network
and gateway failures never raise into the application: they are retried,
counted in :meth:`Dispatcher.stats` and logged on ``logystera.dispatcher``.
The wire protocol, for integrations in other languages, is docs/protocol.md.
"""

from __future__ import annotations

from dispatcher._dispatcher import VERSION, Dispatcher, DispatcherStats
from dispatcher._privacy import hash_identity, network_prefix
from dispatcher._signals import InvalidSignal, Signals, fingerprint, new_id, normalise_message
from protocol.wire import MAX_BATCH_BYTES, MAX_BATCH_SIGNALS, secret_bytes, sign


def sign_batch(secret: str, batch_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for a body (``secret`` as configured, ``whsec_`` prefix or not)."""
    return sign(secret_bytes(secret), batch_id, timestamp, body)


__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_SIGNALS",
    "VERSION",
    "Dispatcher",
    "DispatcherStats",
    "InvalidSignal",
    "Signals",
    "fingerprint",
    "hash_identity",
    "network_prefix",
    "new_id",
    "normalise_message",
    "sign_batch",
]
