"""``/alerts/<alert_id>`` and ``/api/alerts/<alert_id>``: one alert in context (docs/web.md "The alert page").

Everything on the page is read for one alert by sort key, and no query reads a whole table:

- its notifications from ``alerts_by_id`` (migration 3: the ``alerts`` rows sorted by ``alert_id``);
  the rule, group, value and evidence come from each stored record exactly as it was emitted;
- the chart from ``signals`` (``site``, ``type``, ``ts`` range), counted in the store per bucket and per
  combination of the values of the rule's condition and group fields, so the matching signals are counted
  by the engine's own predicates (:func:`operators.conditions.compile_conditions`) over those few combinations;
- the delivery attempts from ``deliveries`` (``channel`` in the alert's channels, ``alert_id``);
- for a still-firing alert, the site's event-time clock: the latest stored signal of the site since the
  alert's last notification ("for how long" is read at that instant, never at the wall clock).

Every query goes through :class:`web.reads.Reads` (bound parameters, the viewer's site filter); the rows
each one read are in the API's ``reads`` and the ``x-rows-read`` header of both answers.
"""

from __future__ import annotations

import json
import re
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from markupsafe import Markup, escape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from delivery.holds import HELD_OUTCOMES, INHIBITED, MUTED, SILENCED, Silence, iso_ms
from delivery.silences import SILENCE_FIELDS, silence_of_row
from operators.conditions import compile_conditions
from schemas.durations import format_duration, spoken_duration
from schemas.rules import Rule
from schemas.timestamps import format_ts, parse_ts_checked
from sinks.clickhouse import StoreAddress
from web import reproduce
from web.chart import ActivityChart, activity_svg, bucket_size
from web.pages import ConsoleConfig, config_of, page, reads_for
from web.reads import Reads
from web.sentence import condition_sentence

ALERT_ID = re.compile(r"[0-9a-f]{32}")
CHART_ROW_CAP = 20_000
"""At most this many (bucket, field values) rows are read for the chart; beyond, matching signals are not counted."""
PREVIOUS_HORIZON_MS = 7 * 86_400_000
"""How far back the reproduce span looks for a match group's previous notification."""
_HASH = re.compile(r"[0-9a-f]{16,}|[A-Za-z0-9+/]{22,}={0,2}")


@dataclass
class Notification:
    """One stored notification of the alert (its record, and the fields the page shows)."""

    seq: int
    status: str
    evaluated_at: int
    started_at: int
    ended_at: int | None
    value: dict[str, Any]
    suppressed_count: int
    evidence_total: int
    summary: str
    record: dict[str, Any] = field(repr=False)


@dataclass
class Delivery:
    """One row of ``deliveries``, with the next retry when the table shows one."""

    channel: str
    seq: int
    attempt: int
    attempted_at: int
    outcome: str
    status_code: int | None
    latency_ms: int
    error: str
    held_by: str = ""
    next_retry: str = ""

    @property
    def attempted(self) -> str:
        """The attempt's time as a timestamp."""
        return format_ts(self.attempted_at)


def _notifications(reads: Reads, alert_id: str) -> list[Notification]:
    rows = reads.rows(
        "notifications",
        "SELECT seq, record FROM alerts_by_id FINAL WHERE alert_id = {alert_id:String} AND $scope ORDER BY seq",
        {"alert_id": alert_id},
    )
    found = []
    for row in rows:
        record = json.loads(row["record"])
        ended = record["ended_at"]
        found.append(Notification(
            seq=int(row["seq"]), status=record["status"], evaluated_at=parse_ts_checked(record["evaluated_at"]),
            started_at=parse_ts_checked(record["started_at"]), ended_at=None if ended is None else parse_ts_checked(ended),
            value=record["value"], suppressed_count=record["suppressed_count"], evidence_total=record["evidence_total"],
            summary=record["summary"], record=record,
        ))
    return found


def _site_clock(reads: Reads, site: str, since: int) -> int:
    """The latest event time the store has for ``site`` at or after ``since`` (the last notification), else ``since``."""
    rows = reads.rows(
        "site clock",
        "SELECT toUnixTimestamp64Milli(max(ts)) AS clock FROM signals WHERE site = {site:String} "
        "AND ts >= fromUnixTimestamp64Milli({since:Int64}) AND $scope",
        {"site": site, "since": since},
    )
    return max(int(rows[0]["clock"]) if rows else 0, since)


def _matcher(rule: Rule | None, group: dict[str, Any]) -> tuple[list[str], Any]:
    """The fields whose values decide "matching" (the rule's conditions and group) and the test over them."""
    if rule is None:
        return [], None
    where = compile_conditions(rule.where)
    of = compile_conditions(rule.ratio.of) if rule.ratio is not None else None
    grouped = {name: value for name, value in group.items() if value != "__other__"}  # the overflow group: any value
    fields = sorted({*(rule.where or {}), *((rule.ratio.of or {}) if rule.ratio else {}), *grouped})

    def matches(data: Any) -> bool:
        return ((where is None or where(data)) and (of is None or of(data))
                and all(getattr(data, name, None) == value for name, value in grouped.items()))

    return fields, matches


def _chart(reads: Reads, rule: Rule | None, site: str, group: dict[str, Any], types: list[str],
           episode: tuple[int, int], first_evaluated: int) -> ActivityChart:
    """Signals per bucket from well before the episode (at least the rule's window) to after it."""
    started, last = episode
    lookback = reproduce.lookback_ms(rule) if rule is not None else 0
    before = max(lookback * 2, 15 * 60_000, (last - started) // 3)
    after = max(5 * 60_000, (last - started) // 6)
    bucket = bucket_size(last + after - (started - before))
    start = (started - before) // bucket * bucket
    count = -(-(last + after - start) // bucket)
    fields, matches = _matcher(rule, group)
    extracted = "".join(f", JSONExtractRaw(envelope, 'data', {{f{i}:String}}) AS f{i}" for i in range(len(fields)))
    parameters: dict[str, Any] = {"site": site, "types": types, "start": start, "end": start + count * bucket, "bucket": bucket,
                                  **{f"f{i}": name for i, name in enumerate(fields)}}
    span = ("FROM signals FINAL WHERE site = {site:String} AND type IN {types:Array(String)} "
            "AND ts >= fromUnixTimestamp64Milli({start:Int64}) AND ts < fromUnixTimestamp64Milli({end:Int64}) AND $scope")
    rows = reads.rows(
        "chart",
        f"SELECT intDiv(toUnixTimestamp64Milli(ts) - {{start:Int64}}, {{bucket:Int64}}) AS b{extracted}, count() AS n "
        f"{span} GROUP BY b{''.join(f', f{i}' for i in range(len(fields)))} LIMIT {CHART_ROW_CAP + 1}",
        parameters,
    )
    counts = [0] * count
    matching: list[int] | None = [0] * count if matches is not None else None
    note = ""
    if len(rows) > CHART_ROW_CAP:
        rows = reads.rows("chart totals", f"SELECT intDiv(toUnixTimestamp64Milli(ts) - {{start:Int64}}, {{bucket:Int64}}) AS b, "
                          f"count() AS n {span} GROUP BY b", parameters)
        matching = None
        note = (f"Matching signals are not counted: their condition fields take more than {CHART_ROW_CAP} "
                "value combinations in this span.")
    for row in rows:
        index = int(row["b"])
        if not 0 <= index < count:
            continue
        counts[index] += int(row["n"])
        if matching is not None:
            data = SimpleNamespace(**{name: json.loads(row[f"f{i}"]) if row[f"f{i}"] else None for i, name in enumerate(fields)})
            if matches(data):
                matching[index] += int(row["n"])
    chart = ActivityChart(start=start, bucket=bucket, counts=counts, matching=matching, episode=episode, note=note)
    if rule is not None and lookback:
        chart.window = (first_evaluated - lookback, first_evaluated)
        noun = "silence" if rule.kind == "absence" else "bundle" if rule.kind == "match" else "window"
        chart.window_label = f"{noun} {format_duration(lookback)} before the first notification"
    if rule is not None and rule.threshold is not None and matching is not None:
        chart.threshold = rule.threshold.count
        width = max(1, round(rule.threshold.window / bucket))
        chart.rolling = [sum(matching[max(0, i - width + 1):i + 1]) for i in range(count)]
        chart.rolling_label = (f"matching signals in the trailing {format_duration(width * bucket)} "
                               f"(whole buckets; the rule's window is {format_duration(rule.threshold.window)})")
    return chart


def _deliveries(reads: Reads, alert_id: str, site: str, channels: list[str]) -> list[Delivery]:
    if not channels:
        return []
    rows = reads.rows(
        "deliveries",
        "SELECT channel, seq, attempt, toUnixTimestamp64Milli(attempted_at) AS attempted_at, outcome, status_code, "
        "latency_ms, error, held_by FROM deliveries FINAL WHERE channel IN {channels:Array(String)} AND alert_id = {alert_id:String} "
        "AND $scope_alert ORDER BY channel, seq, attempt",
        {"channels": channels, "alert_id": alert_id, "site": site},
        alert="{site:String}",  # deliveries has no site column: the alert's own site (already seen to be visible)
    )
    attempts = [Delivery(**{name: row[name] for name in (
        "channel", "seq", "attempt", "attempted_at", "outcome", "status_code", "latency_ms", "error", "held_by")}) for row in rows]
    for index, current in enumerate(attempts):
        following = attempts[index + 1] if index + 1 < len(attempts) else None
        same = following is not None and (following.channel, following.seq) == (current.channel, current.seq)
        if current.outcome in ("retrying", "rate_limited"):
            current.next_retry = format_ts(following.attempted_at) if following is not None and same else "due, not yet recorded"
        elif current.outcome == "started" and not same:
            current.next_retry = "call in flight (its outcome was never stored)"
    return attempts


def _held_where(holds: list[Delivery]) -> str:
    """Which notifications a hold kept back: ``seq 2 on oncall, seq 3 on oncall``."""
    return ", ".join(f"seq {d.seq} on {d.channel}" for d in holds)


def _holds(reads: Reads, deliveries: list[Delivery], site: str) -> dict[str, list[dict[str, Any]]]:
    """What held notifications of the alert back, in words: the silences (who, why, until), mute times, inhibiting alerts.

    The silences are read by id (``silences_current``); an inhibiting alert is named only when its site is one
    the viewer may see (an inhibit rule need not be limited to one site).
    """
    by: dict[tuple[str, str], list[Delivery]] = {}
    for attempt in deliveries:
        if attempt.outcome in HELD_OUTCOMES and attempt.held_by:
            by.setdefault((attempt.outcome, attempt.held_by), []).append(attempt)
    ids = {outcome: sorted(name for kind, name in by if kind == outcome) for outcome in HELD_OUTCOMES}
    silences: dict[str, Silence] = {}
    if ids[SILENCED]:
        rows = reads.rows(
            "silences",
            f"SELECT {SILENCE_FIELDS} FROM silences_current WHERE id IN {{ids:Array(String)}} AND $scope_alert",  # noqa: S608
            {"ids": ids[SILENCED], "site": site}, alert="{site:String}",  # the alert's own site, already seen to be visible
        )
        for row in rows:
            with suppress(ValueError, TypeError):
                silence = silence_of_row(list(row.values()))
                silences[silence.id] = silence
    sources: dict[str, dict[str, Any]] = {}
    if ids[INHIBITED]:
        rows = reads.rows(
            "inhibiting alerts", "SELECT alert_id, any(rule_id) AS source_rule FROM alerts_by_id "
            "WHERE alert_id IN {ids:Array(String)} AND $scope GROUP BY alert_id", {"ids": ids[INHIBITED]},
        )
        sources = {row["alert_id"]: row for row in rows}
    holds: dict[str, list[dict[str, Any]]] = {outcome: [] for outcome in HELD_OUTCOMES}
    for silence_id in ids[SILENCED]:
        known = silences.get(silence_id)
        where = _held_where(by[(SILENCED, silence_id)])
        if known is None:
            text = f"silenced by {silence_id} (a silence no longer in the store)"
            holds[SILENCED].append({"id": silence_id, "text": text, "held": where})
            continue
        ended_early = known.updated_at > known.created_at and known.updated_by
        holds[SILENCED].append({
            "id": silence_id, "created_by": known.created_by, "comment": known.comment,
            "until": iso_ms(known.ends_at), "expired_by": ended_early or None, "held": where,
            "text": f"silenced by {silence_id} ({known.created_by}: {known.comment}) until {iso_ms(known.ends_at)}",
        })
    for name in ids[MUTED]:
        holds[MUTED].append({"id": name, "text": f"muted by the maintenance window {name}", "held": _held_where(by[(MUTED, name)])})
    for source_id in ids[INHIBITED]:
        source = sources.get(source_id)
        text = (f"inhibited by alert {source_id} ({source['source_rule']}, firing)" if source is not None
                else "inhibited by an alert of a site you cannot see")
        holds[INHIBITED].append({"id": source_id if source is not None else None, "text": text,
                                 "rule_id": source["source_rule"] if source is not None else None,
                                 "held": _held_where(by[(INHIBITED, source_id)])})
    return holds


def _previous_start(reads: Reads, first: Notification, rule_id: str, site: str, group: dict[str, Any]) -> int | None:
    """The ``started_at`` of the group's notification before ``first`` (match rules that counted suppressed matches)."""
    rows = reads.rows(
        "previous notification",
        "SELECT toUnixTimestamp64Milli(started_at) AS started FROM alerts FINAL WHERE site = {site:String} "
        "AND evaluated_at >= fromUnixTimestamp64Milli({since:Int64}) AND evaluated_at < fromUnixTimestamp64Milli({until:Int64}) "
        "AND rule_id = {rule:String} AND group_json = {group:String} AND $scope ORDER BY evaluated_at DESC LIMIT 1",
        {"site": site, "since": first.evaluated_at - PREVIOUS_HORIZON_MS, "until": first.evaluated_at, "rule": rule_id,
         "group": json.dumps(group, separators=(",", ":"), ensure_ascii=False, sort_keys=True)},
    )
    return int(rows[0]["started"]) if rows else None


def printed_store(config: ConsoleConfig) -> str | None:
    """The ``--store`` to print in commands: absolute for chDB; None when the DSN holds a password (never shown)."""
    address: StoreAddress = config.store.address
    if address.kind == "chdb":
        return str(address).replace(f"chdb://{address.path}", f"chdb://{Path(address.path).resolve()}", 1)
    return None if address.password else config.store_dsn


def _reproduce(reads: Reads, config: ConsoleConfig, alert_id: str, rule: Rule | None, notifications: list[Notification],
               site: str, group: dict[str, Any], types: list[str]) -> dict[str, Any]:
    first, last = notifications[0], notifications[-1]
    if rule is None:
        return {"commands": [], "notes": [f"The rule {first.record['rule']['id']} is not in {config.rules_dir}: "
                                          "there is nothing to replay it with."]}
    notes = []
    previous = None
    if rule.kind == "match" and first.suppressed_count > 0:
        previous = _previous_start(reads, first, rule.id, site, group)
        if previous is None:
            notes.append(f"The group's notification before this one is more than {format_duration(PREVIOUS_HORIZON_MS)} "
                         "older: the replay counts fewer suppressed matches.")
    last_seen = first.value.get("last_seen_at") if rule.kind == "absence" else None
    start = reproduce.span_start(rule, first.started_at, parse_ts_checked(last_seen) if isinstance(last_seen, str) else None,
                                 previous)
    span = reproduce.Span(site=site, types=tuple(types), start_ms=start, end_ms=last.evaluated_at)
    link_base = str(first.record["link"]).removesuffix(f"/alerts/{alert_id}")
    store = printed_store(config)
    if store is None:
        notes.append("The store's DSN holds a password, so it is not printed: the first command reads $LOGYSTERA_STORE.")
    lines = reproduce.commands(span, alert_id, store, str(Path(config.rules_dir).resolve()), link_base)
    if config.store.address.kind == "chdb":
        notes.append("A chDB directory is open in one process at a time: stop this console (or copy the directory) "
                     "before running the first command.")
    return {"commands": lines, "notes": notes,
            "span": {"site": site, "types": types, "from": format_ts(span.start_ms), "to": format_ts(span.end_ms),
                     "tick_interval": format_duration(reproduce.TICK_INTERVAL_MS)}}


def _evidence(notifications: list[Notification]) -> list[dict[str, Any]]:
    """Every evidence signal of the notifications, once, oldest first, with the seqs that carry it."""
    seen: dict[str, dict[str, Any]] = {}
    for notification in notifications:
        for envelope in notification.record["evidence"]:
            entry = seen.setdefault(envelope["id"], {"envelope": envelope, "seqs": []})
            entry["seqs"].append(notification.seq)
    return sorted(seen.values(), key=lambda entry: (parse_ts_checked(entry["envelope"]["ts"]), entry["envelope"]["id"]))


def group_text(group: dict[str, Any]) -> str:
    """``component=plugin:checkout-express``, fields joined by ``, ``; ``whole site`` without ``group_by``."""
    if not group:
        return "whole site"
    return ", ".join(f"{name}={value if isinstance(value, str) else json.dumps(value)}" for name, value in group.items())


def sentence_html(sentence: str) -> Markup:
    """The condition sentence with its backticked names as ``<code>`` (the text otherwise escaped)."""
    parts = sentence.split("`")
    return Markup("").join(Markup("<code>{}</code>").format(part) if index % 2 else escape(part)
                           for index, part in enumerate(parts))


def field_value(name: str, value: Any) -> dict[str, Any]:
    """How one payload field is shown: its text, and whether it is a hash (shown as one, in monospace)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    hashed = isinstance(value, str) and (name.endswith(("hash", "fingerprint")) or _HASH.fullmatch(value) is not None)
    return {"name": name, "text": text, "hash": hashed}


def alert_view(request: Request, alert_id: str) -> dict[str, Any]:
    """Everything the page and the API show of one alert; 404 when the id is malformed, unknown or not visible."""
    if not ALERT_ID.fullmatch(alert_id):
        raise HTTPException(404, f"“{alert_id[:80]}” is not an alert id (32 lowercase hexadecimal characters).")
    config = config_of(request)
    reads = reads_for(request)
    notifications = _notifications(reads, alert_id)
    if not notifications:
        raise HTTPException(404, f"No alert {alert_id} is in the store (or it belongs to a site you cannot see).")
    first, last = notifications[0], notifications[-1]
    record = last.record
    site, group = record["site"], record["group"]
    rule = next((candidate for candidate in config.ruleset.rules if candidate.id == record["rule"]["id"]), None)
    types = list(rule.signal_types) if rule is not None else sorted({e["type"] for n in notifications for e in n.record["evidence"]})
    firing = last.status == "firing"
    matched = record["rule"]["kind"] == "match"
    clock = _site_clock(reads, site, last.evaluated_at) if firing and not matched else None
    episode_end = (last.ended_at or last.evaluated_at) if clock is None else clock
    if matched:
        status_text = (f"firing since {format_ts(first.started_at)} (a match: notified at {format_ts(last.evaluated_at)}, "
                       "never resolved)")
    elif firing:
        status_text = (f"firing since {format_ts(first.started_at)} (for {spoken_duration(episode_end - first.started_at)} "
                       f"as of {format_ts(episode_end)}, the site's latest stored event time)")
    else:
        status_text = f"resolved at {format_ts(episode_end)} after {spoken_duration(episode_end - first.started_at)}"
    chart = _chart(reads, rule, site, group, types, (first.started_at, episode_end), first.evaluated_at)
    channels = sorted({channel for n in notifications for channel in n.record["deliver"]})
    deliveries = _deliveries(reads, alert_id, site, channels)
    holds = _holds(reads, deliveries, site)
    repro = _reproduce(reads, config, alert_id, rule, notifications, site, group, types)
    return {
        "alert_id": alert_id, "site": site, "group": group, "group_text": group_text(group), "types": types,
        "rule": {**record["rule"], "severity": record["severity"], "subsystem": record["subsystem"], "loaded": rule is not None,
                 "sentence": condition_sentence(rule) if rule is not None else None},
        "status": {"status": last.status, "started_at": format_ts(first.started_at), "until": format_ts(episode_end),
                   "as_of_site_clock": firing, "text": status_text},
        "notifications": notifications, "chart": chart, "evidence": _evidence(notifications),
        "deliveries": deliveries, "holds": holds, "channels": channels, "reproduce": repro, "reads": reads.stats,
    }


def _headers(view: dict[str, Any]) -> dict[str, str]:
    stats = view["reads"]
    return {"x-rows-read": str(stats.rows_read), "x-queries": str(stats.queries)}


def alert_html(request: Request) -> Response:
    """The alert page."""
    view = alert_view(request, request.path_params["alert_id"])
    view["chart_svg"] = activity_svg(view["chart"])
    view["sentence_html"] = sentence_html(view["rule"]["sentence"]) if view["rule"]["sentence"] else None
    for entry in view["evidence"]:
        entry["fields"] = [field_value(name, value) for name, value in (entry["envelope"].get("data") or {}).items()]
    response = page(request, "alert.html", view)
    response.headers.update(_headers(view))
    return response


def alert_json(request: Request) -> Response:
    """The same data as JSON."""
    view = alert_view(request, request.path_params["alert_id"])
    chart: ActivityChart = view["chart"]
    body = {
        **{key: view[key] for key in ("alert_id", "site", "group", "rule", "status", "evidence", "channels", "holds",
                                      "reproduce")},
        "notifications": [notification.record for notification in view["notifications"]],
        "chart": {"start": format_ts(chart.start), "bucket_ms": chart.bucket, "counts": chart.counts, "matching": chart.matching,
                  "episode": [format_ts(chart.episode[0]), format_ts(chart.episode[1])], "threshold": chart.threshold,
                  "note": chart.note},
        "deliveries": [{**asdict(attempt), "attempted_at": format_ts(attempt.attempted_at)} for attempt in view["deliveries"]],
        "reads": {"queries": view["reads"].queries, "rows_read": view["reads"].rows_read,
                  "per_query": [{"name": name, "rows_read": rows} for name, rows in view["reads"].per_query]},
    }
    return JSONResponse(body, headers=_headers(view))


ROUTES = [
    Route("/alerts/{alert_id}", alert_html),
    Route("/api/alerts/{alert_id}", alert_json),
]
