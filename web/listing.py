"""What the list pages show, read from the store: alerts by filter, one site's picture, the rules' activity.

Everything here is about *which rows* and *which window*; the pages and the API (web/lists.py) only render it.
Three rules hold throughout:

- Time is the store's own: "the last 24 h" of a site ends at its latest signal or alert, "the last 7 days" of
  the rules page at the latest notification of the viewer's sites, and a filter such as ``since=24h`` counts back
  from the latest notification the filter could show. A day replayed from 2025 shows that day, not an empty
  page about today.
- Reads follow the tables' sort keys: alerts ``(site, evaluated_at, …)``, signals ``(site, type, ts, id)``,
  rejected ``(hour, site, …)``, so a site or a time range bounds the rows a page reads.
- Every value from the request is bound as a ``{name:Type}`` parameter and every query filters by the viewer's
  sites (``$scope``): see web/reads.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.durations import parse_duration
from schemas.rules import RULE_ID_PATTERN, Rule
from schemas.signals import SITE_PATTERN
from schemas.timestamps import format_ts
from web.alert_page import group_text
from web.reads import Reads

SEVERITIES = ("critical", "high", "medium", "low", "info")
STATUSES = ("firing", "resolved")
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
"""A page holds at most this many alerts: a page (or an API call) reads and sends a bounded answer."""
SITE_WINDOW_MS = 24 * 3_600_000
RULES_WINDOW_MS = 7 * 86_400_000
SITE_LIST_SIZE = 20
"""Open alerts, episodes, rejected reasons and dropped-events reports shown on a site page (each)."""
CHART_BUCKETS = 48
_CHART_STEPS_MS = (10_000, 30_000, 60_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000)
FILTER_NAMES = ("site", "rule", "severity", "status", "since", "until", "after", "before", "limit")

_SITE_RE = re.compile(SITE_PATTERN)
_RULE_RE = re.compile(RULE_ID_PATTERN)
_CURSOR_RE = re.compile(r"^([0-9]{1,15})\.([0-9a-z]{1,64})$")


class FilterError(ValueError):
    """A filter the console refuses; the message names the filter and what it accepts."""


# -- filters ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """A place in the newest-first order of alerts: the last notification time of an alert, and its id."""

    last_ms: int
    alert_id: str

    @classmethod
    def parse(cls, name: str, text: str) -> Cursor:
        """``<epoch ms>.<alert id>``, as the page links and the API's ``next``/``prev`` spell it."""
        match = _CURSOR_RE.match(text)
        if match is None:
            raise FilterError(f"{name}: {text[:80]!r} is not a page cursor (take it from a next/prev link)")
        return cls(int(match.group(1)), match.group(2))

    def __str__(self) -> str:
        return f"{self.last_ms}.{self.alert_id}"


@dataclass(frozen=True)
class TimeBound:
    """``since``/``until`` as given: an instant (RFC 3339), or a duration back from the store's clock (``24h``)."""

    text: str
    at_ms: int | None = None
    back_ms: int | None = None

    @classmethod
    def parse(cls, name: str, text: str) -> TimeBound:
        """The bound, or a FilterError that says which spellings work."""
        try:
            return cls(text, back_ms=parse_duration(text))
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise FilterError(
                f"{name}: {text[:80]!r} is neither a time (2026-11-28T10:00:00Z) nor a duration back from the latest "
                "alert (24h, 90m, 7d)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return cls(text, at_ms=int(moment.timestamp() * 1000))

    def resolve(self, clock_ms: int | None) -> int | None:
        """The bound in epoch milliseconds, a duration counted back from ``clock_ms``.

        None for a duration without a clock: the store holds no alert the bound could apply to.
        """
        if self.at_ms is not None:
            return self.at_ms
        return None if clock_ms is None else clock_ms - (self.back_ms or 0)


@dataclass(frozen=True)
class AlertFilters:
    """The list's filters and page, validated (see :func:`parse_filters`)."""

    site: str | None = None
    rule: str | None = None
    severity: str | None = None
    status: str | None = None
    since: TimeBound | None = None
    until: TimeBound | None = None
    after: Cursor | None = None
    """Show the alerts older than this one (the next page)."""
    before: Cursor | None = None
    """Show the alerts newer than this one (the previous page)."""
    limit: int = PAGE_SIZE

    def query(self, **changes: Any) -> dict[str, str]:
        """The filters as query parameters (for links), with ``changes`` applied; unset ones left out."""
        values = {
            "site": self.site, "rule": self.rule, "severity": self.severity, "status": self.status,
            "since": self.since.text if self.since else None, "until": self.until.text if self.until else None,
            "limit": str(self.limit) if self.limit != PAGE_SIZE else None,
        }
        values.update(changes)
        return {name: str(value) for name, value in values.items() if value is not None}

    def form_values(self) -> dict[str, str]:
        """What the filter form shows in its fields (empty strings for unset filters)."""
        return {name: self.query().get(name, "") for name in ("site", "rule", "severity", "status", "since", "until")}


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise FilterError(f"{name}: {value[:80]!r} is not one of {', '.join(allowed)}")
    return value


def _matching(name: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    if pattern.match(value) is None:
        raise FilterError(f"{name}: {value[:80]!r} is not {what}")
    return value


def parse_filters(query: Mapping[str, str]) -> AlertFilters:
    """The filters of a ``/alerts`` or ``/api/alerts`` request; a FilterError for any value the list cannot use.

    Empty values count as unset (the filter form submits every field). Unknown names are refused, so a
    misspelt filter (``severty=high``) is a 400 that says so, not a list that silently shows everything.
    """
    unknown = sorted(set(query) - set(FILTER_NAMES))
    if unknown:
        raise FilterError(f"{unknown[0][:40]}: not a filter (use {', '.join(FILTER_NAMES)})")
    given = {name: value.strip() for name, value in query.items() if value.strip()}
    limit = PAGE_SIZE
    if "limit" in given:
        if not given["limit"].isdigit() or not 1 <= int(given["limit"]) <= MAX_PAGE_SIZE:
            raise FilterError(f"limit: {given['limit'][:20]!r} is not a page size from 1 to {MAX_PAGE_SIZE}")
        limit = int(given["limit"])
    if "after" in given and "before" in given:
        raise FilterError("after, before: give one page cursor, not both")
    return AlertFilters(
        site=_matching("site", given["site"], _SITE_RE, "a site id") if "site" in given else None,
        rule=_matching("rule", given["rule"], _RULE_RE, "a rule id") if "rule" in given else None,
        severity=_one_of("severity", given["severity"], SEVERITIES) if "severity" in given else None,
        status=_one_of("status", given["status"], STATUSES) if "status" in given else None,
        since=TimeBound.parse("since", given["since"]) if "since" in given else None,
        until=TimeBound.parse("until", given["until"]) if "until" in given else None,
        after=Cursor.parse("after", given["after"]) if "after" in given else None,
        before=Cursor.parse("before", given["before"]) if "before" in given else None,
        limit=limit,
    )


def site_id(text: str) -> str | None:
    """``text`` when it is a well-formed site id, else None (the site page answers 404)."""
    return text if _SITE_RE.match(text) else None


# -- alerts -----------------------------------------------------------------------------------------


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as the API and the pages spell instants (``2026-11-28T15:30:54.852Z``)."""
    return None if ms is None else format_ts(ms)


@dataclass(frozen=True)
class AlertRow:
    """One alert (episode) as the list shows it: its latest notification, as of the list's ``until``."""

    alert_id: str
    site: str
    rule_id: str
    rule_title: str
    severity: str
    subsystem: str
    kind: str
    group: dict[str, Any]
    summary: str
    status: str
    started_ms: int
    last_ms: int
    ended_ms: int | None
    notifications: int

    @property
    def cursor(self) -> Cursor:
        """Where this alert stands in the list."""
        return Cursor(self.last_ms, self.alert_id)

    @property
    def group_text(self) -> str:
        """The group as the alert page writes it (``component=plugin:checkout-express``, ``whole site``)."""
        return group_text(self.group)

    def as_json(self) -> dict[str, Any]:
        """The API's shape of one alert (docs/web.md)."""
        return {
            "alert_id": self.alert_id, "url": f"/alerts/{self.alert_id}", "site": self.site, "rule_id": self.rule_id,
            "rule_title": self.rule_title, "severity": self.severity, "subsystem": self.subsystem, "kind": self.kind,
            "group": self.group, "summary": self.summary, "status": self.status, "started_at": iso(self.started_ms),
            "last_notified_at": iso(self.last_ms), "ended_at": iso(self.ended_ms), "notifications": self.notifications,
        }


@dataclass
class AlertPage:
    """One page of the list, with the cursors of its neighbours (None at either end)."""

    filters: AlertFilters
    rows: list[AlertRow]
    clock_ms: int | None
    since_ms: int | None
    until_ms: int | None
    next: Cursor | None = None
    prev: Cursor | None = None


_ALERTS_SQL = """
SELECT alert_id, site, rule_id, argMax(rule_title, seq) AS rule_title, severity, subsystem, rule_kind AS kind,
       argMax(group_json, seq) AS group_json, argMax(summary, seq) AS summary, argMax(status, seq) AS status,
       toUnixTimestamp64Milli(min(started_at)) AS started_ms, toUnixTimestamp64Milli(max(evaluated_at)) AS last_ms,
       toUnixTimestamp64Milli(max(ended_at)) AS ended_ms, max(seq) AS notifications
FROM alerts FINAL
WHERE $scope{where}
GROUP BY alert_id, site, rule_id, severity, subsystem, rule_kind
{having}
ORDER BY last_ms {direction}, alert_id {direction}
LIMIT {{limit:UInt32}}
"""


_CLOCK_SQL = "SELECT count() AS n, toUnixTimestamp64Milli(max(evaluated_at)) AS clock FROM alerts WHERE $scope"
"""Plain ``alerts``, not ``FINAL``: a duplicate does not change a maximum."""


def alerts_clock(reads: Reads, site: str | None = None) -> int | None:
    """The latest ``evaluated_at`` (epoch ms) among the viewer's alerts (of ``site``), None while there are none."""
    if site is None:
        rows = reads.rows("alerts clock", _CLOCK_SQL)
    else:
        rows = reads.rows("alerts clock", _CLOCK_SQL + " AND site = {site:String}", {"site": site})
    return int(rows[0]["clock"]) if rows and rows[0]["n"] else None


def list_alerts(reads: Reads, filters: AlertFilters) -> AlertPage:
    """The alerts matching ``filters``, newest first (by their latest notification), one page of them.

    Time bounds select notifications by ``evaluated_at`` (``since`` ≤ t < ``until``): an alert is listed when
    it notified within the range, and shows its latest notification before ``until`` — the status it had then.
    Without ``since`` every stored notification counts, so an alert open for a week is still "firing" here.
    Paging is by keyset on (latest notification, alert id): a page stays the same while new alerts arrive,
    which ``OFFSET`` would shift, and reading page 40 costs no more than page 1.
    """
    clock = alerts_clock(reads, filters.site) if any(
        bound is not None and bound.back_ms is not None for bound in (filters.since, filters.until)
    ) else None
    since = filters.since.resolve(clock) if filters.since else None
    until = filters.until.resolve(clock) if filters.until else None
    where, having = [], []
    parameters: dict[str, Any] = {"limit": filters.limit + 1}
    for name, column in (("site", "site"), ("rule", "rule_id"), ("severity", "severity")):
        value = getattr(filters, name)
        if value is not None:
            where.append(f"{column} = {{{name}:String}}")
            parameters[name] = value
    if since is not None:
        where.append("evaluated_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')")
        parameters["since"] = since
    if until is not None:
        where.append("evaluated_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')")
        parameters["until"] = until
    if filters.status is not None:
        having.append("status = {status:String}")
        parameters["status"] = filters.status
    cursor = filters.before or filters.after
    if cursor is not None:
        having.append(f"(last_ms, alert_id) {'>' if filters.before else '<'} ({{cursor_ms:Int64}}, {{cursor_id:String}})")
        parameters.update(cursor_ms=cursor.last_ms, cursor_id=cursor.alert_id)
    sql = _ALERTS_SQL.format(
        where="".join(f" AND {condition}" for condition in where),
        having=f"HAVING {' AND '.join(having)}" if having else "",
        direction="ASC" if filters.before else "DESC",
    )
    rows = [_alert_row(row) for row in reads.rows("alerts", sql, parameters)]
    more = len(rows) > filters.limit
    rows = rows[: filters.limit]
    page = AlertPage(filters, rows, clock, since, until)
    if filters.before:
        rows.reverse()
        page.prev = rows[0].cursor if more and rows else None
        page.next = rows[-1].cursor if rows else filters.before
    else:
        page.next = rows[-1].cursor if more else None
        page.prev = rows[0].cursor if filters.after and rows else filters.after
    return page


def _alert_row(row: dict[str, Any]) -> AlertRow:
    return AlertRow(
        alert_id=row["alert_id"], site=row["site"], rule_id=row["rule_id"], rule_title=row["rule_title"],
        severity=row["severity"], subsystem=row["subsystem"], kind=row["kind"], group=json.loads(row["group_json"]),
        summary=row["summary"], status=row["status"], started_ms=int(row["started_ms"]), last_ms=int(row["last_ms"]),
        ended_ms=None if row["ended_ms"] is None else int(row["ended_ms"]), notifications=int(row["notifications"]),
    )


# -- one site ---------------------------------------------------------------------------------------


@dataclass
class SiteChart:
    """Signals of one site per type and time bucket over its window: ``counts[type][i]`` is bucket ``i``."""

    start_ms: int
    end_ms: int
    step_ms: int
    counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def bucket_starts(self) -> list[int]:
        """The start of every bucket, oldest first."""
        return [self.start_ms + i * self.step_ms for i in range(self.buckets)]

    @property
    def buckets(self) -> int:
        """How many buckets cover the window."""
        return max(1, -(-(self.end_ms + 1 - self.start_ms) // self.step_ms))

    @property
    def totals(self) -> dict[str, int]:
        """Signals per type over the whole window, the busiest type first."""
        return dict(sorted(((name, sum(values)) for name, values in self.counts.items()), key=lambda item: (-item[1], item[0])))

    def as_json(self) -> dict[str, Any]:
        """The API's shape of the chart (docs/web.md)."""
        return {
            "start": iso(self.start_ms), "end": iso(self.end_ms), "step_s": self.step_ms // 1000,
            "buckets": [iso(start) for start in self.bucket_starts], "counts": self.counts, "totals": self.totals,
        }


def chart_step(span_ms: int) -> int:
    """The smallest bucket size from a fixed list that draws ``span_ms`` in at most :data:`CHART_BUCKETS` buckets."""
    for step in _CHART_STEPS_MS:
        if span_ms < step * CHART_BUCKETS:
            return step
    return _CHART_STEPS_MS[-1]


@dataclass
class SitePicture:
    """Everything the site page shows; ``clock_ms`` is None when the store holds nothing of the site."""

    site: str
    clock_ms: int | None
    chart: SiteChart | None
    open_alerts: list[AlertRow]
    episodes: list[AlertRow]
    rejected: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    dropped_total: int

    def as_json(self) -> dict[str, Any]:
        """The API's shape of the site page (docs/web.md)."""
        return {
            "site": self.site, "clock": iso(self.clock_ms), "signals": self.chart.as_json() if self.chart else None,
            "open_alerts": [row.as_json() for row in self.open_alerts], "episodes": [row.as_json() for row in self.episodes],
            "rejected": [{**row, "last_hour": iso(row["last_hour"])} for row in self.rejected],
            "dropped": {"reports": [{**row, "ts": iso(row["ts"])} for row in self.dropped], "total": self.dropped_total},
        }


_SITE_SPAN_SQL = """
SELECT count() AS n, toUnixTimestamp64Milli(min(ts)) AS first_ms, toUnixTimestamp64Milli(max(ts)) AS last_ms
FROM signals WHERE site = {site:String} AND $scope
"""
_CHART_SQL = """
SELECT type, intDiv(toUnixTimestamp64Milli(ts) - {start:Int64}, {step:Int64}) AS bucket, count() AS n
FROM signals FINAL
WHERE site = {site:String} AND $scope AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')
GROUP BY type, bucket ORDER BY type, bucket
"""
_REJECTED_SQL = """
SELECT reason, source, count() AS lines, toUnixTimestamp(max(hour)) * 1000 AS last_hour
FROM rejected FINAL
WHERE hour >= toStartOfHour(fromUnixTimestamp64Milli({start:Int64}, 'UTC')) AND site = {site:String} AND $scope
GROUP BY reason, source ORDER BY lines DESC, reason, source LIMIT {limit:UInt32}
"""
_DROPPED_SQL = """
SELECT toUnixTimestamp64Milli(ts) AS ts, id, JSONExtractUInt(envelope, 'data', 'dropped') AS dropped,
       JSONExtract(envelope, 'data', 'buffered', 'Nullable(UInt64)') AS buffered,
       JSONExtract(envelope, 'data', 'version', 'Nullable(String)') AS version,
       count() OVER () AS reports, sum(dropped) OVER () AS total
FROM signals FINAL
WHERE site = {site:String} AND $scope AND type = 'integration' AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')
  AND JSONExtractString(envelope, 'data', 'event') = 'dropped'
ORDER BY ts DESC, id DESC LIMIT {limit:UInt32}
"""


def site_picture(reads: Reads, site: str) -> SitePicture:
    """One site over its last 24 h — ending at its latest signal or alert — or over all it stored, if less.

    The window ends at the site's own clock, so a replayed day shows that day; counting the alerts too
    means a site that went silent shows the silence up to the absence alert that noticed it.
    """
    span = reads.rows("site span", _SITE_SPAN_SQL, {"site": site})[0]
    alerts_end = alerts_clock(reads, site)
    ends = [int(span["last_ms"])] if span["n"] else []
    ends += [alerts_end] if alerts_end is not None else []
    if not ends:
        return SitePicture(site, None, None, [], [], [], [], 0)
    clock = max(ends)
    start = max(int(span["first_ms"]) if span["n"] else clock, clock - SITE_WINDOW_MS)
    step = chart_step(clock - start)
    start -= start % step
    chart = SiteChart(start, clock, step)
    for row in reads.rows("site chart", _CHART_SQL, {"site": site, "start": start, "step": step}):
        values = chart.counts.setdefault(row["type"], [0] * chart.buckets)
        if 0 <= row["bucket"] < chart.buckets:
            values[row["bucket"]] = int(row["n"])
    open_alerts = list_alerts(reads, AlertFilters(site=site, status="firing", limit=SITE_LIST_SIZE)).rows
    episodes = list_alerts(reads, AlertFilters(site=site, limit=SITE_LIST_SIZE)).rows
    window = {"site": site, "start": start, "limit": SITE_LIST_SIZE}
    rejected = [
        {"reason": row["reason"], "source": row["source"], "lines": int(row["lines"]), "last_hour": int(row["last_hour"])}
        for row in reads.rows("site rejected", _REJECTED_SQL, window)
    ]
    reports = reads.rows("site dropped", _DROPPED_SQL, window)
    dropped = [
        {"ts": int(row["ts"]), "id": row["id"], "dropped": int(row["dropped"]), "buffered": row["buffered"], "version": row["version"]}
        for row in reports
    ]
    return SitePicture(site, clock, chart, open_alerts, episodes, rejected, dropped, int(reports[0]["total"]) if reports else 0)


# -- rules ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleActivity:
    """One loaded rule and what it did over the window."""

    rule: Rule
    fired: int
    notifications: int
    last_ms: int | None


_RULES_SQL = """
SELECT rule_id, countIf(seq = 1) AS fired, count() AS notifications, toUnixTimestamp64Milli(max(evaluated_at)) AS last_ms
FROM alerts FINAL
WHERE $scope AND evaluated_at > fromUnixTimestamp64Milli({start:Int64}, 'UTC')
GROUP BY rule_id
"""


def rule_activity(reads: Reads, rules: list[Rule]) -> tuple[list[RuleActivity], int | None]:
    """Every rule of ``rules`` with its episodes (``fired``) and notifications over the 7 days before the clock.

    The clock is the latest notification of the viewer's sites; the noisiest rule (most notifications) comes
    first. ``fired`` counts episodes that began in the window (first notifications); a rule that is loaded
    but never fired is listed with zeros, so a rule that should fire and does not is visible too.
    """
    clock = alerts_clock(reads)
    counts: dict[str, dict[str, Any]] = {}
    if clock is not None:
        counts = {row["rule_id"]: row for row in reads.rows("rules", _RULES_SQL, {"start": clock - RULES_WINDOW_MS})}
    activity = [
        RuleActivity(rule, int(counts[rule.id]["fired"]), int(counts[rule.id]["notifications"]), int(counts[rule.id]["last_ms"]))
        if rule.id in counts else RuleActivity(rule, 0, 0, None)
        for rule in rules
    ]
    activity.sort(key=lambda item: (-item.notifications, -item.fired, item.rule.id))
    return activity, clock
