"""The list pages: ``/alerts`` (filtered, paged), ``/sites/<site>``, ``/rules``, and the same data under ``/api/``.

The handlers are plain functions: Starlette runs them in its thread pool, so a page waiting for the store does
not hold up the server's event loop. Every response says what it cost the store (``x-rows-read``; the API
also has ``reads``), which is what bench/web.py measures.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from schemas.durations import spoken_duration
from schemas.timestamps import format_ts
from web.alert_page import sentence_html
from web.chart import series_class, stacked_svg
from web.listing import (
    SEVERITIES,
    STATUSES,
    AlertPage,
    FilterError,
    iso,
    list_alerts,
    parse_filters,
    rule_activity,
    site_id,
    site_picture,
)
from web.pages import SECURITY_HEADERS, config_of, error_page, page, reads_for, wants_json
from web.reads import Reads
from web.sentence import condition_sentence, spoken_window


def when(ms: int | None) -> str:
    """An instant as the pages show it: UTC to the second (``2026-11-28 15:30:54``), as every page says."""
    return "" if ms is None else format_ts(ms)[:19].replace("T", " ")


FORMATS = {"when": when, "lasted": spoken_duration, "spoken_window": spoken_window}
"""The pages' ways of writing times and lengths of time."""


def _page(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    return page(request, template, {**FORMATS, **context}, status_code)


def _answer(request: Request, reads: Reads, template: str, context: dict[str, Any], data: dict[str, Any]) -> Response:
    """The page, or under ``/api/`` the JSON ``data``; both carry the rows the store read for them."""
    stats = reads.stats
    if wants_json(request):
        spent = {"queries": stats.queries, "rows_read": stats.rows_read,
                 "per_query": [{"name": name, "rows_read": rows} for name, rows in stats.per_query]}
        response: Response = JSONResponse({**data, "reads": spent}, headers=SECURITY_HEADERS)
    else:
        response = _page(request, template, context)
    response.headers["x-rows-read"] = str(stats.rows_read)
    response.headers["x-queries"] = str(stats.queries)
    return response


def _page_link(alerts: AlertPage, **cursor: str) -> str:
    return "/alerts?" + urlencode(alerts.filters.query(**cursor))


def alerts(request: Request) -> Response:
    """Open and recent alerts, newest first, filtered and paged (``/alerts``, ``/api/alerts``)."""
    try:
        filters = parse_filters(dict(request.query_params))
    except FilterError as error:
        if wants_json(request):
            return error_page(request, 400, "Bad filter", str(error))
        context: dict[str, Any] = {
            "problem": str(error), "form": dict(request.query_params), "severities": SEVERITIES, "statuses": STATUSES,
        }
        return _page(request, "alerts.html", context, status_code=400)
    reads = reads_for(request)
    listed = list_alerts(reads, filters)
    data = {
        "alerts": [row.as_json() for row in listed.rows],
        "next": str(listed.next) if listed.next else None,
        "prev": str(listed.prev) if listed.prev else None,
        "filters": {**filters.query(), "limit": filters.limit},
        "range": {"since": iso(listed.since_ms), "until": iso(listed.until_ms)},
    }
    context = {
        "alerts": listed, "form": filters.form_values(), "severities": SEVERITIES, "statuses": STATUSES,
        "next_url": _page_link(listed, after=str(listed.next)) if listed.next else None,
        "prev_url": _page_link(listed, before=str(listed.prev)) if listed.prev else None,
    }
    return _answer(request, reads, "alerts.html", context, data)


def site(request: Request) -> Response:
    """One site's picture (``/sites/<site>``, ``/api/sites/<site>``); 404 for a site the viewer may not see."""
    name = site_id(request.path_params["site"])
    if name is None or not request.state.viewer.may_see(name):
        # The same answer as for a site that does not exist: a hidden site leaves no trace.
        raise HTTPException(404)
    reads = reads_for(request)
    picture = site_picture(reads, name)
    chart = picture.chart
    svg = stacked_svg(chart.start_ms, chart.step_ms, {type_: chart.counts[type_] for type_ in chart.totals}, "signals") if chart else None
    context = {"picture": picture, "chart_svg": svg, "series_class": series_class}
    return _answer(request, reads, "site.html", context, picture.as_json())


def rules(request: Request) -> Response:
    """Every loaded rule as a sentence with its last 7 days, the noisiest first (``/rules``, ``/api/rules``)."""
    reads = reads_for(request)
    activity, clock = rule_activity(reads, config_of(request).ruleset.rules)
    sentences = {item.rule.id: condition_sentence(item.rule) for item in activity}
    data = {
        "window": {"days": 7, "until": iso(clock)},
        "rules": [
            {
                "id": item.rule.id, "title": item.rule.title, "severity": item.rule.severity, "kind": item.rule.kind,
                "subsystem": item.rule.subsystem, "enabled": item.rule.enabled, "sentence": sentences[item.rule.id],
                "fired": item.fired, "notifications": item.notifications, "last_notified_at": iso(item.last_ms),
            }
            for item in activity
        ],
    }
    context = {"activity": activity, "sentences": sentences, "clock": clock, "sentence_html": sentence_html}
    return _answer(request, reads, "rules.html", context, data)


def home(request: Request) -> Response:
    """The console's address alone leads to the alerts."""
    return RedirectResponse("/alerts", status_code=307)


ROUTES = [
    Route("/", home),
    Route("/alerts", alerts),
    Route("/api/alerts", alerts),
    Route("/sites/{site}", site),
    Route("/api/sites/{site}", site),
    Route("/rules", rules),
    Route("/api/rules", rules),
]
