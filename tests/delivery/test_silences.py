"""Silences, mute times and inhibition applied by the delivery service: real chDB store, real loopback receivers.

The service runs in this process's event loop (a chDB directory is one
process's), so a silence can be written while it runs, exactly as
``logystera silence add`` writes it. Waiting is on the service's own
counters (the silence cache's completed reads), never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from delivery.attempt_log import AttemptLog
from delivery.channels import open_sender
from delivery.command import hold_policy
from delivery.holds import INHIBITED, MUTED, SILENCED, HoldPolicy, Silence
from delivery.metrics import DeliveryMetrics
from delivery.schedule import DELIVERED, HELD, RATE_LIMITED, DeliveryPolicy
from delivery.service import DeliveryService
from delivery.silences import (
    SilenceCache,
    active_silences,
    held_by_silence,
    new_silence,
    silences_holding,
    write_silence,
)
from flows.replay import replay
from schemas.alerts import parse_notification
from schemas.matchers import parse_matcher
from schemas.rule_loader import load_rules
from schemas.rules import MuteTime
from sinks.clickhouse import Store
from tests.delivery.test_delivery_service import ENV, SECRET, alert, attempts, notification, until, webhook
from tests.support.factories import received
from tests.support.receivers import WebhookReceiver

FAST = DeliveryPolicy(max_attempts=3, backoff_base=0.02, backoff_cap=0.1)
RULES = Path(__file__).resolve().parents[2] / "rules"


def now_ms() -> int:
    return round(time.time() * 1000)


def make_silence(*matchers: str, minutes: int = 60) -> Silence:
    now = now_ms()
    return new_silence(uuid.uuid4().hex, [parse_matcher(m) for m in matchers], now, now + minutes * 60_000, "alice",
                       "PHP 8.4 migration", now)


def run(store: Store, channels: list[Any], script: Callable[[DeliveryService, SilenceCache], Any], *,
        holds: HoldPolicy | None = None, clock: Callable[[], float] | None = None,
        policy: DeliveryPolicy = FAST) -> DeliveryService:
    """Run a service with a silence cache refreshed every 20 ms, let ``script`` drive it, then stop it."""

    async def go() -> DeliveryService:
        policy_holds = holds or HoldPolicy()
        now = clock or time.time
        cache = SilenceCache(store, policy_holds, clock=now, interval=0.02)
        service = DeliveryService([open_sender(c, ENV) for c in channels], AttemptLog(store, interval=0.02), policy,
                                  clock=now, holds=policy_holds, silences=cache)
        await cache.refresh()
        service.start()
        try:
            await service.guarded(script(service, cache))
        finally:
            await service.stop(grace=5.0)
        return service

    return asyncio.run(go())


async def submit(service: DeliveryService, *records: dict[str, Any]) -> None:
    await service.submit([(received(record), None) for record in records])
    await service.drain()


async def reread(cache: SilenceCache) -> None:
    """Wait until the cache has completed a read that started after now (two reads: one may have been under way)."""
    wanted = cache.reads + 2
    await until(lambda: cache.reads >= wanted, "the silences read again")


def held_rows(store: Store) -> list[tuple[Any, ...]]:
    rows = store.query(f"SELECT alert_id, seq, channel, outcome, held_by, error FROM {store.database}.deliveries_final "
                       "WHERE outcome IN ('silenced', 'muted', 'inhibited') ORDER BY alert_id, seq, channel").result_rows
    return [tuple(row) for row in rows]


def test_a_silence_made_while_deliver_runs_holds_the_next_matching_notification_until_it_is_expired(store: Store) -> None:
    made: list[Silence] = []
    with WebhookReceiver(secret=SECRET) as hook:

        async def script(service: DeliveryService, cache: SilenceCache) -> None:
            await submit(service, notification(1))
            silence = make_silence("site=shop-eu", "rule=~mail-.*", "transport=smtp")
            made.append(silence)
            await asyncio.to_thread(write_silence, store, silence)
            await reread(cache)
            await submit(service, notification(1, 2), notification(2, deliver=["oncall"]) | {"site": "blog-us"})
            expired = Silence(silence.id, silence.matchers, silence.starts_at, now_ms(), silence.created_by,
                              silence.comment, silence.created_at, now_ms(), "bob")
            await asyncio.to_thread(write_silence, store, expired)
            await reread(cache)
            await submit(service, notification(1, 3))  # the re-notification once suppression expires

        service = run(store, [webhook("oncall", hook.url)], script)
        ids = [r.headers["webhook-id"] for r in hook.wait_for(3)]
    (silence,) = made
    assert ids == [f"{alert(1)}:1", f"{alert(2)}:1", f"{alert(1)}:3"], "the held notification was never sent"
    reason = f"silence {silence.id} (alice: PHP 8.4 migration) until "
    rows = attempts(store)
    assert [row[:5] for row in rows] == [
        (1, 1, "oncall", 1, DELIVERED), (1, 2, "oncall", 1, SILENCED), (1, 3, "oncall", 1, DELIVERED),
        (2, 1, "oncall", 1, DELIVERED),
    ]
    assert rows[1][6].startswith(reason)
    assert held_rows(store) == [(alert(1), 2, "oncall", SILENCED, silence.id, rows[1][6])]
    assert "1 held (1 silenced, 0 muted, 0 inhibited)" in service.summary()[-1]
    exposition = DeliveryMetrics(service).exposition()
    assert b'logystera_delivery_notifications_total{channel="oncall",result="silenced"} 1.0' in exposition
    assert b"logystera_delivery_silences_active 0.0" in exposition  # expired
    # What the console reads: the silence behind an alert's held notification, and what a silence held.
    (held,) = silences_holding(store, alert(1))
    assert (held.seq, held.channel, held.silence_id) == (2, "oncall", silence.id)
    assert held.silence is not None and held.silence.updated_by == "bob" and held.silence.created_by == "alice"
    assert [(h.alert_id, h.seq) for h in held_by_silence(store, silence.id)] == [(alert(1), 2)]
    assert active_silences(store, now_ms()) == []
    assert [s.id for s in active_silences(store, silence.starts_at)] == [silence.id]  # as it was then


def test_a_silence_made_while_a_notification_waits_for_the_rate_limit_applies_to_it(store: Store) -> None:
    with WebhookReceiver(secret=SECRET) as hook:

        async def script(service: DeliveryService, cache: SilenceCache) -> None:
            await service.submit([(received(notification(1)), None), (received(notification(2) | {"site": "blog-us"}), None)])
            await until(lambda: service.stats.attempts[("oncall", RATE_LIMITED)] == 1, "the second alert held by the limit")
            await asyncio.to_thread(write_silence, store, make_silence("site=blog-us"))
            await cache.refresh()
            await service.drain()

        run(store, [webhook("oncall", hook.url, per="2s", rate_max=1)], script)
        assert [r.headers["webhook-id"] for r in hook.received] == [f"{alert(1)}:1"]
    assert [(*row[:6], row[6] if row[4] != SILENCED else row[6][:8]) for row in attempts(store)] == [
        (1, 1, "oncall", 1, DELIVERED, 204, ""),
        (2, 1, "oncall", 1, RATE_LIMITED, None, HELD), (2, 1, "oncall", 2, SILENCED, None, "silence "),
    ]


def test_a_maintenance_window_mutes_the_channel_that_names_it_and_no_other(store: Store) -> None:
    sunday = MuteTime.model_validate({"name": "sunday-maintenance", "timezone": "Europe/Berlin",
                                      "intervals": [{"weekdays": ["sunday"], "times": [{"start": "01:00", "end": "04:00"}]}]})
    holds = HoldPolicy([sunday], {"oncall": ["sunday-maintenance"]})
    in_the_window = datetime.fromisoformat("2026-10-25T01:30:00+00:00").timestamp()  # 02:30 CET, the second one

    with WebhookReceiver(secret=SECRET) as oncall, WebhookReceiver(secret=SECRET) as chat:

        async def script(service: DeliveryService, cache: SilenceCache) -> None:
            await submit(service, notification(1, deliver=["oncall", "chat"]))

        run(store, [webhook("oncall", oncall.url), webhook("chat", chat.url)], script, holds=holds,
            clock=lambda: in_the_window)
        assert len(chat.wait_for(1)) == 1 and oncall.received == []
    assert held_rows(store) == [(alert(1), 1, "oncall", MUTED, "sunday-maintenance",
                                 "mute time sunday-maintenance of the channel")]


# -- the default pack on a replayed scenario ---------------------------------------------------------------

START = datetime.fromisoformat("2026-11-28T10:00:00+00:00")


def stamp(minute: int) -> str:
    return (START + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def scenario() -> list[str]:
    """Two sites whose cron job stops at 10:00; shop-eu's integration also goes silent 10:30–13:00.

    integration-silent fires for shop-eu at 10:35 and resolves 2 minutes
    after the heartbeats resume; cron-job-stopped fires for both sites at
    12:00 and re-notifies at 18:00 (suppress 6h), the job still stopped.
    """
    records: list[dict[str, Any]] = []
    for minute in range(8 * 60 + 2):
        for site in ("shop-eu", "blog-us"):
            at = {"site": site, "ts": stamp(minute)}
            if minute == 0:
                records.append({**at, "type": "cron", "data": {"job": "wp_scheduled_delete", "event": "finished",
                                                               "duration_ms": 900}})
            if site == "blog-us" or not 30 < minute < 180:
                records.append({**at, "type": "integration", "data": {"event": "heartbeat", "dropped": 0, "buffered": 0}})
            records.append({**at, "type": "tick"})
    return [json.dumps({"v": 1, "id": f"s{index:07d}", **record}, separators=(",", ":")) for index, record in enumerate(records)]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    directory = tmp_path_factory.mktemp("scenario")
    signals = directory / "signals.jsonl"
    signals.write_text("\n".join(scenario()) + "\n", encoding="utf-8")
    ruleset = load_rules(RULES)
    yield signals, replay(str(signals), ruleset.enabled_rules, metrics=ruleset.metrics).alerts


def test_the_default_pack_inhibits_the_absences_of_a_site_whose_integration_is_silent(
    store: Store, replayed: tuple[Path, list[str]],
) -> None:
    _, alerts = replayed
    records = [parse_notification(text) for text in alerts]
    assert all(not isinstance(r, str) for r in records)
    shown = [(r.record.rule.id, r.record.site, r.record.seq, r.record.status) for r in records]  # type: ignore[union-attr]
    assert shown == [
        ("integration-silent", "shop-eu", 1, "firing"),
        ("cron-job-stopped", "blog-us", 1, "firing"), ("cron-job-stopped", "shop-eu", 1, "firing"),
        ("integration-silent", "shop-eu", 2, "firing"),  # re-notified at 12:35 (suppress 2h)
        ("integration-silent", "shop-eu", 3, "resolved"),
        ("cron-job-stopped", "blog-us", 2, "firing"), ("cron-job-stopped", "shop-eu", 2, "firing"),
    ]
    with WebhookReceiver(secret=SECRET) as oncall, WebhookReceiver(secret=SECRET) as chat:

        async def script(service: DeliveryService, cache: SilenceCache) -> None:
            await service.submit([(r, None) for r in records])  # type: ignore[misc]
            await service.drain()

        run(store, [webhook("oncall", oncall.url), webhook("ops-slack", chat.url)], script, holds=hold_policy(load_rules(RULES)))
        oncall.wait_for(3)
        sent = [(r.json["rule"]["id"], r.json["site"], r.json["seq"]) for r in chat.wait_for(3)]
    assert sorted(sent) == [("cron-job-stopped", "blog-us", 1), ("cron-job-stopped", "blog-us", 2),
                            ("cron-job-stopped", "shop-eu", 2)], "held while the integration was silent, sent after"
    source = records[0].record.alert_id  # type: ignore[union-attr]
    target = records[2].record.alert_id  # type: ignore[union-attr]
    assert held_rows(store) == [(target, 1, "ops-slack", INHIBITED, source,
                                 f"inhibited by integration-silent alert {source} (inhibit rule silent-integration-hides-absences)")]


def test_notifications_are_byte_identical_with_and_without_silences_mute_times_and_inhibition(
    tmp_path: Path, replayed: tuple[Path, list[str]],
) -> None:
    signals, configured = replayed  # the default pack: it has an inhibit rule
    bare = tmp_path / "bare"
    shutil.copytree(RULES, bare)
    channels = (bare / "channels.yaml").read_text(encoding="utf-8")
    (bare / "channels.yaml").write_text(channels[: channels.index("\ninhibit:")] + "\n", encoding="utf-8")
    muted = tmp_path / "muted"
    shutil.copytree(RULES, muted)
    with (muted / "cron-job-stopped.yaml").open("a", encoding="utf-8") as stream:
        stream.write("mute: [always]\n")
    with (muted / "channels.yaml").open("a", encoding="utf-8") as stream:
        stream.write("mute_times:\n  - {name: always, intervals: [{}]}\n")
    assert load_rules(bare).inhibit == [] and [r.id for r in load_rules(muted).rules if r.mute] == ["cron-job-stopped"]
    for directory in (bare, muted):
        ruleset = load_rules(directory)
        assert replay(str(signals), ruleset.enabled_rules, metrics=ruleset.metrics).alerts == configured


# -- the command line --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--match", "rule=~php-("], "--match: rule=~php-(: not a regular expression: missing ), unterminated subpattern at position 4"),
    (["--match", "colour=red"], "--match: colour: unknown field: use site, rule, kind, severity, subsystem or a group field "
                                "(a payload field a rule groups by, e.g. component)"),
    (["--match", "site=shop-eu", "--start", "2026-12-08T00:00:00Z", "--end", "2026-12-07T00:00:00Z"],
     "silence add: the end is before the start"),
    (["--match", "rule=php-fatl-spike"], "silence add: no rule in {rules} can match rule=php-fatl-spike "
                                         "(check the rule id, kind, severity, subsystem and group fields)"),
    (["--match", "site=shop-eu", "--for", "2h", "--end", "2026-12-07T00:00:00Z"],
     "silence add: give exactly one of --end TIME and --for DURATION"),
    (["--match", "site=shop-eu", "--start", "tomorrow"], "--start: tomorrow is not a time: use RFC 3339, e.g. 2026-12-07T01:00:00Z"),
], ids=["bad-regex", "unknown-field", "end-before-start", "matches-no-rule", "end-and-for", "bad-time"])
def test_silence_add_mistakes_are_one_line_and_exit_2(args: list[str], message: str, store_dsn: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    duration = [] if any(a in args for a in ("--for", "--end")) else ["--for", "2h"]
    code = main(["silence", "add", *args, *duration, "--by", "alice", "--comment", "why", "--rules", str(RULES),
                 "--store", store_dsn])
    err = capsys.readouterr().err
    assert (code, err) == (2, f"logystera: error: {message.format(rules=RULES)}\n")


@pytest.mark.parametrize("missing", ["--by", "--comment"])
def test_silence_add_without_who_or_why_is_one_line_and_exit_2(missing: str, store_dsn: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    given = {"--by": "alice", "--comment": "why"}
    del given[missing]
    code = main(["silence", "add", "--match", "site=shop-eu", "--for", "2h", *[x for kv in given.items() for x in kv],
                 "--store", store_dsn])
    assert (code, capsys.readouterr().err) == (2, f"logystera: error: the following arguments are required: {missing}\n")


def test_silence_add_shows_what_it_holds_then_list_and_expire_write_new_versions(
    store: Store, store_dsn: str, capsys: pytest.CaptureFixture[str],
) -> None:
    from schemas.store import ALERT_COLUMNS, alert_rows

    open_alert = parse_notification(json.dumps(notification(7) | {"group": {"transport": "smtp"}}))
    closed = parse_notification(json.dumps(notification(8)))
    resolved = parse_notification(json.dumps(notification(8, 2) | {"status": "resolved", "ended_at": "2026-11-28T10:44:00.000Z"}))
    rows = [alert_rows(r.record, r.raw.decode())[0] for r in (open_alert, closed, resolved)]  # type: ignore[union-attr]
    store.insert("alerts", ALERT_COLUMNS, [list(column) for column in zip(*rows, strict=True)])
    code = main(["silence", "add", "--match", "site=shop-eu", "--match", "rule=~mail-.*", "--for", "2h", "--by", "alice",
                 "--comment", "PHP 8.4 migration", "--rules", str(RULES), "--store", store_dsn])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    silence_id = out[0].split()[1].rstrip(":")
    assert out[0].startswith(f"silence {silence_id}: site=shop-eu rule=~mail-.* from ") and out[0].endswith(
        "(alice: PHP 8.4 migration)")
    assert out[1:] == ["it matches 1 open alert:", f"  {alert(7)} mail-delivery-failing shop-eu high: "
                                                   "12 of 15 mail signals matched in the last 15m (80%) (transport=smtp)"]
    assert main(["silence", "list", "--store", store_dsn]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == "ID\tSTATE\tMATCHERS\tSTARTS\tENDS\tBY\tCOMMENT\tHELD"
    assert listed[1].split("\t")[:3] == [silence_id, "active", "site=shop-eu rule=~mail-.*"]
    assert main(["silence", "expire", silence_id, "--by", "bob", "--store", store_dsn]) == 0
    assert capsys.readouterr().out.startswith(f"silence {silence_id} expired at ")
    assert main(["silence", "list", "--store", store_dsn]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert main(["silence", "list", "--expired", "--store", store_dsn]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[:2] == [silence_id, "expired"]
    versions = store.query(f"SELECT updated_by FROM {store.database}.silences ORDER BY updated_at").result_rows
    assert versions == [("alice",), ("bob",)], "expiring wrote a new version; nothing was deleted"
    assert main(["silence", "expire", "f" * 32, "--store", store_dsn]) == 2
    assert capsys.readouterr().err == f"logystera: error: silence expire: no silence {'f' * 32}\n"
