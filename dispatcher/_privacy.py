"""Identities as keyed hashes, addresses as network prefixes (signals.md, "The privacy contract").

Both helpers are deliberately lossy: a hash keyed per site cannot be joined
with another site's hashes or looked up in a public table, and a /24 (IPv4)
or /48 (IPv6) prefix names a network, not a person.
"""

from __future__ import annotations

from schemas.factory import identity_hash, network_prefix

__all__ = ["hash_identity", "network_prefix"]


def hash_identity(value: str, site_key: str) -> str:
    """HMAC-SHA256 of ``value`` keyed by ``site_key``, as 64 lowercase hex characters.

    Both strings are taken as UTF-8. ``site_key`` is a secret that stays on the
    site (not the gateway secret), so the same user name hashes differently on
    every site and nobody without the key can confirm a guess.
    """
    if not site_key:
        raise ValueError("site_key: must not be empty (identities are hashed with a key per site)")
    return identity_hash(value, site_key)
