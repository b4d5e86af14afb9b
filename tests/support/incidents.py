"""A short, hand-made stretch of one site's records with one alert of four kinds, for the web console's tests.

Ninety minutes of ``shop-eu`` from 10:00 (UTC, 2026-11-28), with the gateway's tick every 10 s on its grid:

- requests every 5 s, and between 10:20 and 10:30 every 2 s with a 502 in two of five → ``http-5xx-ratio``
  (ratio, ``for: 1m``) fires and resolves;
- eight fatal errors of ``plugin:checkout-express`` from 10:40, 15 s apart → ``php-fatal-spike`` (threshold);
  one of them names the file ``<script>alert(1)</script>`` (the page must show it as text);
- the integration's heartbeat every minute until 10:50 and again from 11:05 → ``integration-silent`` (absence);
- sensitive ``siteurl`` changes at 10:10, 10:15 and 10:30 → ``sensitive-config-changed`` (match, suppress 15m):
  the third notification counts the second as suppressed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from schemas.factory import make_signal, make_tick, signal_line, ulid
from schemas.timestamps import parse_ts_checked

SITE = "shop-eu"
START = parse_ts_checked("2026-11-28T10:00:00.000Z")
END = START + 90 * 60_000
XSS = "<script>alert(1)</script>"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _at(minute: float) -> int:
    return START + round(minute * 60_000)


def _signals() -> list[tuple[int, str, dict[str, Any]]]:
    signals: list[tuple[int, str, dict[str, Any]]] = []
    request = {"method": "GET", "path": "/cart", "route_group": "shop", "duration_ms": 120, "ua_family": "Chrome"}
    for ts in range(START, END, 5_000):
        if not _at(20) <= ts < _at(30):
            signals.append((ts + 1_000, "request", {**request, "status": 200}))
    for index, ts in enumerate(range(_at(20), _at(30), 2_000)):
        signals.append((ts + 500, "request", {**request, "status": 502 if index % 5 in (1, 3) else 200}))
    for index in range(8):
        signals.append((_at(40) + index * 15_000 + 250, "php_error", {
            "level": "fatal", "component": "plugin:checkout-express", "file": XSS if index == 3 else "checkout/cart.php",
            "line": 120 + index, "fingerprint": _hash("Call to undefined method Cart::summary()"),
        }))
    for minute in [*range(0, 50), *range(65, 90)]:
        signals.append((_at(minute) + 5_000, "integration", {"event": "heartbeat", "dropped": 0, "buffered": 3, "version": "1.4.2"}))
    for minute in (10, 15, 30):
        signals.append((_at(minute) + 2_000, "config_change", {
            "option": "siteurl", "before_hash": _hash("https://shop.example"), "after_hash": _hash("https://evil.example"),
            "actor_hash": _hash("admin"), "sensitive": True,
        }))
    return sorted(signals, key=lambda signal: signal[0])


def incident_lines() -> list[str]:
    """The records as JSON lines, in ts order, each tick after the signals of its millisecond."""
    records = [(ts, 0, make_signal(SITE, type_, ts, ulid(ts, index), seq=index + 1, **data))
               for index, (ts, type_, data) in enumerate(_signals())]
    records += [(ts, 1, make_tick(SITE, ts)) for ts in range(START, END + 1, 10_000)]
    return [signal_line(envelope) for _, _, envelope in sorted(records, key=lambda record: (record[0], record[1]))]


def write_incidents(path: Path) -> Path:
    """Write the records to ``path`` (JSON Lines) and return it."""
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in incident_lines()), encoding="utf-8")
    return path


def notifications_by_rule(lines: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Notification records (JSON lines) per rule id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        record = json.loads(line)
        found.setdefault(record["rule"]["id"], []).append(record)
    return found
