"""A deterministic synthetic corpus of signal lines, for benchmarks and flow tests.

``generate_corpus(n_signals, n_sites, seed)`` yields compact JSON lines in
time order across sites, as a replay file would hold them:

- ``n_signals`` site signal lines of every type (valid and invalid), plus a
  gateway ``tick`` every 10 s for every site (each site at its own phase);
- background traffic with realistic-ish payloads, spread over sites by a
  Zipf-like weight, mostly healthy (200s, mail sent, cron jobs finishing);
- periodic records: cron runs (``started``/``finished``) and an integration
  heartbeat every 60 s per site; a few cron jobs stop for good early on, a
  few integrations fall silent for a while or for good;
- bursts (about one of each scenario per 50 site-hours) that make the
  default rule pack fire: failing mail, many user hashes from one source,
  password spraying from a new source late in the corpus, lockouts, PHP
  fatals, 5xx storms, traffic spikes, plugin update batches, flagged PHP
  files in uploads, integration drops, database connection errors,
  deadlocks and sensitive config changes;
- per-site ``ts`` non-decreasing, except ~0.4 % of background records stamped
  up to 40 s in the past (late but allowed) and ~0.04 % stamped more than
  90 s in the past (late: ticks keep every rule's clock within 10 s);
- ~0.5 % invalid lines: truncated JSON, a privacy violation (``email`` or an
  oversized ``body`` in ``data``), a wrong type, an unknown signal type.

Everything comes from one ``random.Random(seed)``: no wall clock, no hash
randomisation, so the same arguments give the same bytes on every run.
Rules with long horizons need a long enough ``duration_s``: the default
pack's ``cron-job-stopped`` (2 h) and ``auth-behaviour-shifted`` (2 h 10 min
of history) fire only in corpora of about 2.5 h (9000 s) or more.
"""

from __future__ import annotations

import heapq
import string
from bisect import bisect
from collections.abc import Callable, Iterator
from itertools import accumulate
from pathlib import Path
from random import Random
from typing import Any

from schemas.factory import identity_hash, make_signal, make_tick, signal_line, ulid
from schemas.records import compact_json
from schemas.timestamps import format_ts, parse_ts_checked

START_MS = parse_ts_checked("2026-11-28T00:00:00.000Z")
TICK_MS = 10_000
HEARTBEAT_MS = 60_000
DEFAULT_DURATION_S = 3600

INVALID_SHARE = 0.005
LATE_ALLOWED_SHARE = 0.004
LATE_SHARE = 0.0004

_SITE_PREFIXES = ("shop", "blog", "news", "docs", "forum", "store", "agency", "school", "clinic", "studio")
_PLUGINS = (
    "woocommerce", "akismet", "jetpack", "yoast-seo", "contact-form-7", "elementor", "wordfence",
    "wp-mail-smtp", "updraftplus", "classic-editor", "wpforms-lite", "redirection", "litespeed-cache",
    "all-in-one-seo", "really-simple-ssl", "wp-super-cache", "mailchimp-for-wp", "duplicate-post",
)
_THEMES = ("twentytwentyfour", "astra", "generatepress", "oceanwp", "kadence", "storefront")
_TRANSPORTS = ("smtp", "smtp", "api", "api", "sendmail", "mail", "ses")
_MAIL_ERRORS = ("auth", "timeout", "connection", "rejected", "quota", "tls")
_JOBS = (
    ("wp_version_check", 600_000), ("wp_scheduled_delete", 900_000), ("woocommerce_cleanup_sessions", 300_000),
    ("backup/daily-db", 900_000), ("action_scheduler_run_queue", 300_000), ("wp_privacy_delete_old_export_files", 600_000),
)
_ROUTES = (
    ("GET", "/", "frontend", 30), ("GET", "/product/{slug}", "frontend", 18), ("GET", "/blog/{slug}", "frontend", 14),
    ("POST", "/wp-admin/admin-ajax.php", "ajax", 8), ("GET", "/category/{slug}", "frontend", 6),
    ("GET", "/wp-json/wp/v2/posts", "rest", 5), ("POST", "/wp-json/wc/store/v1/cart", "api", 3),
    ("GET", "/cart", "frontend", 4), ("POST", "/checkout", "frontend", 2), ("POST", "/wp-login.php", "login", 2),
    ("GET", "/wp-admin/edit.php", "admin", 2), ("POST", "/xmlrpc.php", "xmlrpc", 1), ("GET", "/feed", "feed", 2),
    ("GET", "/wp-content/uploads/{path}", "static", 5), ("POST", "/wp-cron.php", "cron", 1), ("HEAD", "/", "frontend", 1),
    ("OPTIONS", "/wp-json/wp/v2", "rest", 1), ("PUT", "/wp-json/wp/v2/posts/{id}", "rest", 1),
    ("DELETE", "/wp-json/wp/v2/comments/{id}", "rest", 1), ("PATCH", "/wp-json/wc/v3/orders/{id}", "api", 1),
)
_STATUSES = ((200, 880), (301, 20), (302, 15), (304, 25), (403, 6), (404, 45), (429, 2), (500, 4), (502, 2), (503, 1))
_UA = (("chrome", 40), ("safari", 18), ("firefox", 8), ("edge", 6), ("bot", 15), ("curl", 3), (None, 10))
_OPTIONS = (
    ("blogname", False), ("blogdescription", False), ("siteurl", True), ("home", True), ("admin_email", True),
    ("users_can_register", True), ("default_role", True), ("active_plugins", True), ("permalink_structure", False),
    ("woocommerce_currency", False), ("posts_per_page", False), ("timezone_string", False),
)
_TABLES = ("wp_posts", "wp_postmeta", "wp_options", "wp_users", "wp_usermeta", "wp_wc_orders", "wp_actionscheduler_actions")
_PHP_LEVELS = (("deprecated", 40), ("notice", 30), ("warning", 25), ("error", 4.7), ("fatal", 0.25), ("parse", 0.05))

# Background mix per type (weights); cron and integration also have periodic records.
_TYPE_WEIGHTS = (
    ("request", 56), ("auth", 10), ("php_error", 10), ("mail", 6), ("db_event", 5), ("cron", 2),
    ("config_change", 2), ("plugin", 0.7), ("file_edit", 2.5), ("integration", 1),
)


class _Weighted:
    """Draw from a fixed weighted table with one uniform and one bisect."""

    __slots__ = ("cum", "items", "total")

    def __init__(self, items: tuple[Any, ...], weights: list[float] | tuple[float, ...]) -> None:
        self.items = items
        self.cum = list(accumulate(weights))
        self.total = self.cum[-1]

    def draw(self, rng: Random) -> Any:
        return self.items[bisect(self.cum, rng.random() * self.total)]


def _table(pairs: tuple[tuple[Any, float], ...]) -> _Weighted:
    return _Weighted(tuple(item for item, _ in pairs), [weight for _, weight in pairs])


_TYPE_TABLE = _table(_TYPE_WEIGHTS)
_STATUS_TABLE = _table(_STATUSES)
_UA_TABLE = _table(_UA)
_ROUTE_TABLE = _Weighted(tuple(route[:3] for route in _ROUTES), [route[3] for route in _ROUTES])
_PHP_LEVEL_TABLE = _table(_PHP_LEVELS)
_OPTION_TABLE = _Weighted(_OPTIONS, [1 if sensitive else 8 for _, sensitive in _OPTIONS])


class _Site:
    """One site's fixed profile: name, activity weight, users, plugins, jobs, phases."""

    def __init__(self, index: int, rng: Random) -> None:
        self.index = index
        self.name = f"{_SITE_PREFIXES[index % len(_SITE_PREFIXES)]}-{index:04d}"
        self.key = f"k{index}"
        n_users = rng.randint(3, 60)
        self.users: list[tuple[str, int, bool]] = []
        for number in range(n_users):
            user = f"user{number}@{self.name}"
            self.users.append((identity_hash(user, self.key), len(user), number < 2))
        self.sources = [f"{rng.choice((198, 203, 192))}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24" for _ in range(8)]
        self.transport = rng.choice(_TRANSPORTS)
        self.plugins = rng.sample(_PLUGINS, rng.randint(4, 12))
        self.theme = rng.choice(_THEMES)
        self.jobs = [(job, period, rng.randrange(period)) for job, period in rng.sample(_JOBS, rng.randint(1, 3))]
        self.job_stops: dict[str, int] = {}
        self.silent = (0, 0)
        self.tick_phase = rng.randrange(TICK_MS)
        self.heartbeat_phase = rng.randrange(HEARTBEAT_MS)
        self.version = f"1.{rng.randint(2, 9)}.{rng.randint(0, 20)}"
        self.fingerprints = [
            (self._component(rng), number) for number in range(rng.randint(3, 12))
        ]
        self.seq = 0

    def _component(self, rng: Random) -> str:
        roll = rng.random()
        if roll < 0.2:
            return "core"
        if roll < 0.35:
            return f"theme:{self.theme}"
        return f"plugin:{rng.choice(self.plugins)}"


def _php_file(component: str, rng: Random) -> str:
    if component == "core":
        return rng.choice(("wp-includes/class-wp-query.php", "wp-includes/functions.php", "wp-admin/includes/post.php"))
    kind, slug = component.split(":", 1)
    folder = "plugins" if kind == "plugin" else "themes"
    return f"wp-content/{folder}/{slug}/{rng.choice(('includes/class-main.php', 'functions.php', 'src/Api.php', 'inc/hooks.php'))}"


def _slug(rng: Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 10)))


def _version(rng: Random) -> str:
    return f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 12)}"


# -- payloads ------------------------------------------------------------------------------------------
# Each maker takes (site, rng) and returns the payload dict of one background signal.

def _request(site: _Site, rng: Random, status: int | None = None, route: tuple[str, str, str] | None = None) -> dict[str, Any]:
    method, path, group = route or _ROUTE_TABLE.draw(rng)
    if "{" in path:
        path = path.split("{", 1)[0] + (str(rng.randint(1, 5000)) if "{id}" in path else _slug(rng))
    code = status if status is not None else _STATUS_TABLE.draw(rng)
    duration = int(rng.lognormvariate(4.3, 0.8)) + (rng.randint(2000, 30000) if code >= 500 else 0)
    data: dict[str, Any] = {"method": method, "path": path, "route_group": group, "status": code, "duration_ms": duration}
    ua = _UA_TABLE.draw(rng)
    if ua is not None or rng.random() < 0.5:
        data["ua_family"] = ua
    return data


def _auth(site: _Site, rng: Random) -> dict[str, Any]:
    roll = rng.random()
    outcome = "success" if roll < 0.8 else "failure" if roll < 0.95 else "logout" if roll < 0.995 else "lockout"
    method = rng.choice(("password", "password", "password", "cookie", "cookie", "app_password", "xmlrpc", "rest", "sso", "other"))
    user_hash, user_len, privileged = rng.choice(site.users)
    data: dict[str, Any] = {"outcome": outcome, "method": method, "user_hash": user_hash, "user_len": user_len}
    if rng.random() < 0.9:
        data["source"] = rng.choice(site.sources)
    data["privileged"] = privileged if rng.random() < 0.8 else None
    return data


def _mail(site: _Site, rng: Random, outcome: str | None = None) -> dict[str, Any]:
    if outcome is None:
        roll = rng.random()
        outcome = "sent" if roll < 0.94 else "deferred" if roll < 0.97 else "failed" if roll < 0.99 else "bounced"
    data: dict[str, Any] = {"outcome": outcome, "transport": site.transport}
    if outcome != "sent":
        data["error_class"] = rng.choice(_MAIL_ERRORS)
    return data


def _cron(site: _Site, rng: Random) -> dict[str, Any]:
    # Off-schedule events of the site's own jobs (so no job appears once and then falls silent).
    job = rng.choice(site.jobs)[0]
    event = rng.choice(("heartbeat", "heartbeat", "failed", "missed"))
    return {"job": job, "event": event}


def _php_error(site: _Site, rng: Random, level: str | None = None, component: str | None = None) -> dict[str, Any]:
    source, number = rng.choice(site.fingerprints)
    component = component or source
    file = _php_file(component, rng)
    line = rng.randint(1, 2500)
    return {
        "level": level or _PHP_LEVEL_TABLE.draw(rng),
        "component": component,
        "file": file,
        "line": line,
        "fingerprint": identity_hash(f"{component}:{file}:{number}", site.key),
    }


def _config_change(site: _Site, rng: Random) -> dict[str, Any]:
    option, sensitive = _OPTION_TABLE.draw(rng)
    data: dict[str, Any] = {"option": option, "sensitive": sensitive}
    data["before_hash"] = identity_hash(f"{option}:{rng.randint(0, 99)}", site.key)
    data["after_hash"] = identity_hash(f"{option}:{rng.randint(100, 199)}", site.key) if rng.random() < 0.95 else None
    if rng.random() < 0.9:
        data["actor_hash"] = site.users[0][0]
    return data


def _db_event(site: _Site, rng: Random) -> dict[str, Any]:
    roll = rng.random()
    kind = "slow_query" if roll < 0.82 else "query_error" if roll < 0.92 else "connection_error" if roll < 0.96 else \
        "deadlock" if roll < 0.99 else "migration"
    data: dict[str, Any] = {"kind": kind, "table": rng.choice(_TABLES) if kind != "connection_error" else None}
    if kind == "slow_query":
        data["duration_ms"] = rng.randint(1000, 15_000)
    return data


def _plugin(site: _Site, rng: Random, action: str | None = None) -> dict[str, Any]:
    roll = rng.random()
    kind = "plugin" if roll < 0.85 else "theme" if roll < 0.95 else "core"
    slug = rng.choice(site.plugins) if kind == "plugin" else site.theme if kind == "theme" else "wordpress"
    action = action or rng.choice(("updated", "updated", "updated", "updated", "activated", "deactivated", "installed", "deleted"))
    data: dict[str, Any] = {"slug": slug, "kind": kind, "action": action}
    if action == "updated":
        data["version_before"] = _version(rng)
        data["version_after"] = _version(rng)
    elif action == "installed":
        data["version_after"] = _version(rng)
    return data


def _file_edit(site: _Site, rng: Random, flags: list[str] | None = None) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.6:
        path = f"wp-content/uploads/2026/11/{_slug(rng)}.{rng.choice(('jpg', 'png', 'webp', 'pdf'))}"
    elif roll < 0.85:
        path = f"wp-content/plugins/{rng.choice(site.plugins)}/{rng.choice(('readme.txt', 'includes/class-main.php', 'assets/app.js'))}"
    elif roll < 0.97:
        path = f"wp-content/themes/{site.theme}/{rng.choice(('functions.php', 'style.css', 'header.php'))}"
    else:
        path = rng.choice(("wp-includes/version.php", "wp-config.php", "index.php"))
    change = rng.choice(("modified", "modified", "modified", "created", "created", "deleted"))
    if flags is None:
        flags = ["core_file"] if path.startswith("wp-includes/") or path in ("wp-config.php", "index.php") else []
    size = rng.randint(-4000, 40_000) if change != "deleted" else -rng.randint(100, 200_000)
    return {"path": path, "change": change, "size_delta": size, "flags": flags}


def _integration(site: _Site, rng: Random, dropped: int | None = None) -> dict[str, Any]:
    if dropped is not None:
        return {"event": "dropped", "dropped": dropped, "buffered": rng.randint(500, 5000)}
    roll = rng.random()
    event = "heartbeat" if roll < 0.8 else "started" if roll < 0.89 else "stopped" if roll < 0.97 else "dropped"
    data: dict[str, Any] = {"event": event, "version": site.version}
    if event == "dropped":
        data["dropped"] = rng.randint(1, 20)
    if event == "heartbeat":
        data["buffered"] = rng.randint(0, 50)
    return data


_MAKERS: dict[str, Callable[[_Site, Random], dict[str, Any]]] = {
    "request": _request, "auth": _auth, "mail": _mail, "cron": _cron, "php_error": _php_error,
    "config_change": _config_change, "db_event": _db_event, "plugin": _plugin, "file_edit": _file_edit,
    "integration": _integration,
}

# -- events --------------------------------------------------------------------------------------------
# An event is (t, stream, n, site index, type, payload or None); payload None = background, drawn when written.
Event = tuple[int, int, int, int, str, "dict[str, Any] | None"]
_TICKS, _PERIODIC, _BURSTS, _BACKGROUND = 0, 1, 2, 3


class _Plan:
    """The fixed part of a corpus: sites, periodic records, bursts; background fills the rest."""

    def __init__(self, n_signals: int, n_sites: int, rng: Random, duration_ms: int) -> None:
        self.rng = rng
        self.duration = duration_ms
        self.sites = [_Site(index, rng) for index in range(n_sites)]
        weights = [1.0 / (rank + 5) ** 0.9 for rank in range(n_sites)]
        rng.shuffle(weights)
        self.site_table = _Weighted(tuple(range(n_sites)), weights)
        self.periodic = self._periodic()
        self.bursts: list[Event] = []
        self._plan_bursts()
        self.bursts.sort()
        self.n_background = n_signals - len(self.periodic) - len(self.bursts)
        if self.n_background < n_signals // 10:
            raise ValueError(
                f"{n_signals} signals are too few for {n_sites} sites over {duration_ms // 1000}s: "
                f"periodic records and bursts alone take {len(self.periodic) + len(self.bursts)}; "
                "give more signals, fewer sites or a shorter duration"
            )

    # Cron runs and integration heartbeats. A few jobs stop early for good (absence: cron-job-stopped),
    # a few integrations fall silent for a while or for good (absence: integration-silent).
    def _periodic(self) -> list[Event]:
        rng, end = self.rng, START_MS + self.duration
        events: list[Event] = []

        def add(t: int, site: _Site, type_: str, data: dict[str, Any]) -> None:
            events.append((t, _PERIODIC, len(events), site.index, type_, data))

        for site in self.sites:
            for job, period, phase in site.jobs:
                stop = end
                if rng.random() < 0.04:
                    stop = START_MS + int(self.duration * rng.uniform(0.03, 0.08))
                    site.job_stops[job] = stop
                t = START_MS + phase
                while t < stop:
                    took = int(rng.lognormvariate(6, 1.5))
                    add(t, site, "cron", {"job": job, "event": "started"})
                    add(t + took, site, "cron", {"job": job, "event": "failed" if rng.random() < 0.01 else "finished", "duration_ms": took})
                    t += period
            silent_from = silent_to = end
            roll = rng.random()
            if roll < 0.04:
                silent_from = START_MS + rng.randrange(self.duration // 10, self.duration * 9 // 10)
                silent_to = silent_from + rng.randint(6, 40) * 60_000 if roll < 0.03 else end
                site.silent = (silent_from, silent_to)
                add(silent_from, site, "integration", {"event": "stopped", "version": site.version})
                if silent_to < end:
                    add(silent_to, site, "integration", {"event": "started", "version": site.version})
            t = START_MS + site.heartbeat_phase
            while t < end:
                if not silent_from <= t < silent_to:
                    add(t, site, "integration", {"event": "heartbeat", "buffered": rng.randint(0, 40), "version": site.version})
                t += HEARTBEAT_MS
        events.sort()
        return events

    def _add(self, t: int, site: _Site, type_: str, data: dict[str, Any]) -> None:
        self.bursts.append((t, _BURSTS, len(self.bursts), site.index, type_, data))

    def _times(self, start: int, span: int, count: int) -> list[int]:
        return sorted(start + self.rng.randrange(span) for _ in range(count))

    def _plan_bursts(self) -> None:
        """About one burst of each scenario per 50 site-hours, at random sites and times."""
        rng = self.rng
        per_scenario = max(1, round(len(self.sites) * self.duration / 3_600_000 / 50))
        lo, hi = START_MS + self.duration // 20, START_MS + self.duration * 9 // 10
        scenarios = (
            self._failing_mail, self._credential_stuffing, self._password_spraying, self._lockouts,
            self._php_fatals, self._server_errors, self._traffic_spike, self._plugin_updates,
            self._web_shell, self._integration_drops, self._database_down, self._deadlocks, self._sensitive_change,
        )
        for _ in range(per_scenario):
            for scenario in scenarios:
                scenario(rng.choice(self.sites), rng.randrange(lo, hi))

    def _failing_mail(self, site: _Site, start: int) -> None:
        rng = self.rng
        for t in self._times(start, rng.randint(300_000, 600_000), rng.randint(12, 40)):
            self._add(t, site, "mail", _mail(site, rng, rng.choice(("failed", "failed", "bounced", "sent"))))

    def _credential_stuffing(self, site: _Site, start: int) -> None:
        """Many distinct user hashes from one source."""
        rng = self.rng
        source = f"185.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24"
        method = rng.choice(("password", "xmlrpc"))
        for number, t in enumerate(self._times(start, rng.randint(120_000, 480_000), rng.randint(30, 150))):
            user = f"guess{number}-{rng.randrange(10**6)}"
            self._add(t, site, "auth", {"outcome": "failure", "method": method, "user_hash": identity_hash(user, site.key),
                                        "user_len": len(user), "source": source})

    def _password_spraying(self, site: _Site, start: int) -> None:
        """A new source hammering a few accounts, late in the corpus (after a long baseline)."""
        rng = self.rng
        start = rng.randrange(START_MS + self.duration * 3 // 4, START_MS + self.duration * 19 // 20)
        source = f"45.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24"
        targets = rng.sample(site.users, min(len(site.users), rng.randint(1, 3)))
        for t in self._times(start, rng.randint(180_000, 600_000), rng.randint(30, 80)):
            user_hash, user_len, privileged = rng.choice(targets)
            self._add(t, site, "auth", {"outcome": "failure", "method": rng.choice(("xmlrpc", "password", "rest")),
                                        "user_hash": user_hash, "user_len": user_len, "source": source, "privileged": privileged})

    def _lockouts(self, site: _Site, start: int) -> None:
        rng = self.rng
        for t in self._times(start, 300_000, rng.randint(3, 8)):
            self._add(t, site, "auth", {**_auth(site, rng), "outcome": "lockout"})

    def _php_fatals(self, site: _Site, start: int) -> None:
        rng = self.rng
        component = f"plugin:{rng.choice(site.plugins)}"
        for t in self._times(start, rng.randint(30_000, 240_000), rng.randint(6, 30)):
            self._add(t, site, "php_error", _php_error(site, rng, "fatal", component))

    def _server_errors(self, site: _Site, start: int) -> None:
        """Mostly 5xx on one route for a few minutes."""
        rng = self.rng
        route = rng.choice(_ROUTES[:5])[:3]
        for t in self._times(start, rng.randint(180_000, 360_000), rng.randint(80, 250)):
            self._add(t, site, "request", _request(site, rng, rng.choice((500, 502, 503, 504, 200)), route))

    def _traffic_spike(self, site: _Site, start: int) -> None:
        """Several times a busy-ish site's usual request rate for ten minutes."""
        rng = self.rng
        site = self.sites[self.site_table.draw(rng)]
        start = START_MS + rng.randrange(self.duration * 6 // 10, self.duration * 8 // 10)
        for t in self._times(start, 600_000, rng.randint(150, 400)):
            self._add(t, site, "request", _request(site, rng))

    def _plugin_updates(self, site: _Site, start: int) -> None:
        rng = self.rng
        t = start
        for slug in rng.sample(site.plugins, min(4, len(site.plugins))):
            t += rng.randint(2000, 8000)
            data = {"slug": slug, "kind": "plugin", "action": "updated", "version_before": _version(rng), "version_after": _version(rng)}
            self._add(t, site, "plugin", data)

    def _web_shell(self, site: _Site, start: int) -> None:
        """Flagged PHP files created in uploads."""
        rng = self.rng
        flag_sets = (["php_in_uploads"], ["php_in_uploads", "obfuscated"], ["eval_call", "base64_blob"], ["obfuscated", "executable_bit"])
        for t in self._times(start, 60_000, rng.randint(1, 4)):
            data = _file_edit(site, rng, list(rng.choice(flag_sets)))
            data.update(path=f"wp-content/uploads/2026/11/{_slug(rng)}.php", change="created")
            self._add(t, site, "file_edit", data)

    def _integration_drops(self, site: _Site, start: int) -> None:
        rng = self.rng
        for t in self._times(start, 600_000, rng.randint(3, 10)):
            self._add(t, site, "integration", _integration(site, rng, rng.randint(10, 5000)))

    def _database_down(self, site: _Site, start: int) -> None:
        rng = self.rng
        for t in self._times(start, rng.randint(60_000, 240_000), rng.randint(6, 25)):
            self._add(t, site, "db_event", {"kind": "connection_error", "table": None})

    def _deadlocks(self, site: _Site, start: int) -> None:
        rng = self.rng
        for t in self._times(start, 300_000, rng.randint(5, 15)):
            self._add(t, site, "db_event", {"kind": "deadlock", "table": rng.choice(_TABLES)})

    def _sensitive_change(self, site: _Site, start: int) -> None:
        rng = self.rng
        option = rng.choice(("admin_email", "users_can_register", "default_role"))
        self._add(start, site, "config_change", {
            "option": option, "sensitive": True, "before_hash": identity_hash(f"{option}:before", site.key),
            "after_hash": identity_hash(f"{option}:{rng.random()}", site.key), "actor_hash": rng.choice(site.users)[0],
        })

    def ticks(self) -> Iterator[Event]:
        order = sorted(self.sites, key=lambda site: site.tick_phase)
        n = 0
        for slot in range(START_MS, START_MS + self.duration, TICK_MS):
            for site in order:
                yield (slot + site.tick_phase, _TICKS, n, site.index, "tick", None)
                n += 1

    def background(self) -> Iterator[Event]:
        rng, draw = self.rng, self.site_table.draw
        count = self.n_background
        slot = self.duration / count
        for k in range(count):
            t = START_MS + int((k + rng.random()) * slot)
            yield (t, _BACKGROUND, k, draw(rng), _TYPE_TABLE.draw(rng), None)


def _invalid(envelope: dict[str, Any], rng: Random) -> str:
    """One of the ways a line can be wrong (the flow must reject each, never drop it silently)."""
    roll = rng.random()
    data = envelope["data"]
    if roll < 0.3:
        line = signal_line(envelope)
        return line[: rng.randint(10, len(line) - 2)]
    if roll < 0.55:
        data["email"] = f"someone{rng.randrange(1000)}@example.com"
        return signal_line(envelope)
    if roll < 0.6:
        data["body"] = "x" * 2100
        return signal_line(envelope)
    if roll < 0.9:
        numbers = [name for name, value in data.items() if isinstance(value, int) and not isinstance(value, bool)]
        if numbers:
            data[numbers[0]] = str(data[numbers[0]])
        else:
            envelope["v"] = "1"
        return signal_line(envelope)
    envelope["type"] = rng.choice(("sms", "pageview", "Auth"))
    return signal_line(envelope)


def generate_corpus(n_signals: int, n_sites: int, seed: int = 1, duration_s: int = DEFAULT_DURATION_S) -> Iterator[str]:
    """Yield the corpus's lines (compact JSON, no newline) in file order.

    ``n_signals`` counts site signal lines (valid or not); ticks come on top,
    one per site every 10 s of the ``duration_s`` the corpus covers.
    """
    if n_signals < 1 or n_sites < 1 or duration_s < 60:
        raise ValueError("need at least one signal, one site and a duration of at least 60 s")
    rng = Random(seed)  # noqa: S311 - synthetic data, reproducible by design
    plan = _Plan(n_signals, n_sites, rng, duration_s * 1000)
    sites = plan.sites
    late_from = START_MS + 900_000
    # The invalid share is of all signal lines, but only background records are made invalid.
    invalid_share = INVALID_SHARE * n_signals / plan.n_background
    streams = heapq.merge(plan.ticks(), iter(plan.periodic), iter(plan.bursts), plan.background())
    for t, stream, _, index, type_, data in streams:
        site = sites[index]
        if stream == _TICKS:
            yield signal_line(make_tick(site.name, t))
            continue
        ts = t
        invalid = False
        if stream == _BACKGROUND:
            if type_ == "cron" and any(stop <= t for stop in site.job_stops.values()):
                type_ = "request"  # keep a stopped job silent: no off-schedule events either
            elif type_ == "integration" and site.silent[0] <= t < site.silent[1]:
                type_ = "request"  # a silent integration sends nothing of its own
            data = _MAKERS[type_](site, rng)
            roll = rng.random()
            if roll < invalid_share:
                invalid = True
            elif roll < invalid_share + LATE_ALLOWED_SHARE and t > START_MS + 60_000:
                ts = t - rng.randint(500, 40_000)
            elif roll < invalid_share + LATE_ALLOWED_SHARE + LATE_SHARE and t > late_from:
                ts = t - rng.randint(90_000, 600_000)
        assert data is not None
        site.seq += 1
        stamp: int | str = ts
        if rng.random() < 0.02:
            # Some integrations send microseconds (truncated to milliseconds on input).
            stamp = format_ts(ts)[:-1] + f"{rng.randrange(1000):03d}Z"
        envelope = make_signal(site.name, type_, stamp, ulid(ts, rng.getrandbits(80)), site.seq if rng.random() < 0.9 else None, **data)
        yield _invalid(envelope, rng) if invalid else compact_json(envelope)


def write_corpus(path: str | Path, n_signals: int, n_sites: int, seed: int = 1, duration_s: int = DEFAULT_DURATION_S) -> int:
    """Write the corpus to ``path`` as JSON Lines; return the number of lines written (ticks included)."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        batch: list[str] = []
        for line in generate_corpus(n_signals, n_sites, seed, duration_s):
            batch.append(line)
            if len(batch) >= 10_000:
                out.write("\n".join(batch) + "\n")
                count += len(batch)
                batch = []
        if batch:
            out.write("\n".join(batch) + "\n")
            count += len(batch)
    return count
