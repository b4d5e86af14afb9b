"""Replay is deterministic: same corpus, same bytes out, for any workers, chunk size or run.

A synthetic corpus from :mod:`simulate.corpus` (every signal type, ticks,
out-of-order and late records, invalid lines, bursts that make rules fire) is
replayed through the real Bytewax flow with 1, 2 and 4 workers and two chunk
sizes, each combination twice; the sorted output (byte for byte), the totals,
the rejected lines and the late lines must never change.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flows.replay import ReplayResult, replay
from schemas.rule_loader import load_rules
from schemas.rules import Rule
from schemas.signals import SIGNAL_TYPES
from simulate.corpus import generate_corpus, write_corpus

DEFAULT_PACK = Path(__file__).resolve().parents[2] / "rules"
N_SIGNALS, N_SITES = 50_000, 200

# Used only when the default pack is missing: one rule or more of every kind, aimed at the corpus's bursts.
FALLBACK_PACK = """
rules:
  - {id: mail-failing, title: Mail failing, severity: high, subsystem: mail, signal: mail,
     where: {outcome: {in: [failed, bounced]}}, group_by: [transport], kind: ratio,
     ratio: {at_least: 0.5, min_total: 10, window: 15m}, resolve_after: 5m}
  - {id: integration-silent, title: Integration silent, severity: high, subsystem: integration, signal: integration,
     where: {event: heartbeat}, kind: absence, absence: {after: 5m}, resolve_after: 2m}
  - {id: credential-stuffing, title: Credential stuffing, severity: high, subsystem: auth, signal: auth,
     where: {outcome: failure}, group_by: [source], kind: distinct, distinct: {field: user_hash, count: 20, window: 10m}}
  - {id: php-fatals, title: PHP fatals, severity: high, subsystem: php, signal: php_error,
     where: {level: {in: [fatal, parse]}}, group_by: [component], kind: threshold, threshold: {count: 5, window: 5m}}
  - {id: traffic-spike, title: Traffic spike, severity: low, subsystem: web, signal: request, kind: shift,
     shift: {window: 5m, baseline: 30m, factor: 3, min_count: 50}}
  - {id: plugin-changes, title: Plugin changes, severity: low, subsystem: plugins, signal: plugin, kind: match, bundle: 10m}
  - {id: web-shell, title: PHP in uploads, severity: critical, subsystem: security, signal: file_edit,
     where: {flags: {contains: php_in_uploads}}, kind: match, suppress: 15m}
  - {id: integration-dropped, title: Integration drops, severity: medium, subsystem: integration, signal: integration,
     where: {event: dropped}, kind: match}
"""


# Added to either pack: scheduled absence on the corpus's cron jobs (which run every 5 to 15 minutes, so the
# jobs slower than the schedule miss runs and fire, then resolve when they run), in a zone with daylight saving.
SCHEDULED_RULES = """
rules:
  - {id: job-late-berlin, title: Job late, severity: medium, subsystem: cron, signal: cron,
     where: {event: {in: [started, finished]}}, group_by: [job], kind: absence,
     absence: {schedule: "*/5 * * * *", timezone: Europe/Berlin, grace: 2m}, resolve_after: 1m, suppress: 20m}
  - {id: job-late-hourly, title: Job late, severity: low, subsystem: cron, signal: cron, kind: absence,
     absence: {schedule: "7,37 * * * *", grace: 30s}, for: 1m}
"""


def _rules(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Rule]]:
    scheduled = tmp_path_factory.mktemp("scheduled") / "scheduled.yaml"
    scheduled.write_text(SCHEDULED_RULES, encoding="utf-8")
    extra = load_rules(scheduled).enabled_rules
    if DEFAULT_PACK.is_dir():
        rules = load_rules(DEFAULT_PACK).enabled_rules
        if rules:
            return "default pack", rules + extra
    directory = tmp_path_factory.mktemp("rules")
    (directory / "pack.yaml").write_text(FALLBACK_PACK, encoding="utf-8")
    return "fallback pack", load_rules(directory).enabled_rules + extra


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "signals.jsonl"
    write_corpus(path, N_SIGNALS, N_SITES, seed=7)
    return path


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Rule]]:
    return _rules(tmp_path_factory)


def _fingerprint(result: ReplayResult) -> tuple[str, str, tuple[int, int, int], str, str, str]:
    output = "".join(line + "\n" for line in result.alerts)
    return (
        hashlib.sha256(output.encode("utf-8")).hexdigest(),
        result.totals_line,
        (result.valid, len(result.rejects), len(result.late_lines)),
        hashlib.sha256(repr(result.rejects).encode()).hexdigest(),
        hashlib.sha256(repr(sorted(result.late_lines)).encode()).hexdigest(),
        hashlib.sha256(repr(sorted(result.decisions.items())).encode()).hexdigest(),
    )


def test_generator_is_deterministic_and_covers_every_type() -> None:
    first = list(generate_corpus(5000, 40, seed=3, duration_s=1800))
    assert first == list(generate_corpus(5000, 40, seed=3, duration_s=1800))
    assert first != list(generate_corpus(5000, 40, seed=4, duration_s=1800))
    types: Counter[str] = Counter()
    unparsable = 0
    for line in first:
        try:
            types[json.loads(line)["type"]] += 1
        except json.JSONDecodeError:
            unparsable += 1
    assert set(SIGNAL_TYPES) | {"tick"} <= set(types)
    assert types["tick"] == 40 * 1800 // 10
    assert len(first) - types["tick"] == 5000
    assert unparsable > 0


@pytest.mark.slow
def test_replay_is_byte_identical_across_workers_chunks_and_runs(corpus: Path, pack: tuple[str, list[Rule]]) -> None:
    label, rules = pack
    runs: dict[tuple[int, int, int], tuple[str, str, tuple[int, int, int], str, str, str]] = {}
    reference: ReplayResult | None = None
    for workers in (1, 2, 4):
        for chunk_lines in (2000, 7919):
            for attempt in (1, 2):
                result = replay(str(corpus), rules, workers=workers, chunk_lines=chunk_lines)
                runs[(workers, chunk_lines, attempt)] = _fingerprint(result)
                if reference is None:
                    reference = result
    assert reference is not None
    expected = _fingerprint(reference)
    different = {run: got for run, got in runs.items() if got != expected}
    assert not different, f"replay output differs from (1 worker, chunk 2000) for {sorted(different)}"

    # Totals: every line accounted for, ~0.5 % invalid, a few late records.
    total_lines = sum(1 for _ in corpus.open("rb"))
    valid, invalid, late = expected[2]
    assert valid + invalid == total_lines
    assert 0.003 * N_SIGNALS < invalid < 0.008 * N_SIGNALS
    assert 0 < late < 0.005 * N_SIGNALS
    reasons = {reason.split(":")[0] for _, reason in reference.rejects}
    assert {"not valid JSON", "data.email", "type"} <= reasons

    # Non-trivial output: many notifications, several kinds, episodes that fire and resolve.
    records = [json.loads(line) for line in reference.alerts]
    kinds = Counter(record["rule"]["kind"] for record in records)
    statuses = Counter(record["status"] for record in records)
    fired_rules = {record["rule"]["id"] for record in records}
    assert len(records) >= 100, (label, len(records))
    assert len(kinds) >= 4, (label, kinds)
    assert statuses["firing"] > 0 and statuses["resolved"] > 0, statuses
    assert len(fired_rules) >= len(rules) // 2, (label, sorted(fired_rules))

    # The engine's decisions by (rule, reason): one per notification, and the silenced instants each reports.
    decisions: Counter[tuple[str, str]] = Counter()
    for record in records:
        reason = "resolved" if record["status"] == "resolved" else "renotified" if record["seq"] > 1 else "fired"
        decisions[(record["rule"]["id"], reason)] += 1
        decisions[(record["rule"]["id"], "suppressed")] += record["suppressed_count"]
    assert reference.decisions == +decisions
    assert {"fired", "resolved", "suppressed"} <= {reason for _, reason in decisions}  # renotified: tests/operators
    scheduled = Counter(record["status"] for record in records if record["rule"]["id"] == "job-late-berlin")
    assert scheduled["firing"] > 0 and scheduled["resolved"] > 0, scheduled
    def order(record: dict[str, Any]) -> tuple[Any, ...]:
        group = json.dumps(record["group"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return record["evaluated_at"], record["site"], record["rule"]["id"], group, record["seq"], record["alert_id"]

    assert [order(record) for record in records] == sorted(order(record) for record in records)
