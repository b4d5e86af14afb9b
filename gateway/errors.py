"""Why the gateway refuses a request or a signal: one reason label each, with its HTTP status.

A refused request is answered ``{"error": <reason>, "message": <one line>}``
with the status below and counted in
``logystera_gateway_requests_rejected_total{reason=...}``; a refused signal
inside an accepted batch is listed in the ``200`` body's ``rejected`` list and
counted in ``logystera_gateway_signals_rejected_total{reason=...}``. Messages
name the header or field at fault and never echo a secret or a signature.
``too_many_connections`` and ``header_timeout`` are decided by the HTTP
protocol before any request exists (``gateway.limits``): the same answer
and counter, but no ``batches_total`` outcome.
"""

from __future__ import annotations

REQUEST_REASONS: dict[str, int] = {
    "too_many_connections": 503,
    "header_timeout": 408,
    "not_found": 404,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
    "missing_signature": 401,
    "invalid_timestamp": 401,
    "stale_timestamp": 401,
    "invalid_batch_id": 400,
    "body_too_large": 413,
    "no_site": 400,
    "unknown_site": 403,
    "body_timeout": 408,
    "overloaded": 503,
    "bad_signature": 401,
    "invalid_json": 400,
    "invalid_batch": 422,
    "batch_id_mismatch": 400,
    "too_many_signals": 413,
    "unavailable": 503,
}
"""Every reason a whole request is refused, in the order the checks run, with its status."""

SIGNAL_REASONS: tuple[str, ...] = ("tick", "site_mismatch", "type_disabled", "invalid", "future_ts", "duplicate_id")
"""Every reason one signal of an accepted batch is refused (``invalid``: the signal contract or privacy rules;
``future_ts``: dated further ahead of the gateway's clock than ``--max-future``)."""


class Rejected(Exception):
    """A request the gateway refuses: ``reason`` is a key of :data:`REQUEST_REASONS`, ``message`` one line for the sender."""

    def __init__(self, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = REQUEST_REASONS[reason]
        self.message = message
        self.retry_after = retry_after
