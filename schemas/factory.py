"""Build valid signal lines from plain arguments (tests, the demo, benchmarks).

The one place that knows how to spell an envelope, so generators and test
fixtures never hand-build JSON: ``make_signal("shop", "mail", ts, outcome=...)``.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from typing import Any

from schemas.records import compact_json
from schemas.timestamps import format_ts


def make_signal(site: str, type_: str, ts: int | str, id_: str, seq: int | None = None, **data: Any) -> dict[str, Any]:
    """A signal envelope as a dict; ``ts`` may be epoch milliseconds or a timestamp string."""
    envelope: dict[str, Any] = {"v": 1, "id": id_, "site": site, "type": type_, "ts": ts if isinstance(ts, str) else format_ts(ts)}
    if seq is not None:
        envelope["seq"] = seq
    if type_ != "tick" or data:
        envelope["data"] = data
    return envelope


def make_tick(site: str, ts: int) -> dict[str, Any]:
    """A gateway tick for ``site`` at ``ts`` (epoch milliseconds).

    The id names the second and the site (as a CRC, since a site id can be 63
    characters and an id at most 64), so ticks of different sites never share one.
    """
    return make_signal(site, "tick", ts, f"tick-{ts // 1000:010d}-{zlib.crc32(site.encode()):08x}")


def signal_line(envelope: dict[str, Any]) -> str:
    """The compact JSON line of an envelope (no newline)."""
    return compact_json(envelope)


def identity_hash(value: str, site_key: str = "") -> str:
    """Hash an identity (user name, address) the privacy-respecting way: HMAC-SHA256 hex keyed per site.

    The one implementation: the dispatcher's ``hash_identity`` uses it too.
    """
    return hmac.new(site_key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()
