"""A deterministic simulated day of four sites, with incidents injected at known times.

``generate_day(seed)`` yields signal envelopes for 2026-11-28 (00:00–24:00 UTC)
for ``shop-eu``, ``blog-us``, ``agency-main`` and ``docs-site``: background
traffic (requests, logins, mail, cron runs, integration heartbeats, PHP
warnings, slow queries, the odd setting change) plus the gateway's tick every
10 s per site, merged across sites in time order. Everything comes from
``random.Random`` instances seeded from ``seed`` and the site name, and time
only from the scenario's own clock, so the same seed gives the same file byte
for byte.

The incidents (:data:`INCIDENTS`) are written so that each fires the rules of
the default pack listed with it, and the background is shaped to fire none:

- blog-us 02:38 credential stuffing from ``203.0.113.0/24`` (hundreds of
  distinct user hashes, lockouts), one account taken over, then two sensitive
  settings changed and a web shell dropped into uploads;
- agency-main 09:00 seven plugins/themes updated within minutes;
- shop-eu 10:10 SMTP authentication failing for 42 minutes;
- agency-main 11:20 the ``agency_crm_sync`` cron job stops (fixed at 15:30);
- shop-eu 15:30 a plugin deploy that throws fatal errors on the shop pages
  (5xx), hot-fixed at 15:52.

``docs-site`` carries background traffic only. Privacy as in signals.md:
identities are ``identity_hash`` values with their length, addresses are
network prefixes, and every prefix comes from documentation, benchmarking or
shared address space (RFC 5737, RFC 2544, RFC 6598, RFC 3849), never from a
real network.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.factory import identity_hash, make_signal, make_tick, signal_line, ulid
from schemas.timestamps import parse_ts_checked

DAY_START = "2026-11-28T00:00:00.000Z"
START_MS = parse_ts_checked(DAY_START)
DAY_MS = 86_400_000
END_MS = START_MS + DAY_MS
MINUTE_MS = 60_000
TICK_INTERVAL_MS = 10_000
HEARTBEAT_INTERVAL_MS = 60_000
INTEGRATION_VERSION = "1.4.2"
ATTACK_SOURCE = "203.0.113.0/24"
"""The /24 the credential-stuffing wave comes from (RFC 5737 TEST-NET-3)."""


def at(clock: str) -> int:
    """Epoch milliseconds of ``HH:MM`` or ``HH:MM:SS`` on the scenario day (UTC)."""
    parts = [int(part) for part in clock.split(":")]
    hours, minutes, seconds = [*parts, 0, 0][:3]
    return START_MS + ((hours * 60 + minutes) * 60 + seconds) * 1000


@dataclass(frozen=True)
class Incident:
    """One injected incident: where, when, and the rules of the default pack it should fire."""

    name: str
    site: str
    start: int
    end: int
    rules: tuple[str, ...]
    description: str


INCIDENTS: tuple[Incident, ...] = (
    Incident(
        "credential-stuffing", "blog-us", at("02:38"), at("02:52"),
        ("credential-stuffing", "auth-behaviour-shifted", "login-lockouts"),
        f"~390 failed logins for ~350 distinct users from {ATTACK_SOURCE} in 14 minutes (XML-RPC and wp-login), 6 lockouts",
    ),
    Incident(
        "account-takeover", "blog-us", at("02:49"), at("03:00"),
        ("sensitive-config-changed", "suspicious-file-edit", "obfuscated-code-written"),
        "an administrator login from the attacking network, registration opened with administrator as the "
        "default role, two obfuscated PHP files written into uploads",
    ),
    Incident(
        "plugin-update-burst", "agency-main", at("09:00"), at("09:07"),
        ("plugin-lifecycle-burst",),
        "six plugins and the parent theme updated within seven minutes",
    ),
    Incident(
        "mail-outage", "shop-eu", at("10:10"), at("10:52"),
        ("mail-delivery-failing",),
        "SMTP authentication failing for every message for 42 minutes, then the deferred mail goes out",
    ),
    Incident(
        "cron-stopped", "agency-main", at("11:20"), at("15:30"),
        ("cron-job-stopped",),
        "the agency_crm_sync job (every 5 minutes) stops running; fixed at 15:30",
    ),
    Incident(
        "deploy-fatal-spike", "shop-eu", at("15:30"), at("15:53"),
        ("plugin-lifecycle-burst", "php-fatal-spike", "http-5xx-ratio"),
        "checkout-express 3.5.0 deployed: fatal TypeError on product, cart and checkout pages; hotfix 3.5.1 at 15:52:30",
    ),
)
"""Every injected incident, in time order."""

SITES: tuple[str, ...] = ("shop-eu", "blog-us", "agency-main", "docs-site")
BACKGROUND_ONLY_SITES: tuple[str, ...] = tuple(site for site in SITES if all(i.site != site for i in INCIDENTS))


# -- site profiles -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """A route template the site serves, how often and how fast."""

    method: str
    path: str
    group: str
    weight: float
    median_ms: int
    ok: int = 200
    shop_page: bool = False  # renders the checkout-express blocks (broken by the 15:30 deploy)


@dataclass(frozen=True)
class CronJob:
    """A scheduled job: runs every ``every_min`` minutes at ``offset_s`` past its slot."""

    name: str
    every_min: int
    median_ms: int
    offset_s: int


@dataclass(frozen=True)
class PhpIssue:
    """A recurring PHP message: where it comes from and how often (relative weight)."""

    level: str
    component: str
    file: str
    line: int
    message: str
    weight: float


@dataclass(frozen=True)
class SiteProfile:
    """How one site behaves on an ordinary day (rates are per hour/minute at the daily peak)."""

    site: str
    utc_offset_h: int
    requests_per_min: float
    routes: tuple[Route, ...]
    users: int
    admins: int
    logins_per_hour: float
    mail_per_hour: float
    transport: str
    cron: tuple[CronJob, ...]
    php_per_hour: float
    php: tuple[PhpIssue, ...]
    slow_queries_per_hour: float
    tables: tuple[str, ...]
    heartbeat_offset_ms: int


_CORE_DEPRECATED = PhpIssue(
    "deprecated", "core", "wp-includes/functions.php", 6085,
    "Function get_page_by_title is deprecated since version 6.2.0", 2,
)

PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        site="shop-eu", utc_offset_h=1, requests_per_min=55,
        routes=(
            Route("GET", "/", "frontend", 8, 180),
            Route("GET", "/product/{slug}", "frontend", 30, 240, shop_page=True),
            Route("GET", "/product-category/{slug}", "frontend", 12, 260),
            Route("GET", "/cart", "frontend", 5, 210, shop_page=True),
            Route("GET", "/checkout", "frontend", 3, 320, shop_page=True),
            Route("POST", "/wc-ajax/checkout", "ajax", 1.5, 900, shop_page=True),
            Route("POST", "/wc-ajax/update_order_review", "ajax", 2.5, 350, shop_page=True),
            Route("POST", "/wp-admin/admin-ajax.php", "ajax", 5, 150),
            Route("GET", "/wp-json/wc/store/v1/cart", "rest", 6, 120, shop_page=True),
            Route("GET", "/my-account", "frontend", 3, 230),
            Route("GET", "/wp-admin/admin.php", "admin", 1.5, 420),
            Route("GET", "/feed", "feed", 0.6, 90),
            Route("GET", "/wp-cron.php", "cron", 1, 60),
            Route("GET", "/wp-content/uploads/{yyyy}/{mm}/{file}", "static", 6, 8),
        ),
        users=3000, admins=4, logins_per_hour=30, mail_per_hour=150, transport="smtp",
        cron=(
            CronJob("action_scheduler_run_queue", 1, 1800, 2),
            CronJob("wc_stock_sync", 5, 4200, 31),
            CronJob("woocommerce_cancel_unpaid_orders", 15, 900, 47),
            CronJob("wp_scheduled_delete", 60, 2500, 123),
        ),
        php_per_hour=12,
        php=(
            PhpIssue("warning", "plugin:woo-gift-cards", "wp-content/plugins/woo-gift-cards/includes/class-balance.php", 88,
                     "Undefined array key \"balance\"", 5),
            PhpIssue("notice", "theme:storefront-child", "wp-content/themes/storefront-child/functions.php", 41,
                     "Trying to access array offset on value of type null", 3),
            PhpIssue("warning", "plugin:checkout-express", "wp-content/plugins/checkout-express/src/Assets.php", 57,
                     "filemtime(): stat failed", 1),
            _CORE_DEPRECATED,
        ),
        slow_queries_per_hour=4, tables=("wp_postmeta", "wp_wc_orders_meta", "wp_options", "wp_actionscheduler_actions"),
        heartbeat_offset_ms=7_250,
    ),
    SiteProfile(
        site="blog-us", utc_offset_h=-5, requests_per_min=28,
        routes=(
            Route("GET", "/", "frontend", 10, 150),
            Route("GET", "/{yyyy}/{mm}/{slug}", "frontend", 40, 190),
            Route("GET", "/category/{slug}", "frontend", 8, 200),
            Route("GET", "/feed", "feed", 8, 70),
            Route("GET", "/wp-json/wp/v2/posts", "rest", 4, 110),
            Route("POST", "/xmlrpc.php", "xmlrpc", 0.5, 140),
            Route("POST", "/wp-comments-post.php", "frontend", 0.8, 300, ok=302),
            Route("GET", "/wp-admin/edit.php", "admin", 1, 380),
            Route("GET", "/.env", "frontend", 0.6, 40, ok=404),
            Route("GET", "/wp-content/uploads/{yyyy}/{mm}/{file}", "static", 8, 6),
        ),
        users=14, admins=3, logins_per_hour=5, mail_per_hour=6, transport="smtp",
        cron=(
            CronJob("publish_future_post", 5, 600, 12),
            CronJob("jetpack_sync_cron", 5, 2200, 44),
            CronJob("wp_scheduled_auto_draft_delete", 60, 700, 305),
        ),
        php_per_hour=6,
        php=(
            PhpIssue("warning", "theme:magazine-pro", "wp-content/themes/magazine-pro/lib/structure/header.php", 212,
                     "Attempt to read property \"ID\" on null", 3),
            PhpIssue("notice", "plugin:related-posts-lite", "wp-content/plugins/related-posts-lite/related.php", 73,
                     "Undefined variable $thumb", 2),
            _CORE_DEPRECATED,
        ),
        slow_queries_per_hour=1, tables=("wp_posts", "wp_comments", "wp_options"),
        heartbeat_offset_ms=19_800,
    ),
    SiteProfile(
        site="agency-main", utc_offset_h=0, requests_per_min=10,
        routes=(
            Route("GET", "/", "frontend", 12, 170),
            Route("GET", "/services/{slug}", "frontend", 10, 190),
            Route("GET", "/work/{slug}", "frontend", 10, 230),
            Route("GET", "/contact", "frontend", 3, 160),
            Route("POST", "/contact", "frontend", 0.4, 650, ok=302),
            Route("POST", "/wp-json/agency/v1/leads", "api", 0.5, 210, ok=201),
            Route("GET", "/wp-admin/post.php", "admin", 1, 400),
            Route("GET", "/wp-content/uploads/{yyyy}/{mm}/{file}", "static", 8, 7),
        ),
        users=6, admins=2, logins_per_hour=3, mail_per_hour=10, transport="api",
        cron=(
            CronJob("agency_crm_sync", 5, 5200, 21),
            CronJob("backup_incremental", 15, 38000, 240),
            CronJob("wp_privacy_delete_old_export_files", 60, 400, 1510),
        ),
        php_per_hour=4,
        php=(
            PhpIssue("warning", "theme:agency-child", "wp-content/themes/agency-child/inc/portfolio.php", 130,
                     "foreach() argument must be of type array|object, bool given", 2),
            _CORE_DEPRECATED,
        ),
        slow_queries_per_hour=1, tables=("wp_posts", "wp_postmeta"),
        heartbeat_offset_ms=33_100,
    ),
    SiteProfile(
        site="docs-site", utc_offset_h=2, requests_per_min=16,
        routes=(
            Route("GET", "/", "frontend", 5, 120),
            Route("GET", "/docs/{section}/{page}", "frontend", 60, 140),
            Route("GET", "/search", "frontend", 10, 320),
            Route("GET", "/api/reference/{endpoint}", "api", 10, 160),
            Route("GET", "/feed", "feed", 2, 60),
            Route("GET", "/wp-content/uploads/{yyyy}/{mm}/{file}", "static", 12, 5),
        ),
        users=9, admins=2, logins_per_hour=2, mail_per_hour=2, transport="sendmail",
        cron=(
            CronJob("search_reindex", 10, 9000, 55),
            CronJob("docs_link_check", 30, 26000, 600),
            CronJob("wp_update_plugins", 60, 3100, 900),
        ),
        php_per_hour=2,
        php=(
            PhpIssue("notice", "plugin:docs-toc", "wp-content/plugins/docs-toc/toc.php", 19,
                     "Undefined index: anchor", 2),
            _CORE_DEPRECATED,
        ),
        slow_queries_per_hour=1, tables=("wp_posts", "wp_docs_search"),
        heartbeat_offset_ms=48_600,
    ),
)

_UA_FAMILIES = ("Chrome", "Safari", "Mobile Safari", "Firefox", "Edge", "Googlebot", "bingbot", "Other")
_UA_WEIGHTS = (40, 12, 14, 6, 6, 7, 3, 12)
_PLUGIN_BURST = (
    ("akismet", "plugin", "5.3.3", "5.3.5"),
    ("contact-form-7", "plugin", "5.9.8", "6.0.1"),
    ("wordpress-seo", "plugin", "23.8", "24.0"),
    ("wp-mail-smtp", "plugin", "4.1.1", "4.2.0"),
    ("elementor", "plugin", "3.25.4", "3.25.9"),
    ("updraftplus", "plugin", "1.24.7", "1.24.11"),
    ("astra", "theme", "4.8.4", "4.8.6"),
)
_DEPLOY_FATAL = PhpIssue(
    "fatal", "plugin:checkout-express", "wp-content/plugins/checkout-express/src/Blocks/CartSummary.php", 212,
    "Uncaught TypeError: CheckoutExpress\\Blocks\\CartSummary::render(): Argument #1 ($cart) must be of type "
    "WC_Cart, null given", 1,
)


def _fingerprint(message: str) -> str:
    """The hash of a normalised PHP message (what the integration sends instead of the text)."""
    return hashlib.sha256(" ".join(message.lower().split()).encode()).hexdigest()


def _value_hash(value: str) -> str:
    """The hash of a setting's value (config_change carries hashes, never values)."""
    return hashlib.sha256(value.encode()).hexdigest()


def _ulid(ts: int, *salt: object) -> str:
    """A ULID whose 80 bits after the time are derived from ``salt`` (deterministic, not random)."""
    return ulid(ts, int.from_bytes(hashlib.sha256(":".join(map(str, salt)).encode()).digest()[:10], "big"))


@dataclass(frozen=True)
class _User:
    name_hash: str
    length: int
    privileged: bool
    source: str


# -- one site's day --------------------------------------------------------------------------------

_Event = tuple[int, int, int, str, dict[str, Any]]
"""(ts, priority, order, type, data): ticks sort after the signals stamped with the same ms."""


class _SiteDay:
    """Generates one site's records for the day, in ts order, lazily minute by minute."""

    def __init__(self, profile: SiteProfile, seed: int) -> None:
        self.profile = profile
        self.site = profile.site
        self.seed = seed
        self.rng = random.Random(f"logystera-scenario:{seed}:{profile.site}")  # noqa: S311 - a simulation, not security
        self.key = f"demo-site-key:{profile.site}"
        self.heap: list[_Event] = []
        self.order = 0
        self.seq = 0
        self.route_weights = _cumulative([route.weight for route in profile.routes])
        self.users = [self._make_user(privileged=index < profile.admins) for index in range(profile.users)]
        self.user_weights = _cumulative([1.0 / (index + 1) ** 0.6 for index in range(profile.users)])
        self.php_weights = _cumulative([issue.weight for issue in profile.php])
        self.deferred_mail = 0

    # -- helpers -------------------------------------------------------------------------------
    def _make_user(self, privileged: bool) -> _User:
        rng = self.rng
        name = "".join(rng.choice(string.ascii_lowercase + string.digits + "._") for _ in range(rng.randint(4, 22)))
        return _User(identity_hash(name, self.key), len(name), privileged, _random_prefix(rng))

    def emit(self, ts: int, type_: str, **data: Any) -> None:
        """Schedule a signal (``None`` fields are left out: they are optional)."""
        if ts >= END_MS:
            return
        payload = {name: value for name, value in data.items() if value is not None}
        heapq.heappush(self.heap, (ts, 0, self.order, type_, payload))
        self.order += 1

    def level(self, ts: int) -> float:
        """Traffic level in (0.3, 1]: quietest at 04:00 local time, busiest at 16:00."""
        hour = ((ts - START_MS) / 3_600_000 + self.profile.utc_offset_h) % 24
        return 0.3 + 0.7 * (1 - math.cos(2 * math.pi * (hour - 4) / 24)) / 2

    def duration(self, median_ms: float, spread: float = 0.5) -> int:
        """A log-normal duration around ``median_ms``."""
        return max(1, int(median_ms * math.exp(self.rng.gauss(0, spread))))

    def pick_user(self) -> _User:
        """A user of the site; a few regulars log in far more often than the rest."""
        return self.rng.choices(self.users, cum_weights=self.user_weights)[0]

    # -- the day, minute by minute -------------------------------------------------------------
    def records(self) -> Iterator[dict[str, Any]]:
        """Every record of the site for the day, in non-decreasing ts order."""
        for minute in range(DAY_MS // MINUTE_MS):
            t0 = START_MS + minute * MINUTE_MS
            self.minute(t0)
            for tick in range(t0, t0 + MINUTE_MS, TICK_INTERVAL_MS):
                heapq.heappush(self.heap, (tick, 1, self.order, "tick", {}))
                self.order += 1
            # Everything generated from the next minute on is stamped at or after its start.
            yield from self._flush(t0 + MINUTE_MS)
        yield from self._flush(END_MS)

    def _flush(self, before: int) -> Iterator[dict[str, Any]]:
        heap = self.heap
        while heap and heap[0][0] < before:
            ts, _, _, type_, data = heapq.heappop(heap)
            if type_ == "tick":
                yield make_tick(self.site, ts)
                continue
            self.seq += 1
            yield make_signal(self.site, type_, ts, _ulid(ts, self.seed, self.site, self.seq), seq=self.seq, **data)

    def minute(self, t0: int) -> None:
        """Schedule the background and incident signals that start in the minute at ``t0``."""
        level = self.level(t0)
        self.requests(t0, level)
        self.logins(t0, level)
        self.mail(t0, level)
        self.cron(t0)
        self.heartbeat(t0)
        self.php_noise(t0, level)
        self.database(t0)
        self.chores(t0)
        self.incidents(t0)

    def requests(self, t0: int, level: float) -> None:
        """Visitors, bots and the occasional error."""
        rng = self.rng
        profile = self.profile
        for _ in range(_poisson(rng, profile.requests_per_min * level)):
            route = rng.choices(profile.routes, cum_weights=self.route_weights)[0]
            ts = t0 + rng.randrange(MINUTE_MS)
            if route.shop_page and self.site == "shop-eu" and at("15:30:40") <= ts < at("15:52:30") and rng.random() < 0.85:
                # The deploy: the cart summary block throws, the page dies with a 500.
                self.php(ts, _DEPLOY_FATAL)
                self.emit(ts, "request", method=route.method, path=route.path, route_group=route.group, status=500,
                          duration_ms=self.duration(110, 0.3), ua_family=self.ua())
                continue
            status, duration = self.status(route)
            self.emit(ts, "request", method=route.method, path=route.path, route_group=route.group, status=status,
                      duration_ms=duration, ua_family=self.ua())

    def ua(self) -> str:
        """A user-agent family."""
        return self.rng.choices(_UA_FAMILIES, weights=_UA_WEIGHTS)[0]

    def status(self, route: Route) -> tuple[int, int]:
        """An ordinary status and duration for ``route``: mostly fine, a few 404s, very rare 5xx."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.0008:
            status = rng.choices((500, 502, 504), weights=(6, 3, 1))[0]
            return status, self.duration({500: 300, 502: 40, 504: 30_000}[status], 0.2)
        if route.ok == 404 or roll < 0.025:
            return 404, self.duration(60, 0.4)
        if roll < 0.03:
            return rng.choice((301, 302)), self.duration(40, 0.4)
        if roll < 0.032:
            return 403, self.duration(30, 0.4)
        if route.group == "static" and roll < 0.35:
            return 304, self.duration(3, 0.4)
        return route.ok, self.duration(route.median_ms)

    def logins(self, t0: int, level: float) -> None:
        """People logging in: mostly first time right, sometimes a typo or two, rarely a lockout."""
        rng = self.rng
        for _ in range(_poisson(rng, self.profile.logins_per_hour / 60 * level)):
            user = self.pick_user()
            ts = t0 + rng.randrange(MINUTE_MS)
            roll = rng.random()
            failures = 0 if roll < 0.9 else 1 if roll < 0.97 else 2 if roll < 0.997 else 5
            for _ in range(failures):
                self.login_attempt(ts, user, "failure")
                ts += rng.randint(4_000, 25_000)
            if failures >= 5:
                self.emit(ts, "auth", outcome="lockout", method="password", user_hash=user.name_hash,
                          user_len=user.length, source=user.source, privileged=user.privileged)
                continue
            self.login_attempt(ts, user, "success")
            if rng.random() < 0.35:
                self.emit(ts + rng.randint(120_000, 3_600_000), "auth", outcome="logout", method="cookie",
                          user_hash=user.name_hash, user_len=user.length, source=user.source, privileged=user.privileged)

    def login_attempt(self, ts: int, user: _User, outcome: str, method: str = "password") -> None:
        """One attempt on wp-login.php: the auth signal and the request behind it."""
        self.emit(ts, "auth", outcome=outcome, method=method, user_hash=user.name_hash, user_len=user.length,
                  source=user.source, privileged=user.privileged)
        self.emit(ts, "request", method="POST", path="/wp-login.php", route_group="login",
                  status=302 if outcome == "success" else 200, duration_ms=self.duration(280), ua_family=self.ua())

    def mail(self, t0: int, level: float) -> None:
        """Outbound mail: order confirmations, password resets, form notifications."""
        rng = self.rng
        transport = self.profile.transport
        outage = self.site == "shop-eu" and at("10:10") <= t0 < at("10:52")
        for _ in range(_poisson(rng, self.profile.mail_per_hour / 60 * level)):
            ts = t0 + rng.randrange(MINUTE_MS)
            if outage:
                # The provider rotated the SMTP credentials; every message is refused, and queued for retry.
                self.emit(ts, "mail", outcome="failed", transport=transport, error_class="auth")
                self.deferred_mail += 1
                continue
            roll = rng.random()
            if roll < 0.006:
                self.emit(ts, "mail", outcome="bounced", transport=transport, error_class="mailbox-unavailable")
            elif roll < 0.016:
                self.emit(ts, "mail", outcome="deferred", transport=transport, error_class="rate-limit")
            else:
                self.emit(ts, "mail", outcome="sent", transport=transport)
        if self.deferred_mail and not outage and self.site == "shop-eu" and t0 >= at("10:52"):
            # Credentials fixed: the retry queue drains over a few minutes.
            for _ in range(min(self.deferred_mail, 25)):
                self.emit(t0 + rng.randrange(MINUTE_MS), "mail", outcome="sent", transport=transport)
            self.deferred_mail = max(0, self.deferred_mail - 25)

    def cron(self, t0: int) -> None:
        """Scheduled jobs: started, then finished (rarely failed) after their run time."""
        rng = self.rng
        minute = (t0 - START_MS) // MINUTE_MS
        for job in self.profile.cron:
            if minute % job.every_min != (job.offset_s // 60) % job.every_min:
                continue
            if job.name == "agency_crm_sync" and self.site == "agency-main" and at("11:20") <= t0 < at("15:30"):
                continue  # the job is stuck (a stale lock); nothing runs, nothing is reported
            start = t0 + (job.offset_s % 60) * 1000 + rng.randrange(3_000)
            self.emit(start, "cron", job=job.name, event="started")
            duration = self.duration(job.median_ms, 0.4)
            if job.name == "agency_crm_sync" and at("15:30") <= t0 < at("15:31"):
                duration *= 9  # the first run after the fix catches up on four hours of CRM changes
            event = "failed" if rng.random() < 0.002 else "finished"
            self.emit(start + duration, "cron", job=job.name, event=event, duration_ms=duration)

    def heartbeat(self, t0: int) -> None:
        """The integration's heartbeat, every 60 s."""
        ts = t0 + self.profile.heartbeat_offset_ms + self.rng.randrange(400)
        self.emit(ts, "integration", event="heartbeat", dropped=0, buffered=self.rng.randrange(0, 30),
                  version=INTEGRATION_VERSION)

    def php_noise(self, t0: int, level: float) -> None:
        """Warnings, notices and deprecations that every real site has."""
        rng = self.rng
        for _ in range(_poisson(rng, self.profile.php_per_hour / 60 * level)):
            issue = rng.choices(self.profile.php, cum_weights=self.php_weights)[0]
            self.php(t0 + rng.randrange(MINUTE_MS), issue)

    def php(self, ts: int, issue: PhpIssue) -> None:
        """One PHP error signal."""
        self.emit(ts, "php_error", level=issue.level, component=issue.component, file=issue.file, line=issue.line,
                  fingerprint=_fingerprint(issue.message))

    def database(self, t0: int) -> None:
        """Slow queries now and then."""
        rng = self.rng
        for _ in range(_poisson(rng, self.profile.slow_queries_per_hour / 60)):
            self.emit(t0 + rng.randrange(MINUTE_MS), "db_event", kind="slow_query", table=rng.choice(self.profile.tables),
                      duration_ms=self.duration(2_400, 0.5))

    def chores(self, t0: int) -> None:
        """Scripted background events: one-off errors and routine admin work that must not alert."""
        rng = self.rng
        site = self.site
        admin = self.users[0]
        if site == "shop-eu":
            if t0 == at("07:41"):
                self.php(t0 + 12_345, PhpIssue("fatal", "core", "wp-includes/class-wpdb.php", 2351,
                                                 "Allowed memory size of 268435456 bytes exhausted", 1))
            if t0 == at("12:06"):
                self.emit(t0 + 4_200, "db_event", kind="deadlock", table="wp_wc_orders_meta")
            if t0 == at("13:12"):
                self.emit(t0 + 30_500, "config_change", option="woocommerce_stock_amount", before_hash=_value_hash("2"),
                          after_hash=_value_hash("5"), actor_hash=admin.name_hash, sensitive=False)
        elif site == "blog-us":
            if t0 in (at("05:17"), at("05:19")):
                self.emit(t0 + rng.randrange(MINUTE_MS), "db_event", kind="connection_error")
            if t0 == at("19:12"):
                self.php(t0 + 9_100, PhpIssue("fatal", "theme:magazine-pro", "wp-content/themes/magazine-pro/functions.php",
                                                 988, "Maximum execution time of 30 seconds exceeded", 1))
            if t0 == at("20:40"):
                self.emit(t0 + 11_000, "config_change", option="posts_per_page", before_hash=_value_hash("10"),
                          after_hash=_value_hash("12"), actor_hash=admin.name_hash, sensitive=False)
        elif site == "agency-main":
            if t0 in (at("13:05"), at("13:48"), at("14:22"), at("16:10")):
                self.emit(t0 + rng.randrange(MINUTE_MS), "file_edit", path="wp-content/themes/agency-child/style.css",
                          change="modified", size_delta=rng.randint(-200, 900), flags=[])
            if t0 == at("14:22"):
                self.emit(t0 + 40_000, "file_edit", path="wp-content/themes/agency-child/inc/portfolio.php",
                          change="modified", size_delta=312, flags=[])
            if t0 == at("16:30"):
                self.emit(t0 + 5_000, "config_change", option="blogdescription", before_hash=_value_hash("Design & code"),
                          after_hash=_value_hash("Design, code & care"), actor_hash=admin.name_hash, sensitive=False)
        elif site == "docs-site":
            if t0 == at("09:00") or t0 == at("21:00"):
                # The docs CI publishes with an application password.
                self.emit(t0 + 3_000, "auth", outcome="success", method="app_password", user_hash=admin.name_hash,
                          user_len=admin.length, source="198.18.7.0/24", privileged=True)
                for index in range(12):
                    self.emit(t0 + 4_000 + index * 1_500, "request", method="POST", path="/wp-json/wp/v2/pages/{id}",
                              route_group="rest", status=200, duration_ms=self.duration(450))
            if t0 == at("11:40"):
                self.emit(t0 + 22_000, "file_edit", path="wp-content/uploads/2026/11/architecture.svg", change="created",
                          size_delta=48_213, flags=[])
            if t0 == at("17:15"):
                self.emit(t0 + 8_000, "config_change", option="docs_toc_depth", before_hash=_value_hash("3"),
                          after_hash=_value_hash("4"), actor_hash=admin.name_hash, sensitive=False)

    # -- incidents ----------------------------------------------------------------------------
    def incidents(self, t0: int) -> None:
        """The injected incidents that are not a change of background behaviour."""
        if self.site == "blog-us" and at("02:38") <= t0 < at("02:52"):
            self.stuffing_minute(t0)
        if self.site == "blog-us" and t0 == at("02:55"):
            self.takeover(t0)
        if self.site == "agency-main" and t0 == at("09:00"):
            self.plugin_burst(t0)
        if self.site == "shop-eu" and t0 == at("15:30"):
            self.emit(t0 + 5_000, "plugin", slug="checkout-express", kind="plugin", action="updated",
                      version_before="3.4.2", version_after="3.5.0")
        if self.site == "shop-eu" and t0 == at("15:52"):
            self.emit(t0 + 30_000, "plugin", slug="checkout-express", kind="plugin", action="updated",
                      version_before="3.5.0", version_after="3.5.1")

    def stuffing_minute(self, t0: int) -> None:
        """One minute of the credential-stuffing wave against blog-us."""
        rng = self.rng
        minute = (t0 - at("02:38")) // MINUTE_MS
        for _ in range(_poisson(rng, 24)):
            ts = t0 + rng.randrange(MINUTE_MS)
            if rng.random() < 0.08:
                name = rng.choice(("admin", "administrator", "editor", "blog", "test"))
            else:
                name = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(6, 14)))
                name += "@" + rng.choice(("mail.example", "inbox.example", "post.example"))
            xmlrpc = rng.random() < 0.7
            self.emit(ts, "auth", outcome="failure", method="xmlrpc" if xmlrpc else "password",
                      user_hash=identity_hash(name, self.key), user_len=len(name), source=ATTACK_SOURCE)
            self.emit(ts, "request", method="POST", path="/xmlrpc.php" if xmlrpc else "/wp-login.php",
                      route_group="xmlrpc" if xmlrpc else "login", status=200, duration_ms=self.duration(160, 0.3),
                      ua_family="python-requests")
        if minute in (3, 5, 6, 8, 10, 12):
            # The list also holds real authors' addresses; limit-login locks each after four misses.
            victim = self.users[3 + minute % 10]
            ts = t0 + rng.randrange(50_000)
            for attempt in range(4):
                self.emit(ts + attempt * 1_500, "auth", outcome="failure", method="xmlrpc", user_hash=victim.name_hash,
                          user_len=victim.length, source=ATTACK_SOURCE)
            self.emit(ts + 6_000, "auth", outcome="lockout", method="xmlrpc", user_hash=victim.name_hash,
                      user_len=victim.length, source=ATTACK_SOURCE)
        if minute == 11:
            # An administrator reused a leaked password: the wave gets in.
            victim = self.users[1]
            self.emit(t0 + 27_000, "auth", outcome="success", method="password", user_hash=victim.name_hash,
                      user_len=victim.length, source=ATTACK_SOURCE, privileged=True)

    def takeover(self, t0: int) -> None:
        """What the attacker does with the administrator account: settings, then a web shell."""
        actor = self.users[1].name_hash
        admin_request = {"route_group": "admin", "ua_family": "python-requests"}
        self.emit(t0 + 8_000, "request", method="POST", path="/wp-admin/options-general.php", status=302,
                  duration_ms=self.duration(420), **admin_request)
        self.emit(t0 + 10_000, "config_change", option="users_can_register", before_hash=_value_hash("0"),
                  after_hash=_value_hash("1"), actor_hash=actor, sensitive=True)
        self.emit(t0 + 10_000, "config_change", option="default_role", before_hash=_value_hash("subscriber"),
                  after_hash=_value_hash("administrator"), actor_hash=actor, sensitive=True)
        self.emit(t0 + 150_000, "request", method="POST", path="/wp-admin/async-upload.php", status=200,
                  duration_ms=self.duration(900), **admin_request)
        self.emit(t0 + 151_000, "file_edit", path="wp-content/uploads/2026/11/wp-cache.php", change="created",
                  size_delta=4_817, flags=["php_in_uploads", "eval_call", "base64_blob", "obfuscated"])
        self.emit(t0 + 169_000, "file_edit", path="wp-content/uploads/2026/11/.thumbs.php", change="created",
                  size_delta=1_204, flags=["php_in_uploads", "obfuscated"])
        for index in range(5):
            self.emit(t0 + 200_000 + index * 41_000, "request", method="POST", path="/wp-content/uploads/2026/11/wp-cache.php",
                      route_group="static", status=200, duration_ms=self.duration(90), ua_family="python-requests")

    def plugin_burst(self, t0: int) -> None:
        """The agency's monthly maintenance: everything updated in one go."""
        ts = t0 + 12_000
        for slug, kind, before, after in _PLUGIN_BURST:
            self.emit(ts, "request", method="POST", path="/wp-admin/update.php", route_group="admin", status=200,
                      duration_ms=self.duration(6_000, 0.3), ua_family="Chrome")
            self.emit(ts + 3_000, "plugin", slug=slug, kind=kind, action="updated", version_before=before, version_after=after)
            ts += self.rng.randint(40_000, 75_000)


def _cumulative(weights: list[float]) -> list[float]:
    total = 0.0
    out = []
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count (Knuth for small means, a rounded normal above 30)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit = math.exp(-mean)
    count = 0
    product = rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _random_prefix(rng: random.Random) -> str:
    """A network prefix from non-routable space: shared (100.64/10), benchmarking (198.18/15) or IPv6 documentation."""
    roll = rng.random()
    if roll < 0.55:
        return f"100.{rng.randint(64, 127)}.{rng.randint(0, 255)}.0/24"
    if roll < 0.8:
        return f"198.{rng.randint(18, 19)}.{rng.randint(0, 255)}.0/24"
    return f"2001:db8:{rng.randint(1, 0xFFFF):x}::/48"


# -- public surface ------------------------------------------------------------------------------

def generate_day(seed: int = 7) -> Iterator[dict[str, Any]]:
    """The day's envelopes for every site, merged in time order (ties: site order of :data:`SITES`).

    Deterministic: the same ``seed`` yields the same envelopes in the same order.
    """
    streams = [_SiteDay(profile, seed).records() for profile in PROFILES]
    return heapq.merge(*streams, key=lambda envelope: envelope["ts"])


def write_scenario(path: str | Path, seed: int = 7) -> int:
    """Write :func:`generate_day` as JSON Lines to ``path``; return the number of lines written."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        buffer: list[str] = []
        for envelope in generate_day(seed):
            buffer.append(signal_line(envelope))
            count += 1
            if len(buffer) >= 4096:
                out.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            out.write("\n".join(buffer) + "\n")
    return count
