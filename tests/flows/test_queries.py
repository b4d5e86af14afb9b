"""docs/queries.md, run for real: every ```sql block of the doc against a store filled by a real replay.

A module-scoped ``logystera replay --store chdb:///…`` of the demo scenario,
cut at 15:45 (in the middle of the shop-eu deploy incident, so some alerts
are still open) and with three broken lines mixed in, fills an embedded store;
it runs twice, so the store holds duplicates the ``*_final`` views must hide.
Each query then runs through ``logystera sql --format csv`` in a process of
its own (a process can open one chDB directory, and only one process a
directory) and is checked against what the same replay wrote to
``alerts.jsonl`` and what it was fed. CSV, not JSON, because its header names
the columns.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.factory import signal_line
from schemas.rule_loader import load_rules
from schemas.store import DELIVERY_COLUMNS, rejection_reason
from schemas.timestamps import parse_ts
from simulate.scenario import generate_day
from tests.support.receivers import Reply, WebhookReceiver, refused_url

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "queries.md"
RULES_DIR = ROOT / "rules"
LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or shutil.which("logystera")
TIMEOUT = 120
MINUTE = 60_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CUTOFF = "2026-11-28T15:45:00"
EARLY_BROKEN_AFTER = 100  # the access-log line becomes line 101
ACCESS_LOG_LINE = "GET /wp-login.php HTTP/1.1"
UNKNOWN_TYPE_LINES = [
    '{"v":1,"id":"bad-type-0001","site":"shop-eu","type":"telemetry","ts":"2026-11-28T15:44:30.000Z","data":{}}',
    '{"v":1,"id":"bad-type-0002","site":"shop-eu","type":"telemetry","ts":"2026-11-28T15:44:31.000Z","data":{}}',
]
SIGNAL_TYPES = (
    "auth", "request", "php_error", "mail", "cron", "db_event", "config_change", "file_edit", "plugin", "integration",
)


# -- the doc ---------------------------------------------------------------------------------------


@dataclass
class Section:
    heading: str
    lines: list[str] = field(default_factory=list)


def doc_sections() -> list[Section]:
    sections = [Section("")]
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            sections.append(Section(line[3:].strip()))
        else:
            sections[-1].lines.append(line)
    return sections


def fenced_blocks(lines: list[str]) -> list[tuple[str, str]]:
    """(language, text) of each fenced block, in order."""
    blocks: list[tuple[str, str]] = []
    language: str | None = None
    body: list[str] = []
    for line in lines:
        if language is None and line.startswith("```"):
            language, body = line[3:].strip(), []
        elif language is not None and line.strip() == "```":
            blocks.append((language, "\n".join(body)))
            language = None
        elif language is not None:
            body.append(line)
    assert language is None, "unclosed fenced block in docs/queries.md"
    return blocks


def doc_queries() -> list[tuple[str, str]]:
    return [
        (section.heading, text)
        for section in doc_sections()
        for language, text in fenced_blocks(section.lines)
        if language == "sql"
    ]


QUERIES = doc_queries()


# -- the store -------------------------------------------------------------------------------------


@dataclass
class Signal:
    site: str
    type: str
    ts: int
    data: dict[str, Any]


@dataclass
class Replayed:
    directory: Path
    alerts: list[dict[str, Any]]
    signals: list[Signal]
    rejects: list[tuple[int, str]]
    lines: int
    scratch: Path

    @property
    def dsn(self) -> str:
        return f"chdb://{self.directory}"

    def episodes(self) -> dict[str, list[dict[str, Any]]]:
        """alert_id → its notifications by seq."""
        by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.alerts:
            by_id[record["alert_id"]].append(record)
        return {alert_id: sorted(records, key=lambda r: r["seq"]) for alert_id, records in by_id.items()}

    def episode_of(self, rule_id: str) -> str:
        """The first episode of a rule the scenario is known to fire before 15:45."""
        ids = sorted((r["started_at"], r["alert_id"]) for r in self.alerts if r["rule"]["id"] == rule_id and r["seq"] == 1)
        assert ids, f"the replay fired no {rule_id} alert; the scenario changed?"
        return ids[0][1]

    def window(self, alert_id: str) -> tuple[str, int, int]:
        """Site, first minute and last minute of an episode (the latest notification while it fires)."""
        records = self.episodes()[alert_id]
        ended = records[-1]["ended_at"] or max(r["evaluated_at"] for r in records)
        return records[0]["site"], minute_of(parse_ts(records[0]["started_at"])), minute_of(parse_ts(ended))

    def site_signals(self, site: str, start: int, end: int) -> list[Signal]:
        return [s for s in self.signals if s.site == site and start <= s.ts < end]


def minute_of(ms: int) -> int:
    return ms - ms % MINUTE


def ch_ms(text: str) -> int:
    """Epoch ms of a timestamp as `logystera sql` prints it (UTC, no suffix)."""
    return (datetime.fromisoformat(text).replace(tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


def logystera(*args: str) -> subprocess.CompletedProcess[str]:
    assert LOGYSTERA is not None, "the logystera console script is not installed"
    return subprocess.run(
        [LOGYSTERA, *args], capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT, check=False,
    )


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    scratch = tmp_path_factory.mktemp("queries")
    envelopes = list(itertools.takewhile(lambda e: e["ts"] < CUTOFF, generate_day()))
    lines = [signal_line(e) for e in envelopes]
    lines = [*lines[:EARLY_BROKEN_AFTER], ACCESS_LOG_LINE, *lines[EARLY_BROKEN_AFTER:], *UNKNOWN_TYPE_LINES]
    signals_path = scratch / "signals.jsonl"
    signals_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = scratch / "store"
    # Twice, as after a crash and a restart from the start: the store holds each row twice until ClickHouse
    # merges, and the queries must not see it.
    outputs = []
    for run in (1, 2):
        out = scratch / f"alerts-{run}.jsonl"
        result = logystera("replay", str(signals_path), "--rules", str(RULES_DIR), "--store", f"chdb://{store}",
                           "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines()[-1] == f"replayed {len(envelopes)} signals, 3 invalid, 0 late"
        outputs.append(out.read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1]
    rejects = [
        (int(match[1]), match[2]) for match in re.finditer(r"^line (\d+): (.*)$", result.stderr, flags=re.MULTILINE)
    ]
    return Replayed(
        directory=store,
        alerts=[json.loads(line) for line in outputs[0].splitlines()],
        signals=[Signal(e["site"], e["type"], parse_ts(e["ts"]), e.get("data") or {}) for e in envelopes if e["type"] != "tick"],
        rejects=rejects,
        lines=len(lines),
        scratch=scratch,
    )


@dataclass
class Result:
    columns: list[str]
    rows: list[dict[str, str]]


def run_sql(dsn: str, query: str) -> Result:
    result = logystera("sql", "--store", dsn, "--format", "csv", query)
    assert result.returncode == 0, f"{result.stderr}\n{query}"
    table = list(csv.reader(io.StringIO(result.stdout)))
    # With no rows, clickhouse-connect (chDB) reports no column names either: the header is empty.
    columns = table[0] if table and table[0] else []
    return Result(columns, [dict(zip(columns, row, strict=True)) for row in table[1:]])


# -- one check per query, by heading ---------------------------------------------------------------

Fill = Callable[[Replayed], dict[str, str]]
Check = Callable[[Result, Replayed, str], None]
CHECKS: dict[str, tuple[Fill, Check]] = {}


def check(heading: str, fill: Fill = lambda run: {}) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        assert heading not in CHECKS, heading
        CHECKS[heading] = (fill, function)
        return function

    return register


def columns(result: Result, *names: str) -> None:
    assert result.columns[: len(names)] == list(names), result.columns


@check("Rows per table, stored and deduplicated")
def _rows_per_table(result: Result, run: Replayed, _: str) -> None:
    columns(result, "table_name", "stored_rows", "distinct_rows", "waiting_for_merge")
    counts = {row["table_name"]: (int(row["stored_rows"]), int(row["distinct_rows"]), int(row["waiting_for_merge"]))
              for row in result.rows}
    assert list(counts) == sorted(["signals", "alerts", "evidence", "metrics", "rejected", "deliveries"])
    for stored, distinct, waiting in counts.values():
        assert 2 * distinct >= stored >= distinct and waiting == stored - distinct  # replayed twice
    assert sum(waiting for _, _, waiting in counts.values()) > 0, "two replays and not one duplicate waiting for a merge?"
    assert counts["signals"][1] == len(run.signals)
    assert counts["alerts"][1] == len(run.alerts)
    assert counts["evidence"][1] == sum(len(record["evidence"]) for record in run.alerts)
    assert counts["rejected"][1] == len(run.rejects) == 3
    assert counts["deliveries"] == (0, 0, 0)
    assert counts["metrics"][1] > 0


@check("Alert episodes")
def _episodes(result: Result, run: Replayed, _: str) -> None:
    columns(result, "alert_id", "site", "rule", "severity", "group_values", "started", "ended", "latest_status",
            "notifications", "lasted_s")
    expected = []
    for alert_id, records in run.episodes().items():
        first, latest = records[0], records[-1]
        started = parse_ts(first["started_at"])
        end = parse_ts(latest["ended_at"] or max(r["evaluated_at"] for r in records))
        expected.append((started, first["site"], first["rule"]["id"], alert_id, {
            "alert_id": alert_id, "site": first["site"], "rule": first["rule"]["id"], "severity": first["severity"],
            "group": first["group"], "ended": latest["ended_at"], "latest_status": latest["status"],
            "notifications": latest["seq"], "lasted_s": end // 1000 - started // 1000,
        }))
    expected.sort(key=lambda item: item[:4])
    assert len(result.rows) == len(expected) > 0
    for row, (started, _site, _rule, _alert_id, want) in zip(result.rows, expected, strict=True):
        assert ch_ms(row["started"]) == started
        assert (row["ended"] == "NULL") == (want["ended"] is None)
        if want["ended"] is not None:
            assert ch_ms(row["ended"]) == parse_ts(want["ended"])
        assert json.loads(row["group_values"]) == want["group"]
        got = {key: row[key] for key in ("alert_id", "site", "rule", "severity", "latest_status")}
        assert got == {key: want[key] for key in got}
        assert (int(row["notifications"]), int(row["lasted_s"])) == (want["notifications"], want["lasted_s"])


def busiest_site(run: Replayed) -> str:
    return Counter(record["site"] for record in run.alerts).most_common(1)[0][0]


@check("Alerts timeline for a site", fill=lambda run: {"site": busiest_site(run)})
def _timeline(result: Result, run: Replayed, _: str) -> None:
    columns(result, "evaluated_at", "rule_id", "severity", "status", "seq", "alert_id", "group_json", "summary")
    site = busiest_site(run)
    expected = sorted(
        (r for r in run.alerts if r["site"] == site),
        key=lambda r: (r["evaluated_at"], r["rule"]["id"], r["alert_id"], r["seq"]),
    )
    assert len(expected) >= 2
    got = [(ch_ms(row["evaluated_at"]), row["rule_id"], row["severity"], row["status"], int(row["seq"]), row["alert_id"],
            json.loads(row["group_json"]), row["summary"]) for row in result.rows]
    assert got == [(parse_ts(r["evaluated_at"]), r["rule"]["id"], r["severity"], r["status"], r["seq"], r["alert_id"],
                    r["group"], r["summary"]) for r in expected]


@check("Open alerts")
def _open_alerts(result: Result, run: Replayed, _: str) -> None:
    columns(result, "alert_id", "site", "rule", "severity", "group_values", "started", "last_notified", "notifications",
            "latest_summary")
    open_ = {alert_id: records for alert_id, records in run.episodes().items()
             if records[-1]["status"] == "firing" and records[0]["rule"]["kind"] != "match"}
    # Cut at 15:45, the deploy incident (15:30–15:53) is still going: its stateful alerts fire.
    assert {records[0]["rule"]["id"] for records in open_.values()} >= {"php-fatal-spike", "http-5xx-ratio"}
    assert {row["alert_id"] for row in result.rows} == set(open_)
    for row in result.rows:
        records = open_[row["alert_id"]]
        assert ch_ms(row["last_notified"]) == max(parse_ts(r["evaluated_at"]) for r in records)
        assert int(row["notifications"]) == records[-1]["seq"]
        assert row["latest_summary"] == records[-1]["summary"]
        assert (row["site"], row["rule"]) == (records[0]["site"], records[0]["rule"]["id"])
    assert [ch_ms(row["started"]) for row in result.rows] == sorted(ch_ms(row["started"]) for row in result.rows)


@check("Top noisy rules")
def _noisy_rules(result: Result, run: Replayed, _: str) -> None:
    columns(result, "rule_id", "site", "notifications", "episodes", "renotifications", "resolved", "suppressed")
    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for r in run.alerts:
        counts = expected[(r["rule"]["id"], r["site"])]
        counts[0] += 1
        counts[1] += r["seq"] == 1
        counts[2] += r["status"] == "firing" and r["seq"] > 1
        counts[3] += r["status"] == "resolved"
        counts[4] += r["suppressed_count"]
    got = {(row["rule_id"], row["site"]): [int(row[name]) for name in result.columns[2:]] for row in result.rows}
    assert got == dict(expected) and len(got) == len(result.rows) > 0
    notifications = [int(row["notifications"]) for row in result.rows]
    assert notifications == sorted(notifications, reverse=True)


def most_evidence(run: Replayed) -> str:
    return max(run.episodes().items(), key=lambda item: (sum(len(r["evidence"]) for r in item[1]), item[0]))[0]


@check("The evidence of an alert", fill=lambda run: {"alert_id": most_evidence(run)})
def _evidence(result: Result, run: Replayed, _: str) -> None:
    columns(result, "seq", "position", "ts", "type", "signal_id", "data")
    records = run.episodes()[most_evidence(run)]
    expected = [(r["seq"], position, parse_ts(e["ts"]), e["type"], e["id"], e["data"])
                for r in records for position, e in enumerate(r["evidence"])]
    assert len({seq for seq, *_ in expected}) >= 2, "the chosen alert should carry evidence in several notifications"
    got = [(int(row["seq"]), int(row["position"]), ch_ms(row["ts"]), row["type"], row["signal_id"], json.loads(row["data"]))
           for row in result.rows]
    assert got == expected


def rates_alert(run: Replayed) -> str:
    return run.episode_of("http-5xx-ratio")  # still firing at 15:45: the window ends at its latest notification


@check("Before, during and after an alert: rates per signal type", fill=lambda run: {"alert_id": rates_alert(run)})
def _phase_rates(result: Result, run: Replayed, _: str) -> None:
    columns(result, "type", "before_per_min", "during_per_min", "after_per_min", "signals")
    site, first, last = run.window(rates_alert(run))
    during_minutes = (last - first) // MINUTE + 1
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for s in run.site_signals(site, first - 30 * MINUTE, last + 31 * MINUTE):
        counts[s.type][0 if s.ts < first else 1 if s.ts < last + MINUTE else 2] += 1
    assert counts["php_error"][1] / during_minutes > 2 * counts["php_error"][0] / 30, "the deploy's fatal errors"
    got = {row["type"]: row for row in result.rows}
    assert set(got) == set(counts)
    for type_, (before, during, after) in counts.items():
        row = got[type_]
        assert int(row["signals"]) == before + during + after
        for column, rate in (("before_per_min", before / 30), ("during_per_min", during / during_minutes),
                             ("after_per_min", after / 30)):
            assert float(row[column]) == pytest.approx(rate, abs=0.0051), (type_, column)
    rises = [float(row["during_per_min"]) - float(row["before_per_min"]) for row in result.rows]
    assert rises == sorted(rises, reverse=True)


def attack_alert(run: Replayed) -> str:
    return run.episode_of("credential-stuffing")


@check("Before, during and after an alert: signals per type per minute", fill=lambda run: {"alert_id": attack_alert(run)})
def _per_minute(result: Result, run: Replayed, _: str) -> None:
    columns(result, "minute", "phase", "signals", *SIGNAL_TYPES)
    site, first, last = run.window(attack_alert(run))
    expected: dict[int, Counter[str]] = defaultdict(Counter)
    for s in run.site_signals(site, first - 30 * MINUTE, last + 31 * MINUTE):
        expected[minute_of(s.ts)][s.type] += 1
    got = {}
    for row in result.rows:
        minute = ch_ms(row["minute"])
        phase = "before" if minute < first else "during" if minute <= last else "after"
        assert row["phase"] == phase, row
        assert int(row["signals"]) == sum(int(row[t]) for t in SIGNAL_TYPES)
        got[minute] = Counter({t: int(row[t]) for t in SIGNAL_TYPES if int(row[t])})
    assert got == dict(expected)
    assert [ch_ms(row["minute"]) for row in result.rows] == sorted(expected)
    assert {row["phase"] for row in result.rows} == {"before", "during", "after"}


@check("Login attempts by outcome around an alert", fill=lambda run: {"alert_id": attack_alert(run)})
def _auth_metric(result: Result, run: Replayed, _: str) -> None:
    outcomes = ("success", "failure", "lockout", "logout")
    columns(result, "minute", *outcomes, "attempts")
    site, alert_minute, _last = run.window(attack_alert(run))
    minutes = [alert_minute + offset * MINUTE for offset in range(-30, 31)]
    assert [ch_ms(row["minute"]) for row in result.rows] == minutes  # 61 rows: quiet minutes filled with zeros
    expected: dict[int, Counter[str]] = defaultdict(Counter)
    for s in run.site_signals(site, minutes[0], minutes[-1] + MINUTE):
        if s.type == "auth":
            expected[minute_of(s.ts)][s.data["outcome"]] += 1
    for row in result.rows:
        want = expected[ch_ms(row["minute"])]
        assert [int(row[o]) for o in outcomes] == [want[o] for o in outcomes], row
        assert int(row["attempts"]) == sum(want.values())
    assert sum(int(row["failure"]) for row in result.rows) > 100, "the credential-stuffing attack"


def http_metric_fill(run: Replayed) -> dict[str, str]:
    return {"alert_id": rates_alert(run), "metric": "http_requests", "label": "status"}


@check("Any metric around an alert, split by one label", fill=http_metric_fill)
def _any_metric(result: Result, run: Replayed, _: str) -> None:
    columns(result, "bucket_start", "total", "by_label")
    (definition,) = [m for m in load_rules(RULES_DIR).metrics if m.name == "http_requests"]
    declared = {str(value) for value in definition.labels["status"]}
    site, alert_minute, _last = run.window(rates_alert(run))
    expected: dict[int, Counter[str]] = defaultdict(Counter)
    for s in run.site_signals(site, alert_minute - 30 * MINUTE, alert_minute + 31 * MINUTE):
        if s.type == "request":
            status = str(s.data["status"])
            expected[minute_of(s.ts)][status if status in declared else "other"] += 1
    got = {ch_ms(row["bucket_start"]): (float(row["total"]), json.loads(row["by_label"])) for row in result.rows}
    assert set(got) == set(expected)
    for minute, (total, by_label) in got.items():
        assert by_label == {label: float(n) for label, n in expected[minute].items()}
        assert total == sum(expected[minute].values())
    assert sum(by_label.get("500", 0) for _, by_label in got.values()) > 50, "the deploy's server errors"


@check("Rejected input by reason and hour")
def _rejected(result: Result, run: Replayed, _: str) -> None:
    columns(result, "hour", "site", "reason", "rejected")
    reasons = dict(run.rejects)
    last = run.lines
    expected = {
        ("2026-11-28T00:00:00.000Z", "", rejection_reason(reasons[EARLY_BROKEN_AFTER + 1])): 1,
        ("2026-11-28T15:00:00.000Z", "shop-eu", rejection_reason(reasons[last])): 2,
    }
    assert set(reasons) == {EARLY_BROKEN_AFTER + 1, last - 1, last}
    assert {(row["hour"], row["site"], row["reason"]): int(row["rejected"]) for row in result.rows} == expected
    assert [row["hour"] for row in result.rows] == sorted(row["hour"] for row in result.rows)


DELIVERY_ATTEMPTS = [  # alert_id, seq, channel, attempt, attempted_at, outcome, status_code, latency_ms, error
    ("a1", 1, "oncall", 1, "2026-11-28 15:31:00.000", "retrying", 503, 100, "HTTP 503"),
    ("a1", 1, "oncall", 2, "2026-11-28 15:31:02.000", "delivered", 200, 40, ""),
    ("a2", 1, "oncall", 1, "2026-11-28 15:33:00.000", "rate_limited", None, 0, ""),
    ("a2", 1, "oncall", 2, "2026-11-28 15:33:30.000", "rate_limited", None, 0, ""),
    ("a2", 1, "oncall", 3, "2026-11-28 15:34:00.000", "delivered", 200, 60, ""),
    ("a3", 1, "oncall", 1, "2026-11-28 15:35:00.000", "retrying", 500, 20, "HTTP 500"),
    ("a3", 1, "oncall", 2, "2026-11-28 15:36:00.000", "gave_up", 500, 1000, "HTTP 500"),
    ("a1", 1, "ops-slack", 1, "2026-11-28 15:31:00.000", "delivered", 200, 80, ""),
]


def sql_value(value: Any) -> str:
    return "NULL" if value is None else str(value) if isinstance(value, int) else "'" + value + "'"


@check("Delivery outcomes by channel")
def _deliveries(result: Result, run: Replayed, query: str) -> None:
    assert result.rows == []  # nothing delivers yet: the table is empty and the query still runs
    # The same query over a copy of the store holding a few attempts, each written twice (FINAL keeps one).
    copy = run.scratch / "store-with-deliveries"
    shutil.copytree(run.directory, copy, symlinks=True)  # like `cp -a`: chDB links tables to their data
    values = ", ".join("(" + ", ".join(map(sql_value, attempt)) + ")" for attempt in DELIVERY_ATTEMPTS)
    names = ", ".join(DELIVERY_COLUMNS[:9])  # held_by (silences) keeps its default
    for _ in range(2):
        insert = logystera("sql", "--store", f"chdb://{copy}", f"INSERT INTO deliveries ({names}) VALUES {values}")
        assert insert.returncode == 0, insert.stderr
    filled = run_sql(f"chdb://{copy}", query)
    assert filled.columns == ["channel", "notifications", "attempts", "delivered", "failed", "retrying", "rate_limited",
                              "gave_up", "p50_ms", "p95_ms"]
    assert [list(row.values()) for row in filled.rows] == [
        # latencies without the two rate_limited holds: 20 40 60 100 1000 (with them the median would be 40)
        ["oncall", "3", "7", "2", "0", "2", "2", "1", "60", "1000"],
        ["ops-slack", "1", "1", "1", "0", "0", "0", "0", "80", "80"],
    ]


# The delivery queries run over a copy of the store that a real `logystera deliver` of the replay's notifications
# filled: channel oncall (a webhook on loopback that answers 503 once, then 404 once, then 204; 4 per second)
# and channel chat (a webhook that is down; resolved notifications are not sent to it).

DELIVERY_CHANNELS = """channels:
  - name: oncall
    type: webhook
    url_env: QUERIES_HOOK_URL
    rate_limit: {per: 1s, max: 4}
    send_resolved: true
  - name: chat
    type: webhook
    url_env: QUERIES_DOWN_URL
"""


@dataclass
class Delivered:
    dsn: str
    rows: list[dict[str, str]]  # deliveries_final as `logystera sql` prints it
    answered: Counter[int]  # the statuses the oncall receiver answered with

    def notifications(self) -> dict[tuple[str, str, int], list[dict[str, str]]]:
        """(channel, alert_id, seq) → its rows by attempt."""
        found: dict[tuple[str, str, int], list[dict[str, str]]] = defaultdict(list)
        for row in self.rows:
            found[(row["channel"], row["alert_id"], int(row["seq"]))].append(row)
        return {key: sorted(rows, key=lambda row: int(row["attempt"])) for key, rows in found.items()}


_DELIVERED: dict[Path, Delivered] = {}


def delivered(run: Replayed) -> Delivered:
    """The replayed store, copied and filled by `logystera deliver` (once per module)."""
    if run.directory in _DELIVERED:
        return _DELIVERED[run.directory]
    copy = run.scratch / "store-delivered"
    shutil.copytree(run.directory, copy, symlinks=True)  # like `cp -a`
    alerts = run.scratch / "alerts-to-deliver.jsonl"
    alerts.write_text("".join(json.dumps({**r, "deliver": ["oncall", "chat"]}) + "\n" for r in run.alerts), encoding="utf-8")
    rules = run.scratch / "delivery-rules"
    rules.mkdir()
    (rules / "channels.yaml").write_text(DELIVERY_CHANNELS, encoding="utf-8")
    with WebhookReceiver() as hook:
        hook.answer(Reply(503), Reply(404, b"gone"))
        env = {name: value for name, value in os.environ.items() if name != "LOGYSTERA_STORE"}
        env |= {"QUERIES_HOOK_URL": hook.url, "QUERIES_DOWN_URL": refused_url()}
        assert LOGYSTERA is not None
        result = subprocess.run(
            [LOGYSTERA, "deliver", str(alerts), "--rules", str(rules), "--store", f"chdb://{copy}",
             "--max-attempts", "3", "--backoff", "20ms", "--backoff-cap", "50ms"],
            capture_output=True, text=True, timeout=TIMEOUT, check=False, env=env,
        )
        assert result.returncode == 0, result.stderr
        assert not hook.problems
        answered = Counter(request.status for request in hook.received)
    dsn = f"chdb://{copy}"
    _DELIVERED[run.directory] = Delivered(dsn, run_sql(dsn, "SELECT * FROM deliveries_final").rows, answered)
    return _DELIVERED[run.directory]


def ms(text: str) -> int:
    return ch_ms(text.removesuffix("Z"))


def quantile_exact(level: float, values: list[int]) -> int:
    """ClickHouse's quantileExact: the value at position floor(level × n) of the sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(level * len(ordered)))]


def busiest_delivery(run: Replayed) -> str:
    counts = Counter(row["alert_id"] for row in delivered(run).rows)
    return max(counts, key=lambda alert_id: (counts[alert_id], alert_id))


@check("Delivery attempts of an alert", fill=lambda run: {"alert_id": busiest_delivery(run)})
def _delivery_attempts(result: Result, run: Replayed, query: str) -> None:
    assert result.rows == []  # the replayed store itself: nothing delivered
    got = run_sql(delivered(run).dsn, query)
    names = ["seq", "channel", "attempt", "attempted_at", "outcome", "status_code", "latency_ms", "error"]
    assert got.columns == names
    alert_id = busiest_delivery(run)
    rows = [row for row in delivered(run).rows if row["alert_id"] == alert_id]
    expected = sorted(rows, key=lambda row: (int(row["seq"]), row["channel"], int(row["attempt"])))
    assert got.rows == [{name: row[name] for name in names} for row in expected]
    assert len(got.rows) >= 4 and {row["channel"] for row in got.rows} == {"oncall", "chat"}


@check("Notifications that did not get through")
def _not_through(result: Result, run: Replayed, query: str) -> None:
    assert result.rows == []
    filled = delivered(run)
    got = run_sql(filled.dsn, query)
    assert got.columns == ["channel", "alert_id", "seq", "site", "rule_id", "status", "state", "calls", "last_attempt_at",
                           "last_status", "last_error"]
    records = {(r["alert_id"], r["seq"]): r for r in run.alerts}
    expected = []
    for (channel, alert_id, seq), rows in filled.notifications().items():
        last = rows[-1]
        if last["outcome"] in ("gave_up", "failed"):
            state = last["outcome"]
        elif last["outcome"] in ("delivered", "silenced", "muted", "inhibited") or last["error"].startswith("collapsed into seq "):
            continue
        else:
            state = "pending"
        record = records[(alert_id, seq)]
        expected.append([channel, alert_id, str(seq), record["site"], record["rule"]["id"], record["status"], state,
                         str(sum(row["outcome"] != "rate_limited" for row in rows)), max(row["attempted_at"] for row in rows),
                         last["status_code"], last["error"]])
    expected.sort(key=lambda row: (row[8], row[0], row[1], int(row[2])))
    assert [list(row.values()) for row in got.rows] == expected
    # What the receivers did: chat was down for every firing notification, oncall refused one for good (the 404).
    firing = [r for r in run.alerts if r["status"] == "firing"]
    chat = [row for row in got.rows if row["channel"] == "chat"]
    assert len(chat) == len(firing) and {(row["state"], row["calls"], row["last_error"]) for row in chat} == {
        ("gave_up", "3", "connection refused (after 3 attempts)")}
    oncall = [row for row in got.rows if row["channel"] == "oncall"]
    assert [(row["state"], row["last_status"], row["last_error"]) for row in oncall] == [
        ("gave_up", "404", "HTTP 404: gone (not retryable)")]


@check("Delivery delay per channel")
def _delivery_delay(result: Result, run: Replayed, query: str) -> None:
    assert result.rows == []
    filled = delivered(run)
    got = run_sql(filled.dsn, query)
    assert got.columns == ["channel", "delivered", "held_first", "retried", "p50_wait_ms", "p95_wait_ms", "max_wait_ms"]
    waits: dict[str, list[int]] = defaultdict(list)
    held: Counter[str] = Counter()
    retried: Counter[str] = Counter()
    for (channel, _, _), rows in filled.notifications().items():
        done = [row for row in rows if row["outcome"] == "delivered"]
        if not done:
            continue
        waits[channel].append(ms(done[-1]["attempted_at"]) + int(done[-1]["latency_ms"]) - min(ms(row["attempted_at"]) for row in rows))
        held[channel] += rows[0]["outcome"] == "rate_limited"
        retried[channel] += sum(row["outcome"] != "rate_limited" for row in rows) > 1
    expected = [[channel, str(len(values)), str(held[channel]), str(retried[channel]), str(quantile_exact(0.5, values)),
                 str(quantile_exact(0.95, values)), str(max(values))] for channel, values in sorted(waits.items())]
    assert [list(row.values()) for row in got.rows] == expected
    # chat never delivered; oncall delivered exactly as many as its receiver accepted, some after a hold, one after the 503
    (oncall,) = got.rows
    assert oncall["channel"] == "oncall" and int(oncall["delivered"]) == filled.answered[204]
    assert int(oncall["held_first"]) > 0 and int(oncall["retried"]) >= 1 and filled.answered[503] == 1


SILENCES = [  # id, updated_at, updated_by, matchers, starts_at, ends_at, created_by, comment, created_at
    ("0" * 31 + "1", "2026-11-28 15:00:00.000", "alice", '[["site", "=", "shop-eu"], ["rule", "=~", "mail-.*"]]',
     "2026-11-28 15:00:00.000", "2026-11-28 17:00:00.000", "alice", "PHP 8.4 migration", "2026-11-28 15:00:00.000"),
    ("0" * 31 + "1", "2026-11-28 15:40:00.000", "bob", '[["site", "=", "shop-eu"], ["rule", "=~", "mail-.*"]]',
     "2026-11-28 15:00:00.000", "2026-11-28 15:40:00.000", "alice", "PHP 8.4 migration", "2026-11-28 15:00:00.000"),
    ("0" * 31 + "2", "2026-11-28 16:00:00.000", "carol", '[["site", "=", "blog-us"], ["rule", "=", "backup-missed"]]',
     "2026-11-28 16:00:00.000", "2026-11-28 18:00:00.000", "carol", "backup window", "2026-11-28 16:00:00.000"),
]


@check("What was silenced, by whom, and what it held")
def _silenced(result: Result, run: Replayed, query: str) -> None:
    assert result.rows == []  # no silence yet
    copy = run.scratch / "store-with-silences"
    shutil.copytree(run.directory, copy, symlinks=True)
    mail = next(r for r in run.alerts if r["rule"]["id"] == "mail-delivery-failing" and r["site"] == "shop-eu")
    silence = SILENCES[0][0]
    alert_id, seq = mail["alert_id"], mail["seq"]
    held = [(alert_id, seq, channel, 1, at, "silenced", None, 0, "silence …", silence)
            for channel, at in (("oncall", "2026-11-28 15:10:00.000"), ("chat", "2026-11-28 15:20:00.000"))]
    held.append((alert_id, seq, "ops-slack", 1, "2026-11-28 15:20:00.000", "delivered", 200, 30, "", ""))
    for table, rows in (("silences", SILENCES), ("deliveries", held)):
        values = ", ".join("(" + ", ".join(map(sql_value, row)) + ")" for row in rows)
        for _ in range(2):  # twice: the views keep one of each
            insert = logystera("sql", "--store", f"chdb://{copy}", f"INSERT INTO {table} VALUES {values}")
            assert insert.returncode == 0, insert.stderr
    filled = run_sql(f"chdb://{copy}", query)
    assert filled.columns == ["id", "created_by", "comment", "matchers", "starts_at", "ends_at", "updated_by", "held",
                              "alerts", "channels", "rules", "first_held_at", "last_held_at"]
    rows = [list(row.values()) for row in filled.rows]
    assert [row[:3] + row[6:] for row in rows] == [
        ["0" * 31 + "2", "carol", "backup window", "carol", "0", "0", "[]", "[]", "NULL", "NULL"],
        ["0" * 31 + "1", "alice", "PHP 8.4 migration", "bob", "2", "1", '["chat", "oncall"]', '["mail-delivery-failing"]',
         "2026-11-28T15:10:00.000Z", "2026-11-28T15:20:00.000Z"],
    ]
    assert rows[1][5] == "2026-11-28T15:40:00.000Z", "ended early: the newest version's end"


# -- the tests -------------------------------------------------------------------------------------


def test_every_sql_block_of_the_doc_is_tested() -> None:
    headings = [heading for heading, _ in QUERIES]
    assert len(QUERIES) == DOC.read_text(encoding="utf-8").count("```sql") >= 10
    assert len(set(headings)) == len(headings), "one query per heading"
    assert set(headings) == set(CHECKS), "every query needs a check here, and every check a query in the doc"


def test_every_query_says_when_to_use_it_and_shows_a_sample() -> None:
    for section in doc_sections():
        blocks = fenced_blocks(section.lines)
        if not any(language == "sql" for language, _ in blocks):
            continue
        prose = " ".join(line.strip() for line in itertools.takewhile(lambda line: not line.startswith("```"), section.lines))
        assert prose.strip().startswith("Use it "), section.heading
        languages = [language for language, _ in blocks]
        assert languages[0] == "sql" and languages[1:] and set(languages[1:]) == {"text"}, section.heading


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.parametrize(("heading", "query"), QUERIES, ids=[heading for heading, _ in QUERIES])
def test_query(heading: str, query: str, replayed: Replayed) -> None:
    assert heading in CHECKS, f"no check for the query under {heading!r}"
    fill, verify = CHECKS[heading]
    values = fill(replayed)
    assert set(re.findall(r"\{([a-z_]+)\}", query)) == set(values), "placeholders of the query vs values filled in"
    for name, value in values.items():
        query = query.replace("{" + name + "}", value)
    verify(run_sql(replayed.dsn, query), replayed, query)
