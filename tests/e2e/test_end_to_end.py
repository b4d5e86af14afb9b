"""The whole live path on real processes over loopback: dispatcher → gateway → Tansu → detect → alerts.

A scripted incident on three registered sites (rules: ``tests/e2e/rules``,
short windows; the gateway ticks every second)::

    shop-a   five failed logins at once        → login-failure-burst fires on the fifth, and is
                                                  resolved by a tick once its 4 s window has passed
    shop-b   "nightly-backup finished", then    → job-stopped (absence, 3 s) fires on a tick
             nothing more
    shop-c   nothing                            → ticks only, no notification

What ``alerts`` holds at the end must be exactly what ``replay`` of the
records on ``signals`` gives (same bytes): the live flow decided on what was
written, nothing else. Those notifications are then checked against what the
records say the engine must have seen: each one's ``evaluated_at`` is the
site's clock (largest ``ts`` so far) at the record that made it, and for the
resolution and the absence that record is a tick.

The same incident again with detect killed (SIGKILL) once its first
notification is out, and restarted on its recovery directory: the same set,
every repeated notification byte-identical.
"""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from flows.replay import replay
from schemas.rule_loader import load_rules
from schemas.timestamps import format_ts, parse_ts
from tests.support.kafka_broker import Broker
from tests.support.processes import LivePath, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.process, pytest.mark.slow]

RULES = Path(__file__).parent / "rules"
SITES = ("shop-a", "shop-b", "shop-c")
IDENTITY_KEY = "e2e-identity-key"
JOB = "nightly-backup"
RULESET = {rule.id: rule for rule in load_rules(RULES).enabled_rules}
BURST_WINDOW_MS = RULESET["login-failure-burst"].threshold.window  # type: ignore[union-attr]
SILENCE_MS = RULESET["job-stopped"].absence.after  # type: ignore[union-attr]


def replayed(lines: list[str], workdir: Path) -> list[str]:
    """The notifications ``replay`` gives for ``lines`` (a site's records stay in their topic order)."""
    path = workdir / "signals-topic.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    result = replay(str(path), list(RULESET.values()))
    assert not result.rejects
    return result.alerts


def episodes(alerts: list[str]) -> set[tuple[str, int]]:
    """The distinct notifications among ``alerts``: (alert_id, seq)."""
    return {(body["alert_id"], body["seq"]) for body in map(json.loads, alerts)}


class SiteTimeline:
    """The records one (site, rule) sees, in topic order — signals of ``types`` and the site's ticks — with its clock."""

    def __init__(self, records: list[dict[str, Any]], site: str, types: set[str]) -> None:
        self.records = [r for r in records if r["site"] == site and r["type"] in types | {"tick"}]
        self.clocks: list[int] = []
        for record in self.records:
            self.clocks.append(max(parse_ts(record["ts"]), self.clocks[-1] if self.clocks else 0))

    def index(self, signal_id: str) -> int:
        """Position of the record with this id."""
        return next(i for i, record in enumerate(self.records) if record["id"] == signal_id)

    def first_at(self, after: int, clock_ms: int) -> int:
        """Position of the first record after ``after`` at which the clock has reached ``clock_ms``."""
        return next(i for i in range(after + 1, len(self.records)) if self.clocks[i] >= clock_ms)


def check_the_incident(notifications: list[str], lines: list[str], failures: list[dict[str, Any]], job: dict[str, Any]) -> None:
    """The three notifications the incident must give, each at the clock of the record that made it."""
    records = [json.loads(line) for line in lines]
    got = {(n["rule"]["id"], n["status"]): n for n in map(json.loads, notifications)}
    assert sorted((rule, status, n["site"], n["group"], n["seq"]) for (rule, status), n in got.items()) == [
        ("job-stopped", "firing", "shop-b", {"job": JOB}, 1),
        ("login-failure-burst", "firing", "shop-a", {}, 1),
        ("login-failure-burst", "resolved", "shop-a", {}, 2),
    ]

    logins = SiteTimeline(records, "shop-a", {"auth"})
    fifth = max(logins.index(failure["id"]) for failure in failures)
    fired = got["login-failure-burst", "firing"]
    assert fired["evaluated_at"] == fired["started_at"] == format_ts(logins.clocks[fifth])
    assert fired["value"] == {"count": 5} and sorted(fired["evidence"], key=lambda s: s["id"]) == sorted(failures, key=lambda s: s["id"])
    # The window empties once the clock is BURST_WINDOW_MS past the oldest failure; only ticks come after the burst.
    emptied = logins.first_at(fifth, min(parse_ts(f["ts"]) for f in failures) + BURST_WINDOW_MS)
    assert logins.records[emptied]["type"] == "tick"
    resolved = got["login-failure-burst", "resolved"]
    assert resolved["evaluated_at"] == resolved["ended_at"] == format_ts(logins.clocks[emptied])
    left = sum(parse_ts(f["ts"]) > logins.clocks[emptied] - BURST_WINDOW_MS for f in failures)
    assert (resolved["alert_id"], resolved["started_at"], resolved["value"]) == (fired["alert_id"], fired["started_at"], {"count": left})

    jobs = SiteTimeline(records, "shop-b", {"cron"})
    reported = jobs.index(job["id"])
    silent = jobs.first_at(reported, parse_ts(job["ts"]) + SILENCE_MS)
    assert jobs.records[silent]["type"] == "tick"
    absent = got["job-stopped", "firing"]
    assert absent["evaluated_at"] == absent["started_at"] == format_ts(jobs.clocks[silent])
    assert absent["value"] == {"last_seen_at": job["ts"], "silent_for_s": round((jobs.clocks[silent] - parse_ts(job["ts"])) / 1000, 3)}
    assert absent["evidence"] == [job]
    assert any(r["site"] == "shop-c" and r["type"] == "tick" for r in records)  # ticked, and nothing to say


@pytest.mark.parametrize("crash", [False, True], ids=["clean", "detect-killed-and-restarted"])
def test_a_scripted_incident_reaches_alerts_exactly_as_replay_of_the_signals_topic_decides(
    broker: Broker, tmp_path: Path, crash: bool
) -> None:
    with LivePath(broker, tmp_path, SITES) as live:
        options = ["--epoch-interval", "1s", *(["--recovery-dir", str(tmp_path / "recovery")] if crash else [])]
        detect = live.detect(RULES, *options)
        shop_a, shop_b = live.dispatcher("shop-a"), live.dispatcher("shop-b")
        job = shop_b.signals(IDENTITY_KEY).cron(JOB, "finished", duration_ms=1200)
        assert shop_b.emit(job)
        logins = shop_a.signals(IDENTITY_KEY)
        failures = [logins.auth("failure", "password", user=f"user-{n}", ip="203.0.113.7") for n in range(5)]
        assert all(shop_a.emit(failure) for failure in failures)
        if crash:
            wait_for(live.alerts, "a first notification")
            assert detect.stop(signal.SIGKILL) == -signal.SIGKILL
            detect = live.detect(RULES, *options)
        wait_for(lambda: len(episodes(live.alerts())) >= 3, "three notifications")

        # The sites stop (delivering what they hold), then the gateway: from here on `signals` stays as it is.
        assert shop_a.stop(10) and shop_b.stop(10)
        assert live.gateway.stop() == 0, live.gateway.output()  # a graceful stop is an ordinary exit
        lines = live.signal_lines()
        expected = replayed(lines, tmp_path)
        wait_for(lambda: set(live.alerts()) == set(expected), "detect's notifications equal to replay's")
        assert detect.stop() == 0, detect.output()
        emitted = live.alerts()

    if crash:
        versions: dict[tuple[str, int], set[str]] = defaultdict(set)
        for text in emitted:
            body = json.loads(text)
            versions[body["alert_id"], body["seq"]].add(text)
        assert all(len(texts) == 1 for texts in versions.values()), "a notification was emitted again with other bytes"
    else:
        assert sorted(emitted) == sorted(expected)  # each exactly once
    assert set(emitted) == set(expected)
    check_the_incident(expected, lines, failures, job)
