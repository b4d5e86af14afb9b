"""Identities as keyed hashes, addresses as network prefixes (signals.md, "The privacy contract").

Both helpers are deliberately lossy: a hash keyed per site cannot be joined
with another site's hashes or looked up in a public table, and a /24 (IPv4)
or /48 (IPv6) prefix names a network, not a person.
"""

from __future__ import annotations

import ipaddress

from schemas.factory import identity_hash


def hash_identity(value: str, site_key: str) -> str:
    """HMAC-SHA256 of ``value`` keyed by ``site_key``, as 64 lowercase hex characters.

    Both strings are taken as UTF-8. ``site_key`` is a secret that stays on the
    site (not the gateway secret), so the same user name hashes differently on
    every site and nobody without the key can confirm a guess.
    """
    if not site_key:
        raise ValueError("site_key: must not be empty (identities are hashed with a key per site)")
    return identity_hash(value, site_key)


def network_prefix(ip: str) -> str:
    """The network an address belongs to: ``203.0.113.7`` → ``203.0.113.0/24``, IPv6 → its ``/48``.

    IPv4-mapped IPv6 addresses (``::ffff:203.0.113.7``) are treated as the IPv4
    address they carry; an IPv6 zone (``%eth0``) is ignored. Raises
    :class:`ValueError` (without echoing the input) for anything else.
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
