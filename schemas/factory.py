"""Build valid signal lines from plain arguments (tests, the demo, benchmarks).

The one place that knows how to spell an envelope, so generators and test
fixtures never hand-build JSON: ``make_signal("shop", "mail", ts, outcome=...)``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
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


_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def ulid(ms: int, tail: int) -> str:
    """A ULID: 48 bits of epoch milliseconds, then the 80 bits of ``tail``, as 26 Crockford base-32 characters.

    Lexicographic order follows ``ms``; uniqueness comes from ``tail`` (random
    for the dispatcher, derived from a seed by the generators, whose output is
    then the same on every run). The 128 bits are laid out as ULID's 130-bit
    text (two leading zero bits) in 17 bytes, base32-encoded (in C) and mapped
    to Crockford's alphabet.
    """
    value = ((ms & (2**48 - 1)) << 80) | (tail & (2**80 - 1))
    return base64.b32encode((value << 6).to_bytes(17, "big"))[:26].decode().translate(_CROCKFORD)


def signal_line(envelope: dict[str, Any]) -> str:
    """The compact JSON line of an envelope (no newline)."""
    return compact_json(envelope)


def identity_hash(value: str, site_key: str = "") -> str:
    """Hash an identity (user name, address) the privacy-respecting way: HMAC-SHA256 hex keyed per site.

    The one implementation: the dispatcher's ``hash_identity`` uses it too.
    """
    return hmac.new(site_key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()


def network_prefix(ip: str) -> str:
    """The network an address belongs to (signals.md, "The privacy contract"): ``203.0.113.7`` → ``203.0.113.0/24``, IPv6 → its ``/48``.

    The one implementation (the dispatcher and the loghub converter use it):
    IPv4-mapped IPv6 addresses (``::ffff:203.0.113.7``) are treated as the IPv4
    address they carry, brackets and an IPv6 zone (``%eth0``) are ignored.
    Raises :class:`ValueError` (without echoing the input) for anything else.
    """
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("ip: not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    bits = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))
