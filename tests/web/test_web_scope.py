"""Who may see what, on a real store: a user of site A finds no trace of site B in any page, count, chart or API.

A real replay writes two sites' alerts into an embedded store: ``shop-eu`` (the incidents of
tests/support/incidents.py) and ``blog-b``, the same records under another site id, its failing plugin named
``plugin:blog-secret``. The console, under uvicorn, has two users: ``alice`` may see ``shop-*``, ``admin``
may see ``*``. Alice's answers must hold nothing of ``blog-b``, and must equal admin's wherever a page is
about ``shop-eu`` alone (proof that nothing of B was mixed in and then hidden); admin's hold B, so the
checks are not vacuous.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flows.replay import replay
from schemas.factory import signal_line
from schemas.rule_loader import load_rules
from sinks.clickhouse import Store
from tests.support.incidents import SITE as SITE_A
from tests.support.incidents import XSS, incident_lines
from tests.support.store import TTL_DAYS, database_name
from tests.web.console import assert_secured, serving
from web.app import ConsoleConfig
from web.signin import SignIn
from web.users import load_users

ROOT = Path(__file__).resolve().parents[2]
SITE_B = "blog-b"
B_MARK = "plugin:blog-secret"
ALICE = "alice-" + "a" * 40
ADMIN = "admin-" + "z" * 40


def two_sites() -> list[str]:
    """The incidents of ``shop-eu`` and the same records as ``blog-b``'s (another component), merged in ts order."""
    copies = []
    for line in incident_lines():
        record = json.loads(line)
        record["site"] = SITE_B
        if record.get("data", {}).get("component"):
            record["data"]["component"] = B_MARK
        copies.append(signal_line(record))
    return sorted([*incident_lines(), *copies], key=lambda line: json.loads(line)["ts"])


@dataclass
class Console:
    url: str
    alerts: dict[str, set[str]]
    """Alert ids per site, as the store holds them."""

    def get(self, token: str, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"authorization": f"Bearer {token}"}, timeout=60)


@pytest.fixture(scope="module")
def console(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    workdir = tmp_path_factory.mktemp("scope")
    signals = workdir / "signals.jsonl"
    signals.write_text("\n".join(two_sites()) + "\n", encoding="utf-8")
    store = Store.open(f"chdb://{chdb_dir}?database={database_name('web_scope')}", ttl_days=TTL_DAYS)
    ruleset = load_rules(ROOT / "rules")
    replay(str(signals), ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    alerts: dict[str, set[str]] = {}
    for site, alert_id in store.query("SELECT DISTINCT site, alert_id FROM alerts").result_rows:
        alerts.setdefault(site, set()).add(alert_id)
    assert set(alerts) == {SITE_A, SITE_B} and len(alerts[SITE_A]) == len(alerts[SITE_B]) >= 3
    users = workdir / "users.yaml"
    users.write_text(
        f"users:\n  - name: alice\n    token_sha256: {hash_of(ALICE)}\n    sites: ['shop-*']\n"
        f"  - name: admin\n    token_sha256: {hash_of(ADMIN)}\n    sites: ['*']\n", encoding="utf-8",
    )
    config = ConsoleConfig(store=store, ruleset=ruleset, store_dsn="chdb://store", authenticate=SignIn(load_users(users), b"s" * 32))
    with serving(config) as url:
        yield Console(url, alerts)


def hash_of(token: str) -> str:
    from web.users import hash_token

    return hash_token(token)


def assert_no_trace_of_b(console: Console, response: httpx.Response, asked: str = "") -> None:
    """Nothing in ``response`` names site B, its component, or one of its alerts (but what was ``asked``, echoed)."""
    for mark in (SITE_B, B_MARK, *console.alerts[SITE_B]):
        assert mark == asked or mark not in response.text, (response.request.url, mark)


def same_but_viewer(alice: httpx.Response, admin: httpx.Response) -> None:
    """Two answers about site A alone, equal but for the name in the page header (and what the reads cost)."""
    assert alice.status_code == admin.status_code == 200
    if alice.headers["content-type"].startswith("application/json"):
        assert {**alice.json(), "reads": None} == {**admin.json(), "reads": None}
    else:
        assert alice.text.replace('<span class="who">alice</span>', "") == admin.text.replace('<span class="who">admin</span>', "")


def row_ids(html: str) -> set[str]:
    return set(re.findall(r'<tr[^>]* data-alert-id="([0-9a-f]{32})"', html))


def test_another_sites_alert_is_not_found_in_the_page_and_the_api(console: Console) -> None:
    for alert_id in console.alerts[SITE_B]:
        for path in (f"/alerts/{alert_id}", f"/api/alerts/{alert_id}"):
            hidden = console.get(ALICE, path)
            assert hidden.status_code == 404, path
            assert_no_trace_of_b(console, hidden, asked=alert_id)
            assert console.get(ADMIN, path).status_code == 200
        unknown = console.get(ALICE, f"/alerts/{'0' * 32}")  # the same answer as for an alert that never was
        assert re.sub(r"[0-9a-f]{32}", "ID", hidden_page := console.get(ALICE, f"/alerts/{alert_id}").text) == \
            re.sub(r"[0-9a-f]{32}", "ID", unknown.text), hidden_page
    for alert_id in console.alerts[SITE_A]:
        same_but_viewer(console.get(ALICE, f"/alerts/{alert_id}"), console.get(ADMIN, f"/alerts/{alert_id}"))
        same_but_viewer(console.get(ALICE, f"/api/alerts/{alert_id}"), console.get(ADMIN, f"/api/alerts/{alert_id}"))


def test_the_alert_page_of_an_own_alert_shows_signal_values_as_text(console: Console) -> None:
    pages = [console.get(ALICE, f"/alerts/{alert_id}").text for alert_id in console.alerts[SITE_A]]
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in page for page in pages)
    assert not any(XSS in page for page in pages)


def test_the_alert_list_and_its_api_hold_only_the_users_sites(console: Console) -> None:
    alice, admin = console.get(ALICE, "/alerts"), console.get(ADMIN, "/alerts")
    assert row_ids(alice.text) == console.alerts[SITE_A]
    assert row_ids(admin.text) == console.alerts[SITE_A] | console.alerts[SITE_B]
    assert_no_trace_of_b(console, alice)
    api = console.get(ALICE, "/api/alerts")
    assert {row["alert_id"] for row in api.json()["alerts"]} == console.alerts[SITE_A]
    assert_no_trace_of_b(console, api)
    for asked in (f"site={SITE_B}", "site=blog-*", "site=b", f"rule=php-fatal-spike&site={SITE_B}"):
        filtered = console.get(ALICE, f"/alerts?{asked}")
        assert row_ids(filtered.text) == set(), asked
        assert_no_trace_of_b(console, filtered, asked=SITE_B)  # the filter form shows what was typed
        assert_no_trace_of_b(console, console.get(ALICE, f"/api/alerts?{asked}"), asked=SITE_B)


def test_another_site_is_not_found_and_an_own_site_shows_only_itself(console: Console) -> None:
    for path in (f"/sites/{SITE_B}", f"/api/sites/{SITE_B}"):
        hidden = console.get(ALICE, path)
        assert hidden.status_code == 404 and console.get(ADMIN, path).status_code == 200
        assert_no_trace_of_b(console, hidden, asked=SITE_B)
    own = console.get(ALICE, f"/sites/{SITE_A}")
    assert '<div id="site-chart"' in own.text or 'id="site-chart"' in own.text
    same_but_viewer(own, console.get(ADMIN, f"/sites/{SITE_A}"))
    same_but_viewer(console.get(ALICE, f"/api/sites/{SITE_A}"), console.get(ADMIN, f"/api/sites/{SITE_A}"))


def test_rule_counts_leave_out_other_sites(console: Console) -> None:
    alice, admin = console.get(ALICE, "/api/rules").json()["rules"], console.get(ADMIN, "/api/rules").json()["rules"]
    counted = {rule["id"]: (rule["fired"], rule["notifications"]) for rule in alice}
    doubled = {rule["id"]: (rule["fired"], rule["notifications"]) for rule in admin}
    assert sum(fired for fired, _ in counted.values()) == len(console.alerts[SITE_A])
    assert doubled == {rule: (2 * fired, 2 * sent) for rule, (fired, sent) in counted.items()}  # B is a copy of A
    page = console.get(ALICE, "/rules")
    assert_no_trace_of_b(console, page)
    for rule, (fired, sent) in counted.items():
        row = re.search(rf'<tr[^>]* data-rule-id="{re.escape(rule)}".*?</tr>', page.text, re.S)
        assert row is not None, rule
        assert re.search(rf'class="[^"]*\bfired\b[^"]*"[^>]*>\s*{fired}\s*<', row.group(0)), (rule, row.group(0))
        assert re.search(rf'class="[^"]*\bnotifications\b[^"]*"[^>]*>\s*{sent}\s*<', row.group(0)), (rule, row.group(0))


def test_nothing_alice_can_reach_names_site_b(console: Console) -> None:
    paths = ["/", "/alerts", "/api/alerts", "/rules", "/api/rules", f"/sites/{SITE_A}", f"/api/sites/{SITE_A}",
             "/alerts?status=firing", "/alerts?since=30d", "/login"]
    paths += [f"/alerts/{alert_id}" for alert_id in console.alerts[SITE_A]]
    for path in paths:
        answer = console.get(ALICE, path)
        assert answer.status_code in (200, 303, 307), (path, answer.status_code)
        assert_no_trace_of_b(console, answer)
        assert_secured(answer)
