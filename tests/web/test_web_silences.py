"""Silences in the console: ``/silences``, ``/api/silences`` and the holds on the alert page, scoped to the viewer's sites.

A real replay writes the alerts of two sites (``shop-eu`` and ``blog-b``, tests/web/test_web_scope.py) into an
embedded store; silences are written as ``logystera silence add`` writes them; then the real delivery service
(real silence cache, attempt log and loopback webhook receivers) delivers every notification, so the
``silenced``/``muted``/``inhibited`` rows are the ones ``deliver`` records. Alice may see ``shop-*``; the admin
sees everything (the checks on alice are not vacuous: the admin's answers hold what alice's must not).
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from delivery.attempt_log import AttemptLog
from delivery.channels import open_sender
from delivery.holds import HoldPolicy, Silence
from delivery.schedule import DeliveryPolicy
from delivery.service import DeliveryService
from delivery.silences import SilenceCache, new_silence, write_silence
from flows.replay import replay
from schemas.alerts import parse_notification
from schemas.matchers import parse_matcher
from schemas.rule_loader import load_rules
from schemas.rules import InhibitRule, MuteTime, WebhookChannel
from sinks.clickhouse import Store
from tests.support.incidents import SITE as SITE_A
from tests.support.incidents import XSS
from tests.support.receivers import WebhookReceiver
from tests.support.store import TTL_DAYS, database_name
from tests.web.console import assert_secured, console_client
from tests.web.test_web_scope import SITE_B, two_sites
from web.access import EVERYONE, Viewer
from web.app import ConsoleConfig

RULES = Path(__file__).resolve().parents[2] / "rules"
ALICE = Viewer(name="alice", sites=("shop-*",))
HOUR = 3_600_000
SECRET = "whsec_" + base64.b64encode(b"console-silences-test-secret-32b").decode()
ENV = {"HOOK_SECRET": SECRET}


def webhook(name: str, url: str) -> WebhookChannel:
    return WebhookChannel.model_validate({"name": name, "type": "webhook", "url": url, "secret_env": "HOOK_SECRET",
                                         "send_resolved": True, "rate_limit": {"per": "1m", "max": 60}})


@dataclass
class Filled:
    store: Store
    silences: dict[str, Silence]
    """By letter: A shop-eu php (expired after delivery, XSS comment), B blog-b, C every site's 5xx, D pending shop-*, F blog-b backups."""
    alerts: dict[tuple[str, str], list[str]]
    """Alert ids per (site, rule), in notification order."""


def _silence(*matchers: str, by: str, comment: str, at: int, starts: int = 0) -> Silence:
    return new_silence(uuid.uuid4().hex, [parse_matcher(m) for m in matchers], at + starts, at + starts + HOUR, by, comment, at)


def _deliver(store: Store, records: list[str], oncall: str, mail: str) -> None:
    """Every notification through the delivery service, with ops-mail always muted and config changes inhibited by 5xx."""
    always = MuteTime.model_validate({"name": "always", "intervals": [{}]})
    inhibit = InhibitRule.model_validate({"name": "5xx-hides-config", "source": ["rule=http-5xx-ratio"],
                                          "target": ["rule=sensitive-config-changed"], "equal": ["site"]})
    holds = HoldPolicy([always], {"ops-mail": ["always"]}, inhibit=[inhibit])
    received = [parse_notification(line) for line in records]

    async def go() -> None:
        cache = SilenceCache(store, holds, interval=60)
        service = DeliveryService([open_sender(webhook("oncall", oncall), ENV), open_sender(webhook("ops-mail", mail), ENV)],
                                  AttemptLog(store, interval=0.02), DeliveryPolicy(max_attempts=3, backoff_base=0.02),
                                  holds=holds, silences=cache)
        await cache.refresh()
        service.start()
        try:
            await service.guarded(service.submit([(record, None) for record in received]))  # type: ignore[misc]
            await service.drain()
        finally:
            await service.stop(grace=5.0)

    asyncio.run(go())


@pytest.fixture(scope="module")
def filled(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Filled:
    signals = tmp_path_factory.mktemp("silences") / "signals.jsonl"
    signals.write_text("\n".join(two_sites()) + "\n", encoding="utf-8")
    store = Store.open(f"chdb://{chdb_dir}?database={database_name('web_silences')}", ttl_days=TTL_DAYS)
    ruleset = load_rules(RULES)
    records = replay(str(signals), ruleset.enabled_rules, store=store, metrics=ruleset.metrics).alerts
    now = round(time.time() * 1000)
    made = {  # created one millisecond apart: deliver checks the newest first, so C holds blog-b's 5xx before B does
        "A": _silence(f"site={SITE_A}", "rule=php-fatal-spike", by="alice", comment=f"PHP 8.4 {XSS}", at=now),
        "B": _silence(f"site={SITE_B}", by="bob", comment="blog-b migration", at=now + 1),
        "F": _silence(f"site={SITE_B}", "rule=backup-missed", by="bob", comment="blog-b backups moved", at=now + 2),
        "C": _silence("rule=http-5xx-ratio", by="carol", comment="known 5xx", at=now + 3),
        "D": _silence("site=~shop-.*", by="dora", comment="next week's upgrade", at=now + 4, starts=HOUR),
    }
    for silence in made.values():
        write_silence(store, silence)
    with WebhookReceiver(secret=SECRET) as oncall, WebhookReceiver(secret=SECRET) as mail:
        _deliver(store, records, oncall.url, mail.url)
    a = made["A"]
    ended = round(time.time() * 1000)
    made["A"] = Silence(a.id, a.matchers, a.starts_at, ended, a.created_by, a.comment, a.created_at, ended, "dave")
    write_silence(store, made["A"])  # as `silence expire` does
    alerts: dict[tuple[str, str], list[str]] = {}
    for line in records:
        record = json.loads(line)
        ids = alerts.setdefault((record["site"], record["rule"]["id"]), [])
        if record["alert_id"] not in ids:
            ids.append(record["alert_id"])
    return Filled(store, made, alerts)


@pytest.fixture(scope="module")
def clients(filled: Filled) -> Iterator[dict[str, httpx.Client]]:
    with ExitStack() as stack:
        found = {}
        for viewer in (ALICE, EVERYONE):
            async def who(request: Request, viewer: Viewer = viewer) -> Viewer:
                return viewer

            config = ConsoleConfig(store=filled.store, ruleset=load_rules(RULES), store_dsn="chdb://store", authenticate=who)
            found[viewer.name] = stack.enter_context(console_client(config))
        yield found


def listed(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in answer["silences"]}


def test_the_admin_sees_every_silence_with_its_state_and_everything_it_held(clients: dict[str, httpx.Client], filled: Filled) -> None:
    response = clients["local"].get("/api/silences")
    assert response.status_code == 200
    found = listed(response.json())
    ids = {letter: silence.id for letter, silence in filled.silences.items()}
    assert set(found) == set(ids.values())
    assert {letter: found[ids[letter]]["state"] for letter in ids} == {
        "A": "expired", "B": "active", "F": "active", "C": "active", "D": "pending"}
    assert found[ids["A"]]["expired_by"] == "dave" and found[ids["B"]]["expired_by"] is None
    php = filled.alerts[(SITE_A, "php-fatal-spike")]
    assert [(h["alert_id"], h["seq"], h["channel"]) for h in found[ids["A"]]["held"]] == [(php[0], 2, "oncall"), (php[0], 1, "oncall")]
    assert found[ids["C"]]["held_count"] == 4  # firing and resolved, both sites
    assert {h["site"] for h in found[ids["C"]]["held"]} == {SITE_A, SITE_B}
    assert found[ids["B"]]["held_count"] > 0 and {h["site"] for h in found[ids["B"]]["held"]} == {SITE_B}
    assert found[ids["D"]]["held_count"] == found[ids["F"]]["held_count"] == 0


def test_a_viewer_of_one_site_sees_only_what_concerns_it(clients: dict[str, httpx.Client], filled: Filled) -> None:
    ids = {letter: silence.id for letter, silence in filled.silences.items()}
    api = clients["alice"].get("/api/silences")
    found = listed(api.json())
    # A and C held shop-eu notifications; D can match shop-eu; B and F name only blog-b and held nothing of alice's.
    assert set(found) == {ids["A"], ids["C"], ids["D"]}
    assert found[ids["C"]]["held_count"] == 2 and {h["site"] for h in found[ids["C"]]["held"]} == {SITE_A}
    page = clients["alice"].get("/silences")
    assert page.status_code == 200
    assert_secured(page)
    blog_alerts = [alert_id for (site, _), alert_ids in filled.alerts.items() if site == SITE_B for alert_id in alert_ids]
    for answer in (api, page):
        for mark in (SITE_B, ids["B"], ids["F"], "blog-b migration", *blog_alerts):
            assert mark not in answer.text, mark
    rows = re.findall(r'<tr id="([0-9a-f]{32})" data-silence-id="\1" data-state="(\w+)"', page.text)
    assert rows == [(ids["D"], "pending"), (ids["C"], "active"), (ids["A"], "expired")]
    admin = clients["local"].get("/silences").text
    assert SITE_B in admin and ids["B"] in admin and "blog-b migration" in admin  # the checks above are not vacuous


def test_a_silence_comment_is_shown_as_text(clients: dict[str, httpx.Client], filled: Filled) -> None:
    page = clients["alice"].get("/silences").text
    assert XSS not in page and html.escape(XSS, quote=False) in page
    assert "expired by dave" in page


def test_the_alert_page_says_which_silence_held_it_with_who_why_and_until(clients: dict[str, httpx.Client], filled: Filled) -> None:
    silence = filled.silences["A"]
    alert_id = filled.alerts[(SITE_A, "php-fatal-spike")][0]
    response = clients["alice"].get(f"/alerts/{alert_id}")
    assert response.status_code == 200
    assert_secured(response)
    line = re.search(r'<p id="silenced">(.*?)</p>', response.text, re.DOTALL)
    assert line is not None
    text = html.unescape(re.sub(r"<[^>]+>", "", line.group(1)))
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(silence.ends_at / 1000))
    assert text == (f"silenced by {silence.id} (alice: PHP 8.4 {XSS}) until {end}, expired early by dave "
                    "— seq 1 on oncall, seq 2 on oncall")
    assert f'href="/silences#{silence.id}"' in line.group(1) and XSS not in response.text
    holds = clients["alice"].get(f"/api/alerts/{alert_id}").json()["holds"]
    assert [h["id"] for h in holds["silenced"]] == [silence.id] and holds["muted"] == holds["inhibited"] == []
    other = clients["alice"].get(f"/alerts/{filled.alerts[(SITE_A, 'integration-silent')][0]}").text
    assert 'id="holds"' not in other


def test_muted_and_inhibited_notifications_are_said_in_words_with_the_inhibiting_alert(
    clients: dict[str, httpx.Client], filled: Filled,
) -> None:
    first, second = filled.alerts[(SITE_A, "sensitive-config-changed")]
    source = filled.alerts[(SITE_A, "http-5xx-ratio")][0]
    page = clients["alice"].get(f"/alerts/{second}").text
    muted = re.search(r'<p id="muted">(.*?)</p>', page, re.DOTALL)
    inhibited = re.search(r'<p id="inhibited">(.*?)</p>', page, re.DOTALL)
    assert muted is not None and inhibited is not None
    assert re.sub(r"<[^>]+>", "", muted.group(1)) == "muted by the maintenance window always — seq 1 on ops-mail"
    assert re.sub(r"<[^>]+>", "", inhibited.group(1)) == (
        f"inhibited by alert {source} (http-5xx-ratio, firing) — seq 1 on oncall")
    assert f'<a class="mono" href="/alerts/{source}">' in inhibited.group(1)
    assert 'id="inhibited"' not in clients["alice"].get(f"/alerts/{first}").text  # 10:10, before the 5xx fired
