"""Signals from plain arguments, and the local check every emitted signal passes.

:class:`Signals` is bound to one site and its identity key; each method builds
one envelope of the contract (signals.md) with a fresh ULID and the current
time. Two kinds of input are treated differently, on purpose:

- values the *application* chooses (``outcome``, ``method``, ``level``, ...)
  must be valid: a wrong one is a programming mistake and raises
  :class:`InvalidSignal` naming the field;
- values that come from the *outside world* (user names, IP addresses, request
  paths, file paths, user-agent families) are made to fit instead, because a
  monitoring hook must never break the request it observes: identities are
  hashed, an address becomes its network prefix (an unparsable one is left
  out), a path loses its query string and characters the contract forbids,
  and over-long strings are truncated.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dispatcher._privacy import hash_identity, network_prefix
from schemas.errors import UsageError
from schemas.factory import make_signal, ulid
from schemas.records import Record, parse_record
from schemas.signals import SITE_PATTERN

Clock = Callable[[], float]

_SITE_RE = re.compile(SITE_PATTERN)
# Characters signals.md forbids in `path`, `file` and `job`: `@`, whitespace other than a plain space, control characters.
_UNSAFE = re.compile(r"[@\x00-\x1f\x7f-\x9f]|[^\S ]")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\b0x[0-9a-fA-F]+\b|\d+")
_SPACES = re.compile(r"\s+")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class InvalidSignal(UsageError, ValueError):
    """A signal that breaks the contract; the message starts with the offending field (``data.outcome: ...``)."""


def new_id(ms: int | None = None) -> str:
    """A ULID: 48 bits of epoch milliseconds and 80 random bits, 26 Crockford base-32 characters.

    Lexicographic order follows creation time (to the millisecond), which keeps
    ids readable in logs; uniqueness comes from the random part.
    """
    return ulid(int(time.time() * 1000) if ms is None else ms, secrets.randbits(80))


def _first_unencodable(value: Any, path: str) -> str | None:
    """The dotted path of the first value JSON cannot carry (a float NaN, a datetime, a set, ...)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}{key!r}" if path else repr(key)
            found = _first_unencodable(item, f"{path}{key}.")
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_unencodable(item, f"{path}{index}.")
            if found:
                return found
        return None
    if value is None or isinstance(value, str | int | bool) or (isinstance(value, float) and value == value and abs(value) != float("inf")):
        return None
    return path.rstrip(".") or "signal"


def encode_signal(signal: Mapping[str, Any]) -> tuple[str, Record]:
    """Check one signal against the contract; return its compact JSON line and the parsed record.

    Raises :class:`InvalidSignal` naming the field for anything the gateway
    would reject (wrong type or value, unknown field, over 2048 bytes, a tick).
    """
    if not isinstance(signal, Mapping):
        raise InvalidSignal(f"signal: must be a dict, not {type(signal).__name__}")
    bad = _first_unencodable(signal, "")
    if bad is not None:
        raise InvalidSignal(f"{bad}: not representable in JSON")
    line = json.dumps(signal, separators=(",", ":"), ensure_ascii=False)
    parsed = parse_record(line.encode("utf-8"), 0)
    if isinstance(parsed, str):
        raise InvalidSignal(parsed)
    if parsed.type == "tick":
        raise InvalidSignal("type: 'tick' is written by the gateway, never by a site")
    return line, parsed


def _fit(value: str | None, limit: int) -> str | None:
    """``value`` cut to ``limit`` code points (outside-world strings are shortened, not rejected)."""
    return None if value is None else str(value)[:limit]


def _safe_path(value: str | None, limit: int) -> str | None:
    """A path the contract accepts: no query string or fragment, forbidden characters as ``_``, at most ``limit``."""
    if value is None:
        return None
    text = re.split(r"[?#]", str(value), maxsplit=1)[0]
    return _UNSAFE.sub("_", text)[:limit]


def _ms(value: float | None) -> int | None:
    """A duration in whole milliseconds, never negative (clocks step backwards)."""
    if value is None or isinstance(value, bool):
        return value  # a bool is left for validation to reject
    return max(0, int(value))


def normalise_message(message: str) -> str:
    """An error message with its variable parts removed: quoted strings → ``?``, numbers → ``N``, spaces collapsed."""
    text = _QUOTED.sub("?", message)
    text = _NUMBER.sub("N", text)
    return _SPACES.sub(" ", text).strip()


def _canonical(value: Any) -> str:
    """A configuration value as the string that gets hashed (strings as-is, anything else as sorted compact JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


class Signals:
    """Builds valid envelopes for one site; identities are hashed with ``identity_key``.

    ``identity_key`` is a secret of the site, separate from the gateway secret
    (rotating the gateway secret must not change every user hash). ``root``,
    when given, is stripped from the front of file paths (``php_error.file``,
    ``file_edit.path``) so the server's directory layout is not sent.
    Every method takes keyword-only ``ts`` (epoch seconds; default: now) and
    ``seq``, and returns the envelope as a dict ready for ``Dispatcher.emit``.
    """

    def __init__(self, site: str, identity_key: str, *, root: str | None = None, clock: Clock = time.time) -> None:
        if not isinstance(site, str) or not _SITE_RE.match(site):
            raise ValueError(f"site: {site!r} does not match {SITE_PATTERN}")
        if not identity_key:
            raise ValueError("identity_key: must not be empty")
        self.site = site
        self._key = identity_key
        self._root = root.rstrip("/") + "/" if root else None
        self._clock = clock

    def hash(self, value: str) -> str:
        """``value`` hashed the way this site hashes identities (:func:`hash_identity`)."""
        return hash_identity(value, self._key)

    def _build(self, type_: str, data: dict[str, Any], ts: float | None, seq: int | None) -> dict[str, Any]:
        ms = int((self._clock() if ts is None else ts) * 1000)
        payload = {name: value for name, value in data.items() if value is not None}
        envelope = make_signal(self.site, type_, ms, new_id(ms), seq, **payload)
        encode_signal(envelope)
        return envelope

    def _relative(self, path: str) -> str:
        if self._root and path.startswith(self._root):
            return path[len(self._root) :]
        return path

    def auth(
        self,
        outcome: str,
        method: str,
        user: str | None = None,
        ip: str | None = None,
        *,
        privileged: bool | None = None,
        ts: float | None = None,
        seq: int | None = None,
    ) -> dict[str, Any]:
        """An authentication attempt; ``user`` travels as ``user_hash``/``user_len``, ``ip`` as its network prefix."""
        source = None
        if ip is not None:
            try:
                source = network_prefix(ip)
            except ValueError:
                source = None  # an unparsable address (a forged header) is left out rather than failing the login
        data: dict[str, Any] = {"outcome": outcome, "method": method, "source": source, "privileged": privileged}
        if user is not None:
            data["user_hash"] = self.hash(user)
            data["user_len"] = min(len(user), 256)
        return self._build("auth", data, ts, seq)

    def mail(self, outcome: str, transport: str, error_class: str | None = None, *, ts: float | None = None,
             seq: int | None = None) -> dict[str, Any]:
        """An outbound mail attempt (never the address or the message)."""
        return self._build("mail", {"outcome": outcome, "transport": _fit(transport, 32), "error_class": _fit(error_class, 64)},
                           ts, seq)

    def cron(self, job: str, event: str, duration_ms: float | None = None, *, ts: float | None = None,
             seq: int | None = None) -> dict[str, Any]:
        """A scheduled job's lifecycle event."""
        return self._build("cron", {"job": _safe_path(job, 128), "event": event, "duration_ms": _ms(duration_ms)}, ts, seq)

    def php_error(self, level: str, component: str, file: str, line: int, message: str, *, ts: float | None = None,
                  seq: int | None = None) -> dict[str, Any]:
        """A PHP error; ``message`` is normalised and travels only as its keyed hash (``fingerprint``)."""
        data = {"level": level, "component": _fit(component, 128), "file": _safe_path(self._relative(file), 256), "line": line,
                "fingerprint": self.hash(normalise_message(message))}
        return self._build("php_error", data, ts, seq)

    def config_change(self, option: str, before: Any = None, after: Any = None, actor: str | None = None, *,
                      sensitive: bool = False, ts: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """A configuration change; the values and the actor travel only as keyed hashes."""
        data = {
            "option": option,
            "before_hash": None if before is None else self.hash(_canonical(before)),
            "after_hash": None if after is None else self.hash(_canonical(after)),
            "actor_hash": None if actor is None else self.hash(actor),
            "sensitive": sensitive,
        }
        return self._build("config_change", data, ts, seq)

    def db_event(self, kind: str, table: str | None = None, duration_ms: float | None = None, *, ts: float | None = None,
                 seq: int | None = None) -> dict[str, Any]:
        """A database event (never the query)."""
        return self._build("db_event", {"kind": kind, "table": _fit(table, 64), "duration_ms": _ms(duration_ms)}, ts, seq)

    def request(self, method: str, path: str, route_group: str, status: int, duration_ms: float, ua_family: str | None = None, *,
                ts: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """The shape of one request; pass the route template as ``path`` when there is one (the query string is cut)."""
        verb = str(method).upper()
        data = {"method": verb if verb in _METHODS else "OTHER", "path": _safe_path(path, 256), "route_group": _fit(route_group, 64),
                "status": status, "duration_ms": _ms(duration_ms), "ua_family": _fit(ua_family, 32)}
        return self._build("request", data, ts, seq)

    def plugin(self, slug: str, kind: str, action: str, version_before: str | None = None, version_after: str | None = None, *,
               ts: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """A plugin, theme, module or core lifecycle change."""
        data = {"slug": slug, "kind": kind, "action": action, "version_before": _fit(version_before, 32),
                "version_after": _fit(version_after, 32)}
        return self._build("plugin", data, ts, seq)

    def file_edit(self, path: str, change: str, size_delta: int, flags: Iterable[str] = (), *, ts: float | None = None,
                  seq: int | None = None) -> dict[str, Any]:
        """A file edit: the size delta and heuristic flags (repeats removed), never the content."""
        data = {"path": _safe_path(self._relative(path), 256), "change": change, "size_delta": size_delta,
                "flags": list(dict.fromkeys(flags))}
        return self._build("file_edit", data, ts, seq)

    def integration(self, event: str, *, dropped: int | None = None, buffered: int | None = None, version: str | None = None,
                    ts: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """The integration reporting on itself (the dispatcher sends these on its own)."""
        return self._build("integration", {"event": event, "dropped": dropped, "buffered": buffered, "version": version}, ts, seq)


def fingerprint(message: str, identity_key: str) -> str:
    """The ``php_error.fingerprint`` of a message: its normalised form, hashed with the site's key."""
    return hash_identity(normalise_message(message), identity_key)

