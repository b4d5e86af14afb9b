"""The console in a real browser: Debian's Chromium, headless, driven by Playwright (tests/support/browser.py).

One replay of the demo day (plus one site whose signal carries an XSS payload) is stored by real
``logystera`` processes, once for the module: ``replay`` into a chDB directory, then ``deliver`` of one
notification to a loopback webhook receiver that answers 500 once and then accepts, then ``logystera
web --users`` over that directory. The tests open what a person would open and check what they would
see, through the DOM hooks of the console (docs/web.md): every notification's link, the delivery
attempts, the list's filters, the error pages, the payload shown as text, and a user of one site who
finds no trace of another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from schemas.rule_loader import load_rules
from simulate.scenario import write_scenario
from sinks.clickhouse import RetryPolicy, Store, parse_dsn
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import LOGYSTERA, LogysteraProcess
from tests.support.receivers import Reply, WebhookReceiver, refused_url
from tests.web.console import serving
from web.app import ConsoleConfig
from web.sentence import condition_sentence
from web.users import hash_token

pytestmark = [pytest.mark.process, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "rules"
SECRET = "whsec_dGhlLWJyb3dzZXItdGVzdHMtd2ViaG9vay1zZWNyZXQ="
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
XSS_SITE = "xss-lab"
XSS_SIGNAL = {"v": 1, "id": "01M8XSSXSSXSSXSSXSSXSSXSS0", "site": XSS_SITE, "type": "config_change", "ts": "2026-11-28T12:00:00.000Z",
              "seq": 1, "data": {"option": XSS, "sensitive": True}}
DELIVERED_RULE = "php-fatal-spike"
ADMIN_TOKEN, ALICE_TOKEN = "token-of-the-admin-who-sees-every-site", "token-of-alice-who-sees-shop-eu-only"
ALICE_SITE, OTHER_SITE = "shop-eu", "blog-us"
CHANNELS = """channels:
  - name: oncall
    type: webhook
    url_env: ONCALL_URL
    secret_env: ONCALL_SECRET
    send_resolved: true
"""
TIMEOUT_S = 180.0


@dataclass
class Day:
    """The stored day: its notification records (as replay wrote them), and the console serving it."""

    base: str
    records: list[dict[str, Any]]
    delivered: dict[str, Any]
    """The notification ``deliver`` sent (500, then accepted)."""

    @property
    def by_alert(self) -> dict[str, list[dict[str, Any]]]:
        """Every notification of each alert, by seq."""
        alerts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.records:
            alerts[record["alert_id"]].append(record)
        return {alert_id: sorted(records, key=lambda r: r["seq"]) for alert_id, records in alerts.items()}

    def alert_ids(self, **where: Any) -> set[str]:
        """The alerts having a notification with these field values."""
        return {r["alert_id"] for r in self.records if all(r[name] == value for name, value in where.items())}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert LOGYSTERA is not None
    result = subprocess.run([LOGYSTERA, *args], capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT_S, check=False,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"logystera {args[0]}: {result.stderr}"
    return result


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    directory = tmp_path_factory.mktemp("browser")
    signals, alerts, store = directory / "day.jsonl", directory / "alerts.jsonl", f"chdb://{directory / 'store'}"
    write_scenario(signals)
    with open(signals, "a", encoding="utf-8") as lines:
        lines.write(json.dumps(XSS_SIGNAL) + "\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run("replay", str(signals), "--rules", str(RULES_DIR), "--store", store, "--link-base", base, "--out", str(alerts))
    records = [json.loads(line) for line in alerts.read_text(encoding="utf-8").splitlines()]

    [delivered] = [r for r in records if r["rule"]["id"] == DELIVERED_RULE and r["seq"] == 1]
    (directory / "one.jsonl").write_text(json.dumps(delivered) + "\n", encoding="utf-8")
    (directory / "channels").mkdir()
    (directory / "channels" / "channels.yaml").write_text(CHANNELS, encoding="utf-8")
    with WebhookReceiver(secret=SECRET) as hook:
        hook.answer(Reply(500, b"try again"))
        run("deliver", str(directory / "one.jsonl"), "--rules", str(directory / "channels"), "--store", store, "--backoff", "100ms",
            env={"ONCALL_URL": hook.url, "ONCALL_SECRET": SECRET})
        assert [seen.status for seen in hook.wait_for(2)] == [500, 204] and not hook.problems

    users = directory / "users.yaml"
    users.write_text("users:\n"
                     f"  - {{name: admin, token_sha256: {hash_token(ADMIN_TOKEN)}, sites: ['*']}}\n"
                     f"  - {{name: alice, token_sha256: {hash_token(ALICE_TOKEN)}, sites: [{ALICE_SITE}]}}\n", encoding="utf-8")
    web = LogysteraProcess(["web", "--store", store, "--rules", str(RULES_DIR), "--port", str(port), "--users", str(users)])
    try:
        wait_for(lambda: _healthy(base) or not web.running, "the console", timeout=60)
        assert web.running, web.output()
        yield Day(base, records, delivered)
    finally:
        code = web.stop(signal.SIGTERM)
    assert code == 0, web.output()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def signed_in(chromium: Browser, token: str) -> Iterator[Page]:
    context = chromium.new_context(extra_http_headers={"Authorization": f"Bearer {token}"})
    context.set_default_timeout(15_000)
    dialogs: list[str] = []
    context.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield context.new_page()
    finally:
        context.close()
    assert dialogs == [], f"a script ran in the console: {dialogs}"


@pytest.fixture
def admin(chromium: Browser) -> Iterator[Page]:
    """A page signed in (Bearer token) as a user who may see every site; fails the test if any script opens a dialog."""
    yield from signed_in(chromium, ADMIN_TOKEN)


def text(page: Page, selector: str) -> str:
    """The DOM text of the one element ``selector`` names (as written, not as CSS shows it)."""
    return page.locator(selector).text_content() or ""


def group_text(group: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in group.items()) or "whole site"


# -- every notification's link ------------------------------------------------------------------------


def test_the_link_of_every_notification_shows_its_alert(day: Day, admin: Page) -> None:
    rules = {rule.id: rule for rule in load_rules(RULES_DIR).rules}
    assert len(day.by_alert) > 10
    for alert_id, notifications in day.by_alert.items():
        first, last = notifications[0], notifications[-1]
        assert {n["link"] for n in notifications} == {f"{day.base}/alerts/{alert_id}"}
        response = admin.goto(first["link"])
        assert response is not None and response.status == 200, alert_id
        where = f"{first['rule']['id']} on {first['site']} ({alert_id})"
        assert text(admin, "h1#rule-title") == first["rule"]["title"], where
        assert text(admin, "#severity") == first["severity"], where
        assert f"sev-{first['severity']}" in (admin.locator("#severity").get_attribute("class") or ""), where
        assert text(admin, "#site") == first["site"], where
        assert text(admin, "#subsystem") == first["subsystem"], where
        assert text(admin, "#group") == group_text(first["group"]), where
        assert text(admin, "#condition").strip() == condition_sentence(rules[first["rule"]["id"]]).replace("`", ""), where
        assert admin.locator("#status").get_attribute("data-status") == last["status"], where

        seqs = admin.locator("#timeline tr[data-seq]").evaluate_all("rows => rows.map(row => row.dataset.seq)")
        assert seqs == [str(n["seq"]) for n in notifications], where
        evidence = set(admin.locator("#evidence [data-signal-id]").evaluate_all("items => items.map(i => i.dataset.signalId)"))
        assert evidence == {signal["id"] for n in notifications for signal in n["evidence"]}, where

        buckets = admin.locator("#chart svg [data-bucket]").evaluate_all(
            "items => items.map(i => [i.dataset.inEpisode === 'true', Number(i.dataset.count)])")
        assert any(inside and count > 0 for inside, count in buckets), f"{where}: no data point inside the episode"


def test_the_delivery_attempts_of_a_real_deliver_run_are_on_the_alert_page(day: Day, admin: Page) -> None:
    admin.goto(day.delivered["link"])
    rows = admin.locator("#deliveries tr[data-channel]")
    assert rows.count() == 2
    failed, accepted = admin.locator('#deliveries tr[data-channel="oncall"][data-attempt="1"]'), \
        admin.locator('#deliveries tr[data-channel="oncall"][data-attempt="2"]')
    assert "500" in (failed.text_content() or "") and "delivered" not in (failed.text_content() or "")
    assert "204" in (accepted.text_content() or "") and "delivered" in (accepted.text_content() or "")
    assert admin.locator("#deliveries .none").count() == 0

    [undelivered] = [r for r in day.records if r["site"] == ALICE_SITE and r["rule"]["id"] == "http-5xx-ratio" and r["seq"] == 1]
    admin.goto(undelivered["link"])
    assert admin.locator("#deliveries tr[data-channel]").count() == 0
    assert admin.locator("#deliveries .none").count() == 1


# -- the list and its filters ---------------------------------------------------------------------------


def listed(page: Page) -> set[str]:
    """The alert ids of the list's rows (each row links to its alert page)."""
    ids = page.locator("table#alerts tr[data-alert-id]").evaluate_all("rows => rows.map(row => row.dataset.alertId)")
    for alert_id in ids:
        assert page.locator(f'table#alerts tr[data-alert-id="{alert_id}"] a[href="/alerts/{alert_id}"]').count() == 1
    return set(ids)


def filter_by(page: Page, base: str, **fields: str) -> set[str]:
    """Fill the filter form as a person would, submit it, and read the list it leads to."""
    page.goto(f"{base}/alerts")
    form = page.locator("form#filters")
    for name, value in fields.items():
        if name in ("severity", "status"):
            form.locator(f'select[name="{name}"]').select_option(value)
        else:
            form.locator(f'input[name="{name}"]').fill(value)
    with page.expect_navigation():
        form.locator('button[type="submit"]').click()
    return listed(page)


def test_the_list_shows_every_alert_and_its_filters_narrow_it(day: Day, admin: Page) -> None:
    admin.goto(f"{day.base}/alerts")
    assert listed(admin) == set(day.by_alert)
    assert filter_by(admin, day.base, site=ALICE_SITE) == day.alert_ids(site=ALICE_SITE)
    stuffing = {r["alert_id"] for r in day.records if r["rule"]["id"] == "credential-stuffing"}
    assert filter_by(admin, day.base, rule="credential-stuffing") == stuffing
    assert filter_by(admin, day.base, severity="high", site=OTHER_SITE) == day.alert_ids(severity="high", site=OTHER_SITE)
    latest = {alert_id: notifications[-1]["status"] for alert_id, notifications in day.by_alert.items()}
    assert filter_by(admin, day.base, status="firing") == {a for a, status in latest.items() if status == "firing"}
    assert filter_by(admin, day.base, status="resolved") == {a for a, status in latest.items() if status == "resolved"}
    since, until = "2026-11-28T09:00:00Z", "2026-11-28T14:00:00Z"
    assert filter_by(admin, day.base, since=since, until=until) == {
        r["alert_id"] for r in day.records if since.replace("Z", ".000Z") <= r["evaluated_at"] < until.replace("Z", ".000Z")
    }


# -- errors and payloads ----------------------------------------------------------------------------------


def test_an_unknown_alert_is_the_404_page(day: Day, admin: Page) -> None:
    for path in ("/alerts/" + "0" * 32, "/alerts/not-an-id", "/no/such/page"):
        response = admin.goto(day.base + path)
        assert response is not None and response.status == 404, path
        assert admin.locator('#error[data-status="404"]').count() == 1, path


def test_a_store_that_does_not_answer_is_the_503_page(page: Page) -> None:
    store = Store(parse_dsn(refused_url("/logystera").replace("http://", "http://user:password@")), retry=RetryPolicy(give_up_after=0))
    config = ConsoleConfig(store=store, ruleset=load_rules(RULES_DIR), store_dsn="http://127.0.0.1/logystera", rules_dir=str(RULES_DIR))
    with serving(config) as base:
        for path in ("/alerts", "/alerts/" + "0" * 32, "/rules"):
            response = page.goto(base + path)
            assert response is not None and response.status == 503, path
            assert page.locator('#error[data-status="503"]').count() == 1, path


def test_a_script_in_a_signal_field_is_shown_as_text(day: Day, admin: Page) -> None:
    [alert_id] = day.alert_ids(site=XSS_SITE)
    admin.goto(f"{day.base}/alerts/{alert_id}")
    assert text(admin, "#group") == f"option={XSS}"
    assert XSS in text(admin, f'#evidence [data-signal-id="{XSS_SIGNAL["id"]}"]')
    assert admin.locator("script, img[src='x']").count() == 0
    filter_by(admin, day.base, site=XSS_SITE)
    assert XSS in text(admin, f'table#alerts tr[data-alert-id="{alert_id}"]')
    assert admin.locator("script, img[src='x']").count() == 0


# -- a user of one site -------------------------------------------------------------------------------------


def test_a_user_of_one_site_signs_in_and_finds_no_trace_of_another(day: Day, page: Page) -> None:
    page.goto(f"{day.base}/alerts")
    page.locator("form#login").wait_for()
    page.locator('form#login input[name="token"]').fill(ALICE_TOKEN)
    with page.expect_navigation():
        page.locator("form#login").locator("button").click()
    assert text(page, ".who") == "alice"

    mine, others = day.alert_ids(site=ALICE_SITE), set(day.by_alert) - day.alert_ids(site=ALICE_SITE)
    page.goto(f"{day.base}/alerts")
    assert listed(page) == mine
    for path in ("/alerts", "/", "/rules", f"/sites/{ALICE_SITE}", "/api/alerts", "/api/rules", f"/api/sites/{ALICE_SITE}"):
        page.goto(day.base + path)
        content = page.content()
        assert OTHER_SITE not in content and XSS_SITE not in content, path
        assert not any(alert_id in content for alert_id in others), path
    page.goto(f"{day.base}/alerts?site={OTHER_SITE}")
    assert listed(page) == set()
    assert not any(alert_id in page.content() for alert_id in others)

    page.goto(f"{day.base}/rules")
    for rule_id in page.locator("table#rules tr[data-rule-id]").evaluate_all("rows => rows.map(row => row.dataset.ruleId)"):
        row = f'table#rules tr[data-rule-id="{rule_id}"]'
        fired = {r["alert_id"] for r in day.records if r["site"] == ALICE_SITE and r["rule"]["id"] == rule_id}
        notified = [r for r in day.records if r["site"] == ALICE_SITE and r["rule"]["id"] == rule_id]
        assert (text(page, f"{row} .fired"), text(page, f"{row} .notifications")) == (str(len(fired)), str(len(notified))), rule_id

    page.goto(f"{day.base}/sites/{ALICE_SITE}")
    assert page.locator("#site-chart svg").count() == 1
    for alert_id in list(others)[:3]:
        response = page.goto(f"{day.base}/alerts/{alert_id}")
        assert response is not None and response.status in (403, 404)
        assert page.locator("#error").get_attribute("data-status") in ("403", "404")
        assert OTHER_SITE not in page.content()
    response = page.goto(f"{day.base}/sites/{OTHER_SITE}")
    assert response is not None and response.status in (403, 404)
