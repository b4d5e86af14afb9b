"""The demo: the simulated day through the real flow with the default rules.

One run of ``run_demo`` (module fixture) feeds most tests; the incident table
in :mod:`simulate.scenario` is the expectation: every incident fires its rules
on its site, and nothing else fires anywhere.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from cli.demo import Console, run_demo
from flows.replay import replay
from schemas.records import parse_record
from schemas.rule_loader import load_rules
from schemas.timestamps import format_ts, parse_ts
from simulate.scenario import (
    ATTACK_SOURCE,
    BACKGROUND_ONLY_SITES,
    INCIDENTS,
    SITES,
    generate_day,
    write_scenario,
)

pytestmark = pytest.mark.slow

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


class DemoRun:
    def __init__(self, directory: Path, code: int, output: str) -> None:
        self.directory = directory
        self.code = code
        self.output = output
        self.alerts: list[dict[str, Any]] = [
            json.loads(line) for line in (directory / "alerts.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        self.firing = [a for a in self.alerts if a["status"] == "firing" and a["seq"] == 1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    directory = tmp_path_factory.mktemp("demo")
    stream = io.StringIO()
    code = run_demo(directory, workers=1, console=Console(stream))
    return DemoRun(directory, code, stream.getvalue())


@pytest.fixture(scope="module")
def signals(demo: DemoRun) -> list[dict[str, Any]]:
    with open(demo.directory / "signals.jsonl", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def test_demo_writes_both_files_and_says_where(demo: DemoRun) -> None:
    assert demo.code == 0
    signals_path = demo.directory / "signals.jsonl"
    alerts_path = demo.directory / "alerts.jsonl"
    assert signals_path.stat().st_size > 0
    assert alerts_path.stat().st_size > 0
    assert f"Signals: {signals_path}" in demo.output
    assert f"Alerts:  {alerts_path}" in demo.output


def test_default_rule_pack_is_what_the_demo_ran() -> None:
    ids = {rule.id for rule in load_rules(RULES_DIR).enabled_rules}
    expected = {rule for incident in INCIDENTS for rule in incident.rules}
    assert expected <= ids, f"rules the scenario targets are missing from rules/: {sorted(expected - ids)}"


def test_scenario_size_and_shape(signals: list[dict[str, Any]]) -> None:
    assert 100_000 <= len(signals) <= 250_000
    per_site = Counter(s["site"] for s in signals)
    assert set(per_site) == set(SITES)
    ticks = Counter(s["site"] for s in signals if s["type"] == "tick")
    assert ticks == {site: 8640 for site in SITES}  # one every 10 s, all day, every site
    heartbeats = Counter(s["site"] for s in signals if s["type"] == "integration" and s["data"]["event"] == "heartbeat")
    assert heartbeats == {site: 1440 for site in SITES}


def test_every_line_is_a_valid_signal_in_site_time_order(demo: DemoRun) -> None:
    last: dict[str, int] = defaultdict(int)
    seq: dict[str, int] = defaultdict(int)
    with open(demo.directory / "signals.jsonl", "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            record = parse_record(raw.rstrip(b"\n"), number)
            assert not isinstance(record, str), f"line {number}: {record}"
            assert record.ts >= last[record.site], f"line {number}: {record.site} goes back in time"
            last[record.site] = record.ts
            envelope = json.loads(raw)
            if record.type != "tick":
                assert envelope["seq"] == seq[record.site] + 1, f"line {number}: seq gap"
                seq[record.site] = envelope["seq"]
    assert "0 invalid, 0 late" in demo.output


def test_identities_travel_only_as_hashes_and_prefixes(signals: list[dict[str, Any]]) -> None:
    auth = [s["data"] for s in signals if s["type"] == "auth"]
    assert auth
    for data in auth:
        assert re.fullmatch(r"[0-9a-f]{64}", data["user_hash"])
        assert isinstance(data["user_len"], int)
        assert re.fullmatch(r"(\d+\.\d+\.\d+\.0/24|2001:db8:[0-9a-f]+::/48)", data["source"]), data["source"]


@pytest.mark.parametrize("incident", INCIDENTS, ids=[incident.name for incident in INCIDENTS])
def test_each_incident_fires_its_rules_on_its_site(demo: DemoRun, incident: Any) -> None:
    for rule_id in incident.rules:
        opened = [
            a for a in demo.firing
            if a["rule"]["id"] == rule_id and a["site"] == incident.site
            and incident.start <= parse_ts(a["started_at"]) <= incident.end
        ]
        assert opened, (
            f"{rule_id} did not fire on {incident.site} between {format_ts(incident.start)} and {format_ts(incident.end)}"
        )


def test_nothing_fires_that_no_incident_explains(demo: DemoRun) -> None:
    unexplained = [
        (a["site"], a["rule"]["id"], a["started_at"], a["summary"]) for a in demo.alerts
        if not any(
            a["site"] == i.site and a["rule"]["id"] in i.rules and i.start <= parse_ts(a["started_at"]) <= i.end
            for i in INCIDENTS
        )
    ]
    assert unexplained == []


def test_background_only_site_and_idle_rules_stay_quiet(demo: DemoRun, signals: list[dict[str, Any]]) -> None:
    assert BACKGROUND_ONLY_SITES == ("docs-site",)
    assert [a for a in demo.alerts if a["site"] == "docs-site"] == []
    # The background does contain what these rules watch, below their thresholds.
    connection_errors = [s for s in signals if s["type"] == "db_event" and s["data"]["kind"] == "connection_error"]
    assert len(connection_errors) == 2
    background_fatals = [
        s for s in signals if s["type"] == "php_error" and s["data"]["level"] == "fatal"
        and s["data"]["component"] != "plugin:checkout-express"
    ]
    assert {s["data"]["component"] for s in background_fatals} == {"core", "theme:magazine-pro"}
    fired = {a["rule"]["id"] for a in demo.alerts}
    assert not fired & {"db-connection-errors", "integration-silent", "integration-dropped-events"}
    # Background login failures, lockouts and 5xx exist too, and never add up to an alert.
    assert any(s["type"] == "auth" and s["data"]["outcome"] == "lockout" and s["site"] == "shop-eu" for s in signals)
    assert any(s["type"] == "request" and s["data"]["status"] >= 500 and s["site"] == "docs-site" for s in signals)


def test_alerts_name_the_culprits(demo: DemoRun) -> None:
    def groups(rule_id: str) -> list[dict[str, Any]]:
        return [a["group"] for a in demo.firing if a["rule"]["id"] == rule_id]

    assert groups("credential-stuffing") == [{"source": ATTACK_SOURCE}]
    assert groups("auth-behaviour-shifted") == [{"source": ATTACK_SOURCE}]
    assert groups("php-fatal-spike") == [{"component": "plugin:checkout-express"}]
    assert groups("cron-job-stopped") == [{"job": "agency_crm_sync"}]
    assert groups("mail-delivery-failing") == [{"transport": "smtp"}]
    assert sorted(g["option"] for g in groups("sensitive-config-changed")) == ["default_role", "users_can_register"]
    bursts = sorted((a["site"], a["value"]["count"]) for a in demo.firing if a["rule"]["id"] == "plugin-lifecycle-burst")
    assert bursts == [("agency-main", 7), ("shop-eu", 1), ("shop-eu", 1)]


def test_every_stateful_episode_resolves_by_the_end_of_the_day(demo: DemoRun) -> None:
    stateful = {a["alert_id"] for a in demo.firing if a["rule"]["kind"] != "match"}
    resolved = {a["alert_id"] for a in demo.alerts if a["status"] == "resolved"}
    assert stateful
    assert stateful == resolved


def test_alerts_are_shown_as_they_fire_with_progress_then_a_table(demo: DemoRun) -> None:
    output = demo.output
    table = output.index("Alerts (")
    live = output[:table]
    assert re.search(r"02:38:3\d  HIGH      blog-us       Credential stuffing from one source — 20 distinct", live)
    assert re.search(r"resolved  agency-main   A scheduled job has stopped running — Resolved", live)
    assert "100% read (" in live
    assert live.count("% read (") == 10  # plain lines, one per 10 %, when stdout is not a terminal
    rows = [line for line in output[table:].splitlines() if re.match(r"  \d\d:\d\d:\d\d  ", line)]
    assert len(rows) == len(demo.alerts)
    assert f"{len(demo.alerts)} notifications" in output


def test_scenario_generation_is_deterministic(tmp_path: Path, demo: DemoRun) -> None:
    # The demo generated the day once; a second generation must match it byte for byte.
    again = tmp_path / "again.jsonl"
    count = write_scenario(again)
    assert again.read_bytes() == (demo.directory / "signals.jsonl").read_bytes()
    assert again.read_bytes().count(b"\n") == count


def test_the_seed_matters() -> None:
    def head(seed: int) -> list[dict[str, Any]]:
        return list(itertools.islice(generate_day(seed), 5000))

    assert head(7) == head(7)
    assert head(7) != head(8)


def test_two_workers_give_byte_identical_alerts(demo: DemoRun) -> None:
    rules = load_rules(RULES_DIR).enabled_rules
    result = replay(str(demo.directory / "signals.jsonl"), rules, workers=2)
    assert "\n".join(result.alerts) + "\n" == (demo.directory / "alerts.jsonl").read_text(encoding="utf-8")
