"""The list pages and their API over a store filled by a real replay: /alerts, /sites/<site>, /rules.

An hour of three generated sites (alerts firing and resolved, rejected lines, dispatcher drop reports) plus
one drop report whose ``version`` is a script tag is replayed into a chDB store once for the module; every
expectation is computed from what that replay emitted (``alerts.jsonl`` lines) and what it was fed, never
from the console's own queries.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from flows.replay import replay
from schemas.factory import make_signal, signal_line
from schemas.records import Record, parse_lines, salvage_site_and_ts
from schemas.rule_loader import RuleSet, load_rules
from schemas.timestamps import format_ts, parse_ts
from simulate.corpus import write_corpus
from sinks.clickhouse import Store
from tests.support.store import TTL_DAYS, database_name
from tests.web.console import console_client
from web.access import Viewer
from web.app import ConsoleConfig
from web.listing import MAX_PAGE_SIZE, SITE_WINDOW_MS, TimeBound, chart_step

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "<script>alert(1)</script>"
XSS_SITE = "shop-0000"


@dataclass
class Replayed:
    """The store after the replay, and what the replay emitted and was fed."""

    store: Store
    dsn: str
    ruleset: RuleSet
    notifications: list[dict[str, Any]]
    records: list[Record]
    rejected_by_site: Counter[str]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory, chdb_dir: Path) -> Replayed:
    path = tmp_path_factory.mktemp("lists") / "signals.jsonl"
    write_corpus(path, 3000, 3, seed=11, duration_s=3600)
    lines = path.read_bytes().splitlines()
    last_ts = max(json.loads(line)["ts"] for line in lines[-50:] if line.startswith(b"{") and line.endswith(b"}"))
    report = make_signal(XSS_SITE, "integration", last_ts, "01KXSSDROPPEDREPORT000000A", None, event="dropped", dropped=7, version=SCRIPT)
    with open(path, "a", encoding="utf-8") as out:
        out.write(signal_line(report) + "\n")
    lines = path.read_bytes().splitlines()
    records, rejects = parse_lines(enumerate(lines, 1))
    rejected_by_site = Counter(salvage_site_and_ts(lines[number - 1])[0] for number, _ in rejects)
    ruleset = load_rules(ROOT / "rules")
    dsn = f"chdb://{chdb_dir}?database={database_name('web_lists')}"
    store = Store.open(dsn, ttl_days=TTL_DAYS)
    result = replay(str(path), ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    notifications = [json.loads(line) for line in result.alerts]
    statuses = Counter(notification["status"] for notification in notifications)
    assert statuses["firing"] and statuses["resolved"], statuses  # the corpus must exercise both
    return Replayed(store, dsn, ruleset, notifications, [record for record in records if record.type != "tick"], rejected_by_site)


def client_for(replayed: Replayed, viewer: Viewer | None = None) -> AbstractContextManager[httpx.Client]:
    config = ConsoleConfig(store=replayed.store, ruleset=replayed.ruleset, store_dsn=replayed.dsn)
    if viewer is not None:
        async def authenticate(request: Request) -> Viewer:
            return viewer
        config.authenticate = authenticate
    return console_client(config)


@pytest.fixture(scope="module")
def client(replayed: Replayed) -> Iterator[httpx.Client]:
    with client_for(replayed) as test_client:
        yield test_client


# -- what the replay emitted, as the list should show it --------------------------------------------


def episodes(notifications: list[dict[str, Any]], until: str | None = None) -> dict[str, dict[str, Any]]:
    """The latest notification of every alert (before ``until``), by alert id."""
    latest: dict[str, dict[str, Any]] = {}
    for notification in notifications:
        if until is not None and notification["evaluated_at"] >= until:
            continue
        known = latest.get(notification["alert_id"])
        if known is None or notification["seq"] > known["seq"]:
            latest[notification["alert_id"]] = notification
    return latest


def newest_first(latest: dict[str, dict[str, Any]]) -> list[str]:
    return [
        alert_id for alert_id, _ in
        sorted(latest.items(), key=lambda item: (parse_ts(item[1]["evaluated_at"]), item[0]), reverse=True)
    ]


def walk(client: httpx.Client, query: str, limit: int) -> list[str]:
    """Every alert id of the list, page after page through the API's ``next`` cursors."""
    seen: list[str] = []
    cursor = ""
    while True:
        answer = client.get(f"/api/alerts?{query}&limit={limit}{cursor}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen += [alert["alert_id"] for alert in body["alerts"]]
        assert len(body["alerts"]) <= limit
        if body["next"] is None:
            return seen
        cursor = f"&after={body['next']}"


# -- /alerts ----------------------------------------------------------------------------------------


def test_the_list_shows_every_alert_newest_first_page_by_page(client: httpx.Client, replayed: Replayed) -> None:
    latest = episodes(replayed.notifications)
    expected = newest_first(latest)
    assert walk(client, "", 4) == expected
    answer = client.get("/api/alerts").json()
    first = answer["alerts"][0]
    notification = latest[first["alert_id"]]
    assert first == {
        "alert_id": notification["alert_id"], "url": f"/alerts/{notification['alert_id']}", "site": notification["site"],
        "rule_id": notification["rule"]["id"], "rule_title": notification["rule"]["title"], "severity": notification["severity"],
        "subsystem": notification["subsystem"], "kind": notification["rule"]["kind"], "group": notification["group"],
        "summary": notification["summary"], "status": notification["status"], "started_at": notification["started_at"],
        "last_notified_at": notification["evaluated_at"], "ended_at": notification.get("ended_at"),
        "notifications": notification["seq"],
    }
    assert answer["reads"]["rows_read"] > 0 and answer["reads"]["queries"] == 1


def test_pages_link_to_each_other_and_to_every_alert(client: httpx.Client, replayed: Replayed) -> None:
    expected = newest_first(episodes(replayed.notifications))
    first = client.get("/alerts?limit=5")
    assert first.status_code == 200
    assert int(first.headers["x-rows-read"]) > 0
    ids = re.findall(r'<tr data-alert-id="([0-9a-f]+)"', first.text)
    assert ids == expected[:5]
    for alert_id in ids:
        assert f'href="/alerts/{alert_id}"' in first.text
    assert 'rel="prev"' not in first.text
    after = re.search(r'<a rel="next" href="([^"]+)"', first.text)
    assert after is not None
    second = client.get(after.group(1).replace("&amp;", "&"))
    assert re.findall(r'<tr data-alert-id="([0-9a-f]+)"', second.text) == expected[5:10]
    before = re.search(r'<a rel="prev" href="([^"]+)"', second.text)
    assert before is not None
    back = client.get(before.group(1).replace("&amp;", "&"))
    assert re.findall(r'<tr data-alert-id="([0-9a-f]+)"', back.text) == expected[:5]
    assert 'rel="prev"' not in back.text and 'rel="next"' in back.text


@pytest.mark.parametrize("name", ["site", "rule", "severity", "status"])
def test_each_filter_keeps_exactly_its_alerts(client: httpx.Client, replayed: Replayed, name: str) -> None:
    latest = episodes(replayed.notifications)
    field = {"site": lambda n: n["site"], "rule": lambda n: n["rule"]["id"], "severity": lambda n: n["severity"],
             "status": lambda n: n["status"]}[name]
    values = Counter(field(notification) for notification in latest.values())
    assert len(values) > 1, values  # a filter that keeps everything would prove nothing
    for value in values:
        kept = {alert_id: n for alert_id, n in latest.items() if field(n) == value}
        assert walk(client, f"{name}={value}", MAX_PAGE_SIZE) == newest_first(kept), value


def test_a_time_range_shows_each_alert_as_it_stood_then(client: httpx.Client, replayed: Replayed) -> None:
    resolved = next(n for n in replayed.notifications if n["status"] == "resolved")
    until = resolved["evaluated_at"]  # the resolution itself is outside [since, until)
    before = episodes(replayed.notifications, until=until)
    assert before[resolved["alert_id"]]["status"] == "firing"
    assert walk(client, f"until={until}", MAX_PAGE_SIZE) == newest_first(before)
    answer = client.get(f"/api/alerts?until={until}&status=firing&limit=200").json()
    assert resolved["alert_id"] in [alert["alert_id"] for alert in answer["alerts"]]
    assert answer["range"] == {"since": None, "until": until}
    # A duration counts back from the latest notification stored, not from today's date.
    clock = max(parse_ts(n["evaluated_at"]) for n in replayed.notifications)
    recent = episodes([n for n in replayed.notifications if parse_ts(n["evaluated_at"]) >= clock - 15 * 60_000])
    assert 0 < len(recent) < len(episodes(replayed.notifications))
    assert walk(client, "since=15m", MAX_PAGE_SIZE) == newest_first(recent)
    assert client.get("/api/alerts?since=15m").json()["range"]["since"] == format_ts(clock - 15 * 60_000)


@pytest.mark.parametrize(("query", "named"), [
    ("severity=urgent", "severity: 'urgent' is not one of critical, high, medium, low, info"),
    ("status=open", "status: 'open' is not one of firing, resolved"),
    ("since=yesterday", "since: 'yesterday' is neither a time"),
    ("until=2026-13-01T00:00:00Z", "until: '2026-13-01T00:00:00Z' is neither a time"),
    ("site=Shop%20EU", "site: 'Shop EU' is not a site id"),
    ("limit=5000", "limit: '5000' is not a page size from 1 to 200"),
    ("after=yesterday", "after: 'yesterday' is not a page cursor"),
    ("severty=high", "severty: not a filter"),
])
def test_a_bad_filter_is_a_400_that_says_which_and_why(client: httpx.Client, query: str, named: str) -> None:
    page = client.get(f"/alerts?{query}")
    assert page.status_code == 400
    assert 'id="error" data-status="400"' in page.text
    assert named.replace("'", "&#39;") in page.text
    assert '<form id="filters"' in page.text  # the form stays, to fix the filter in place
    api = client.get(f"/api/alerts?{query}")
    assert api.status_code == 400
    assert named in api.json()["detail"]


@pytest.mark.parametrize(("text", "instant"), [
    ("2026-11-28T10:00:00Z", "2026-11-28T10:00:00.000Z"),
    ("2026-11-28T12:00:00.250+02:00", "2026-11-28T10:00:00.250Z"),
    ("2026-11-28", "2026-11-28T00:00:00.000Z"),
    ("2026-11-28T10:00", "2026-11-28T10:00:00.000Z"),
])
def test_since_and_until_take_instants_in_rfc3339_and_shorter(text: str, instant: str) -> None:
    assert TimeBound.parse("since", text).resolve(None) == parse_ts(instant)
    assert TimeBound.parse("since", "90m").resolve(parse_ts(instant)) == parse_ts(instant) - 90 * 60_000


def test_the_console_address_leads_to_the_alerts(client: httpx.Client) -> None:
    answer = client.get("/", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (307, "/alerts")


def test_a_filter_that_matches_nothing_says_so(client: httpx.Client) -> None:
    page = client.get("/alerts?site=no-such-site&since=&until=")
    assert page.status_code == 200
    assert 'id="no-alerts"' in page.text and "data-alert-id" not in page.text
    assert 'value="no-such-site"' in page.text
    assert client.get("/api/alerts?site=no-such-site").json()["alerts"] == []


# -- /sites/<site> ----------------------------------------------------------------------------------


def test_the_site_page_counts_the_sites_signals_per_type_over_its_last_span(client: httpx.Client, replayed: Replayed) -> None:
    mine = [record for record in replayed.records if record.site == XSS_SITE]
    clock = max(max(record.ts for record in mine),
                max(parse_ts(n["evaluated_at"]) for n in replayed.notifications if n["site"] == XSS_SITE))
    start = max(min(record.ts for record in mine), clock - SITE_WINDOW_MS)
    start -= start % chart_step(clock - start)
    expected = Counter(record.type for record in {record.id: record for record in mine if record.ts >= start}.values())
    body = client.get(f"/api/sites/{XSS_SITE}").json()
    assert body["clock"] == format_ts(clock)
    assert body["signals"]["totals"] == dict(sorted(expected.items(), key=lambda item: (-item[1], item[0])))
    assert {name: sum(values) for name, values in body["signals"]["counts"].items()} == expected
    assert body["signals"]["start"] == format_ts(start) and len(body["signals"]["buckets"]) <= 49
    latest = episodes([n for n in replayed.notifications if n["site"] == XSS_SITE])
    assert [alert["alert_id"] for alert in body["episodes"]] == newest_first(latest)[:20]
    assert [alert["alert_id"] for alert in body["open_alerts"]] == newest_first(
        {alert_id: n for alert_id, n in latest.items() if n["status"] == "firing"})[:20]
    drops = [record for record in mine if record.type == "integration" and record.data.event == "dropped"]
    assert body["dropped"]["total"] == sum(record.data.dropped or 0 for record in drops)
    assert {report["id"] for report in body["dropped"]["reports"]} == {record.id for record in drops}
    assert body["reads"]["rows_read"] > 0


def test_the_site_page_lists_rejected_input_and_renders_signal_fields_as_text(client: httpx.Client, replayed: Replayed) -> None:
    page = client.get(f"/sites/{XSS_SITE}")
    assert page.status_code == 200
    for hook in ('id="site-chart"', 'id="open-alerts"', 'id="episodes"', 'id="rejected"', 'id="dropped"'):
        assert hook in page.text
    assert SCRIPT not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    chart = page.text.split('id="site-chart"', 1)[1].split("</svg>", 1)[0]
    assert "<svg" in chart
    counted = [int(count) for count in re.findall(r'<g class="bucket" data-bucket="[^"]+" data-count="(\d+)"', chart)]
    totals = client.get(f"/api/sites/{XSS_SITE}").json()["signals"]
    assert counted == [sum(values[i] for values in totals["counts"].values()) for i in range(len(totals["buckets"]))]
    assert sum(counted) == sum(totals["totals"].values()) > 0
    assert "default-src 'none'" in page.headers["content-security-policy"]
    rejected = client.get("/api/sites/news-0002").json()["rejected"]
    assert rejected and all(row["lines"] > 0 and row["reason"] for row in rejected)
    assert sum(row["lines"] for row in rejected) == replayed.rejected_by_site["news-0002"] > 0


def test_a_site_with_nothing_stored_has_an_empty_page_and_a_malformed_one_is_404(client: httpx.Client) -> None:
    page = client.get("/sites/quiet-site")
    assert page.status_code == 200 and 'id="no-data"' in page.text
    assert client.get("/api/sites/quiet-site").json()["clock"] is None
    assert client.get("/sites/Not%20A%20Site").status_code == 404


def test_a_viewer_sees_nothing_of_the_sites_outside_their_list(replayed: Replayed) -> None:
    with client_for(replayed, Viewer("ana", ("blog-*",))) as scoped:
        assert scoped.get(f"/sites/{XSS_SITE}").status_code == 404
        assert scoped.get(f"/api/sites/{XSS_SITE}").status_code == 404
        assert scoped.get("/sites/blog-0001").status_code == 200
        listed = {alert["site"] for alert in scoped.get("/api/alerts?limit=200").json()["alerts"]}
        assert listed == {"blog-0001"}
        assert scoped.get(f"/api/alerts?site={XSS_SITE}").json()["alerts"] == []
        fired = {rule["id"]: rule["notifications"] for rule in scoped.get("/api/rules").json()["rules"]}
        assert sum(fired.values()) == sum(1 for n in replayed.notifications if n["site"] == "blog-0001")


# -- /rules -----------------------------------------------------------------------------------------


def test_the_rules_page_lists_every_loaded_rule_noisiest_first(client: httpx.Client, replayed: Replayed) -> None:
    body = client.get("/api/rules").json()
    assert [rule["id"] for rule in body["rules"]] == [rule["id"] for rule in sorted(
        body["rules"], key=lambda rule: (-rule["notifications"], -rule["fired"], rule["id"]))]
    assert {rule["id"] for rule in body["rules"]} == {rule.id for rule in replayed.ruleset.rules}
    notified: dict[str, int] = Counter(n["rule"]["id"] for n in replayed.notifications)
    started: dict[str, int] = defaultdict(int)
    for notification in replayed.notifications:
        started[notification["rule"]["id"]] += notification["seq"] == 1
    for rule in body["rules"]:  # the replay spans an hour: all of it lies within the 7 days
        assert (rule["notifications"], rule["fired"]) == (notified.get(rule["id"], 0), started.get(rule["id"], 0))
    page = client.get("/rules")
    assert page.status_code == 200
    ids = re.findall(r'<tr data-rule-id="([a-z0-9-]+)"', page.text)
    assert ids == [rule["id"] for rule in body["rules"]]
    noisiest = body["rules"][0]
    row = page.text.split(f'data-rule-id="{noisiest["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert f'class="num notifications">{noisiest["notifications"]}<' in row
    assert re.sub(r"</?code>", "", re.search(r'class="sentence">(.*?)</td>', row).group(1)) == (  # type: ignore[union-attr]
        noisiest["sentence"].replace("`", "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
