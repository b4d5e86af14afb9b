"""The alert page and its JSON, through a real console (uvicorn on loopback), over a real chDB store filled by a real replay.

The store holds tests/support/incidents.py replayed with the rule pack: one alert of each of four kinds
(ratio, threshold, absence, match), plus delivery attempts written the way ``deliver`` writes them.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from starlette.requests import Request

from cli.sql import run_sql
from delivery.schedule import Attempt
from flows.replay import replay
from schemas.errors import UsageError
from schemas.rule_loader import load_rules
from schemas.store import DELIVERY_COLUMNS
from schemas.timestamps import parse_ts_checked
from sinks.clickhouse import RetryPolicy, Store, parse_dsn
from tests.support.incidents import XSS, notifications_by_rule, write_incidents
from tests.support.ports import free_port
from tests.support.store import TTL_DAYS, database_name
from tests.web.console import console_client
from web.access import Viewer
from web.app import ConsoleConfig
from web.sentence import condition_sentence

RULES = Path(__file__).resolve().parents[2] / "rules"


class _Elements(HTMLParser):
    """Each element's attributes and text content, by id and in document order (enough for these assertions)."""

    VOID: ClassVar[set[str]] = {"meta", "link", "br", "img", "input", "hr", "path", "line", "rect", "polyline"}

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self.open: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text: list[str] = []
        self.elements.append((tag, {name: value or "" for name, value in attrs}, text))
        if tag not in self.VOID:
            self.open.append(text)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}, []))

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        for text in self.open:
            text.append(data)

    def by_id(self, element_id: str) -> tuple[str, dict[str, str], str]:
        for tag, attrs, text in self.elements:
            if attrs.get("id") == element_id:
                return tag, attrs, "".join(text)
        raise AssertionError(f"no #{element_id}")

    def having(self, attribute: str) -> list[dict[str, str]]:
        return [attrs for _, attrs, _ in self.elements if attribute in attrs]


def parsed(html: str) -> _Elements:
    elements = _Elements()
    elements.feed(html)
    return elements


@pytest.fixture(scope="module")
def filled(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """A store with the incidents replayed into it (once for the module), and the notifications per rule id."""
    dsn = f"chdb://{chdb_dir}?database={database_name('alert_page')}"
    store = Store.open(dsn, ttl_days=TTL_DAYS)
    signals = write_incidents(tmp_path_factory.mktemp("incidents") / "signals.jsonl")
    ruleset = load_rules(RULES)
    result = replay(str(signals), ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    return dsn, notifications_by_rule(result.alerts)


@pytest.fixture(scope="module")
def client(filled: tuple[str, dict[str, list[dict[str, Any]]]]) -> Iterator[httpx.Client]:
    dsn, _ = filled
    config = ConsoleConfig(store=Store.open(dsn), ruleset=load_rules(RULES), store_dsn=dsn, rules_dir=str(RULES))
    with console_client(config) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def alerts(filled: tuple[str, dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    return filled[1]


def test_the_replay_gave_one_alert_of_each_kind_the_page_is_tested_on(alerts: dict[str, list[dict[str, Any]]]) -> None:
    assert {rule: [n["seq"] for n in notifications] for rule, notifications in alerts.items()} == {
        "http-5xx-ratio": [1, 2], "php-fatal-spike": [1, 2], "integration-silent": [1, 2], "sensitive-config-changed": [1, 1],
    }


def test_the_page_shows_the_rule_status_timeline_and_evidence_of_a_threshold_alert(
    client: httpx.Client, alerts: dict[str, list[dict[str, Any]]],
) -> None:
    first, resolved = alerts["php-fatal-spike"]
    response = client.get(f"/alerts/{first['alert_id']}")
    assert response.status_code == 200, response.text
    page = parsed(response.text)
    assert page.by_id("rule-title")[2] == "PHP fatal errors in one component"
    _, attrs, text = page.by_id("severity")
    assert (text, attrs["class"]) == ("high", "badge sev-high")
    assert page.by_id("subsystem")[2] == "php"
    assert page.by_id("site")[2] == "shop-eu"
    assert page.by_id("group")[2] == "component=plugin:checkout-express"
    rule = next(rule for rule in load_rules(RULES).rules if rule.id == "php-fatal-spike")
    assert page.by_id("condition")[2] == condition_sentence(rule).replace("`", "")
    assert "<code>php_error</code>" in response.text
    _, attrs, text = page.by_id("status")
    assert attrs["data-status"] == "resolved"
    assert " ".join(text.split()) == "resolved resolved at 2026-11-28T10:55:50.000Z after 14m 49s".replace("resolved resolved", "resolved")
    seqs = [attrs["data-seq"] for attrs in page.having("data-seq") if "data-channel" not in attrs]
    assert seqs == ["1", "2"]
    assert f"{resolved['suppressed_count']} moments with the condition true, silenced since seq 1" in response.text
    evidence = [attrs["data-signal-id"] for attrs in page.having("data-signal-id")]
    assert evidence == [envelope["id"] for envelope in first["evidence"]]
    # A signal field holding markup is shown as text, never as markup.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert XSS not in response.text
    assert "<script" not in response.text


def test_the_chart_counts_the_rule_s_signals_per_bucket_with_the_matching_ones_apart(
    client: httpx.Client, alerts: dict[str, list[dict[str, Any]]],
) -> None:
    ratio = alerts["http-5xx-ratio"][0]
    page = parsed(client.get(f"/alerts/{ratio['alert_id']}").text)
    buckets = page.having("data-bucket")
    assert 60 <= len(buckets) <= 120
    starts = [parse_ts_checked(attrs["data-bucket"]) for attrs in buckets]
    bucket = starts[1] - starts[0]
    assert all(later - earlier == bucket for earlier, later in itertools.pairwise(starts))
    assert starts[0] < parse_ts_checked(ratio["started_at"]) - 5 * 60_000  # well before the episode
    # 2 in 5 requests between 10:20 and 10:30 failed: every one of them is in a bucket, and only they match.
    assert sum(int(attrs["data-matching"]) for attrs in buckets) == 120
    assert all(int(attrs["data-matching"]) <= int(attrs["data-count"]) for attrs in buckets)
    inside = [attrs for attrs in buckets if attrs.get("data-in-episode") == "true"]
    assert inside and all("data-in-episode" not in attrs for attrs in buckets[:10])
    svg = page.by_id("chart")
    assert svg
    assert 'class="episode"' in client.get(f"/alerts/{ratio['alert_id']}").text
    threshold = client.get(f"/alerts/{alerts['php-fatal-spike'][0]['alert_id']}").text
    assert 'class="threshold"' in threshold and 'class="window"' in threshold


def test_the_api_answers_the_same_data_as_json_with_the_rows_it_read(
    client: httpx.Client, alerts: dict[str, list[dict[str, Any]]],
) -> None:
    absence = alerts["integration-silent"]
    response = client.get(f"/api/alerts/{absence[0]['alert_id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["notifications"] == absence
    assert body["rule"]["sentence"].startswith("no `integration` signal with `event` = heartbeat for 5 minutes")
    assert body["status"]["status"] == "resolved"
    assert body["reads"]["queries"] == len(body["reads"]["per_query"]) >= 3
    assert response.headers["x-rows-read"] == str(body["reads"]["rows_read"])
    assert {query["name"] for query in body["reads"]["per_query"]} >= {"notifications", "chart", "deliveries"}


def test_a_match_alert_says_it_never_resolves_and_shows_the_silenced_matches(
    client: httpx.Client, alerts: dict[str, list[dict[str, Any]]],
) -> None:
    second = alerts["sensitive-config-changed"][1]
    response = client.get(f"/alerts/{second['alert_id']}")
    page = parsed(response.text)
    _, attrs, text = page.by_id("status")
    assert attrs["data-status"] == "firing"
    assert "never resolved" in text
    assert "1 matching signal silenced since the group's previous notification" in response.text


def test_every_delivery_attempt_is_a_row_with_its_outcome_and_next_retry(
    client: httpx.Client, alerts: dict[str, list[dict[str, Any]]], filled: tuple[str, Any],
) -> None:
    alert_id = alerts["php-fatal-spike"][0]["alert_id"]
    at = parse_ts_checked("2026-11-28T10:41:01.000Z")
    attempts = [
        Attempt(alert_id, 1, "oncall", 1, at, "retrying", 503, 120, "HTTP 503", final=False),
        Attempt(alert_id, 1, "oncall", 2, at + 2_000, "delivered", 200, 80, "", final=True),
        Attempt(alert_id, 2, "oncall", 1, at + 900_000, "retrying", None, 10_000, "timed out after 10s", final=False),
    ]
    store = Store.open(filled[0])
    store.insert("deliveries", DELIVERY_COLUMNS, [list(column) for column in zip(*(a.row() for a in attempts), strict=True)])
    response = client.get(f"/alerts/{alert_id}")
    rows = [attrs for attrs in parsed(response.text).having("data-channel")]
    assert [(attrs["data-channel"], attrs["data-seq"], attrs["data-attempt"]) for attrs in rows] == [
        ("oncall", "1", "1"), ("oncall", "1", "2"), ("oncall", "2", "1")]
    deliveries = client.get(f"/api/alerts/{alert_id}").json()["deliveries"]
    assert [(d["outcome"], d["status_code"], d["next_retry"]) for d in deliveries] == [
        ("retrying", 503, "2026-11-28T10:41:03.000Z"), ("delivered", 200, ""), ("retrying", None, "due, not yet recorded")]
    other = client.get(f"/alerts/{alerts['integration-silent'][0]['alert_id']}").text
    assert 'class="none muted">No delivery attempt' in other


def test_the_reproduce_section_prints_the_three_commands(client: httpx.Client, alerts: dict[str, list[dict[str, Any]]]) -> None:
    alert_id = alerts["php-fatal-spike"][0]["alert_id"]
    response = client.get(f"/alerts/{alert_id}")
    printed = [html.unescape(text) for text in re.findall(r'<code class="command">(.*?)</code>', response.text, re.DOTALL)]
    commands = client.get(f"/api/alerts/{alert_id}").json()["reproduce"]["commands"]
    assert printed == commands and len(commands) == 3
    assert re.match(r"logystera sql --store 'chdb:///\S+' --format raw \"SELECT line FROM .*\" > alert-\w{12}\.jsonl$", commands[0])
    assert commands[1].startswith(f"logystera replay alert-{alert_id[:12]}.jsonl --rules {RULES} --link-base http://localhost:8080 ")
    assert commands[2] == f"grep -F '\"alert_id\":\"{alert_id}\"' alert-{alert_id[:12]}.replayed.jsonl"


@pytest.mark.parametrize("path", ["/alerts/0123456789abcdef0123456789abcdef", "/alerts/not-an-id", "/alerts/%3Cscript%3E"])
def test_an_unknown_or_malformed_id_is_a_404_page_that_says_so(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    _, attrs, text = parsed(response.text).by_id("error")
    assert attrs["data-status"] == "404"
    assert ("No alert" in text) if "0123" in path else ("is not an alert id" in text)
    assert "Traceback" not in response.text and "<script>" not in response.text
    api = client.get(path.replace("/alerts/", "/api/alerts/"))
    assert api.status_code == 404 and api.json()["error"] == "Not found"


def test_an_alert_of_a_site_the_viewer_cannot_see_is_not_found(
    filled: tuple[str, dict[str, list[dict[str, Any]]]], alerts: dict[str, list[dict[str, Any]]],
) -> None:
    async def elsewhere(request: Request) -> Viewer:
        return Viewer(name="ana", sites=("shop-us*",))

    config = ConsoleConfig(store=Store.open(filled[0]), ruleset=load_rules(RULES), store_dsn=filled[0], authenticate=elsewhere)
    with console_client(config) as test_client:
        response = test_client.get(f"/alerts/{alerts['php-fatal-spike'][0]['alert_id']}")
    assert response.status_code == 404
    assert "shop-eu" not in response.text


def test_a_store_that_is_down_is_a_503_page_that_says_so() -> None:
    dsn = f"http://127.0.0.1:{free_port()}/logystera"
    store = Store(parse_dsn(dsn), retry=RetryPolicy(initial=0.01, ceiling=0.01, give_up_after=0.05))
    config = ConsoleConfig(store=store, ruleset=load_rules(RULES), store_dsn=dsn)
    with console_client(config) as test_client:
        response = test_client.get("/alerts/0123456789abcdef0123456789abcdef")
        api = test_client.get("/api/alerts/0123456789abcdef0123456789abcdef")
    assert response.status_code == 503
    _, attrs, text = parsed(response.text).by_id("error")
    assert attrs["data-status"] == "503" and "store is unavailable" in text
    assert "Traceback" not in response.text
    assert api.status_code == 503 and json.loads(api.text)["error"] == "The store is unavailable"


def test_migration_3_fills_the_lookup_with_the_alerts_an_older_store_already_had(
    filled: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    store = Store.open(filled[0])
    before = store.query("SELECT alert_id, seq, record FROM alerts_by_id FINAL ORDER BY alert_id, seq").result_rows
    # The store as version 2 left it: no lookup table, no view, migration 3 not recorded.
    store.command(f"DROP VIEW {store.database}.alerts_by_id_writer")
    store.command(f"DROP TABLE {store.database}.alerts_by_id")
    store.command(f"ALTER TABLE {store.database}.schema_migrations DELETE WHERE version = 3 SETTINGS mutations_sync = 1")
    assert store.migrate() == [3]
    after = store.query("SELECT alert_id, seq, record FROM alerts_by_id FINAL ORDER BY alert_id, seq").result_rows
    assert after == before and len(after) == 8
    assert store.migrate() == []


def test_sql_raw_prints_the_values_of_one_column_as_lines(filled: tuple[str, Any]) -> None:
    store = Store.open(filled[0])
    out = io.StringIO()
    assert run_sql(store, "SELECT arrayJoin(['{\"a\":1}', 'two words']) AS line", "raw", out) == 0
    assert out.getvalue() == '{"a":1}\ntwo words\n'
    with pytest.raises(UsageError, match="--format raw prints one column; the query returns 2"):
        run_sql(store, "SELECT 1 AS a, 2 AS b", "raw", io.StringIO())
