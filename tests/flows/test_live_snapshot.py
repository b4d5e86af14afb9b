"""Detector snapshots (operators/snapshot.py): a restored detector carries on exactly like one never stopped.

A synthetic corpus (simulate/corpus.py: every signal type, ticks, late records,
bursts that make the default pack fire) is fed per site to SiteDetectors;
at cut points every detector is snapshotted and replaced by its restored
copy, and the notifications and final metric buckets from then on must be
byte-identical to an uninterrupted run's. Then what happens when the rules
change between snapshot and restore, and the same through Bytewax's own
recovery (an execution aborted twice, resumed from its snapshots, with
absence alerts firing across both aborts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.inputs import AbortExecution, FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main
from typing_extensions import override

from flows.detect import DetectOptions, DetectSinks, build_detect_flow
from flows.replay import replay
from flows.sources import Line
from operators import snapshot
from operators.fingerprints import FIRING, Fingerprint, ScheduledAbsenceFingerprint
from operators.metrics import CompiledMetric, MetricColumns, MetricPoint, compile_metric
from operators.notification import Emitted
from operators.routing import RoutingTable
from operators.site import SiteDetector
from operators.snapshot import SnapshotCodec, SnapshotError
from schemas.records import Record, parse_lines
from schemas.rule_loader import load_rules
from schemas.rules import MetricDefinition, Rule
from simulate.corpus import generate_corpus
from sinks.callback import CallbackSink

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
LATENESS = 60_000


# The corpus's cron jobs run every 5 to 15 minutes: on this schedule the slower ones miss runs and fire, and a
# snapshot holds next runs already looked up (operators.fingerprints.ScheduledAbsenceFingerprint).
SCHEDULED = Rule.model_validate({
    "id": "job-late-berlin", "title": "Job late", "severity": "medium", "subsystem": "cron", "signal": "cron",
    "where": {"event": {"in": ["started", "finished"]}}, "group_by": ["job"], "kind": "absence",
    "absence": {"schedule": "*/5 * * * *", "timezone": "Europe/Berlin", "grace": "2m"}, "resolve_after": "1m",
})


# The same jobs with a fixed silence: the slower ones fire for minutes at a time, so firing episodes (and their
# suppressed_count, an instant counter) run across every cut and resume below.
SILENT = Rule.model_validate({
    "id": "job-silent", "title": "Job silent", "severity": "low", "subsystem": "cron", "signal": "cron",
    "where": {"event": {"in": ["started", "finished"]}}, "group_by": ["job"], "kind": "absence",
    "absence": {"after": "4m"}, "resolve_after": "1m",
})


@pytest.fixture(scope="module")
def pack() -> tuple[list[Rule], list[MetricDefinition]]:
    ruleset = load_rules(RULES_DIR)
    return [*ruleset.enabled_rules, SCHEDULED, SILENT], ruleset.metrics


@pytest.fixture(scope="module")
def records() -> list[Record]:
    # 2.5 h of event time: long enough for every rule of the default pack (shift and cron need 2 h) to fire.
    lines = [(number, line.encode()) for number, line in enumerate(generate_corpus(20_000, 24, seed=11, duration_s=9000), 1)]
    parsed = parse_lines(lines)
    records, rejects = parsed[0], parsed[1]
    assert rejects  # the corpus has invalid lines; only valid records reach detectors
    return records


class Sites:
    """A SiteDetector per site, fed in order; collects notifications (as records) and final metric buckets."""

    def __init__(self, table: RoutingTable, metrics: list[CompiledMetric]) -> None:
        self.table = table
        self.metrics = metrics
        self.detectors: dict[str, SiteDetector] = {}
        self.alerts: list[str] = []
        self.buckets = MetricColumns()
        self.late: list[int] = []

    def feed(self, records: Iterable[Record]) -> None:
        out: list[Any] = []
        for record in records:
            detector = self.detectors.get(record.site)
            if detector is None:
                detector = self.detectors[record.site] = SiteDetector(self.table, record.site, LATENESS, self.metrics)
            if not detector.process(record, out, self.buckets):
                self.late.append(record.line)
        self.alerts.extend(notification.to_json() for notification in out)

    def restore_all(self, codec: SnapshotCodec) -> int:
        """Replace every detector by the one its snapshot restores; return the snapshot bytes."""
        size = 0
        for site, detector in list(self.detectors.items()):
            data = codec.dump(detector)
            size += len(data)
            restored = codec.load(data)
            assert restored is not None and restored is not detector
            self.detectors[site] = restored
        return size

    @property
    def points(self) -> list[MetricPoint]:
        return self.buckets.points()

    def finish(self) -> None:
        for site in sorted(self.detectors):
            self.detectors[site].flush_metrics(self.buckets)


def compiled(metrics: list[MetricDefinition]) -> list[tuple[MetricDefinition, CompiledMetric]]:
    return [(metric, compile_metric(metric)) for metric in metrics]


def test_restored_detectors_carry_on_exactly_like_uninterrupted_ones(pack: Any, records: list[Record]) -> None:
    rules, metric_definitions = pack
    table = RoutingTable(rules)
    pairs = compiled(metric_definitions)
    metrics = [metric for _, metric in pairs]
    codec = SnapshotCodec(table, LATENESS, pairs, warn=pytest.fail)
    straight = Sites(table, metrics)
    straight.feed(records)
    straight.finish()
    interrupted = Sites(table, metrics)
    cuts = [len(records) // 5, len(records) // 2, len(records) // 2 + 1, 4 * len(records) // 5]
    start = 0
    for cut in cuts:
        interrupted.feed(records[start:cut])
        start = cut
        before = len(interrupted.alerts)
        if cut == cuts[1]:
            assert_state_worth_snapshotting(interrupted.detectors.values())
        assert interrupted.restore_all(codec) > 0
        assert interrupted.alerts[:before] == straight.alerts[:before]
    interrupted.feed(records[start:])
    interrupted.finish()
    assert len(straight.alerts) > 50
    assert sum(1 for alert in straight.alerts[len(straight.alerts) // 2:]) > 20  # many notifications come after a cut
    assert interrupted.alerts == straight.alerts
    assert interrupted.points == straight.points and len(straight.points) > 1000
    assert interrupted.late == straight.late and straight.late


def assert_state_worth_snapshotting(detectors: Iterable[SiteDetector]) -> None:
    """At the cut the detectors hold what a restore could get wrong: evidence, deadlines, firing episodes, buckets, ticks."""
    fingerprints = [fp for detector in detectors for runner in detector.runners for fp in runner.fps.values()]
    runners = [runner for detector in detectors for runner in detector.runners]
    detectors = list(detectors)
    assert any(fp.ring.entries for fp in fingerprints)
    assert any(runner.heap for runner in runners)
    assert any(detector.dues for detector in detectors)
    assert any(isinstance(fp, Fingerprint) and fp.state == FIRING for fp in fingerprints)
    assert {runner.rule.kind for runner in runners if runner.fps} >= {"threshold", "ratio", "distinct", "absence", "shift", "match"}
    assert any(isinstance(fp, ScheduledAbsenceFingerprint) and fp.expected_for == fp.last for fp in fingerprints)
    assert any(detector.metrics is not None and detector.metrics.open for detector in detectors)
    assert any(detector.ticks for detector in detectors)


def changed(rule: Rule, **fields: Any) -> Rule:
    return rule.model_copy(update=fields)


def test_a_changed_rule_starts_fresh_a_removed_one_is_dropped_and_the_others_keep_their_state(
    pack: Any, records: list[Record]
) -> None:
    rules, metric_definitions = pack
    by_id = {rule.id: rule for rule in rules}
    retuned, removed, retitled = "php-fatal-spike", "login-lockouts", "mail-delivery-failing"
    assert {retuned, removed, retitled} <= set(by_id)
    old_table = RoutingTable(rules)
    old_pairs = compiled(metric_definitions)
    half = len(records) // 2
    before = Sites(old_table, [metric for _, metric in old_pairs])
    before.feed(records[:half])
    snapshots = {site: SnapshotCodec(old_table, LATENESS, old_pairs).dump(detector) for site, detector in before.detectors.items()}

    params = by_id[retuned].threshold
    assert params is not None
    new_rules = [
        changed(rule, threshold=params.model_copy(update={"count": params.count + 1})) if rule.id == retuned
        else changed(rule, title="Mail is failing (renamed)", severity="critical") if rule.id == retitled
        else rule
        for rule in rules if rule.id != removed
    ]
    resolution_changed = "mail_outcomes"
    new_definitions = [
        metric.model_copy(update={"resolution": "5m"}) if metric.name == resolution_changed else metric for metric in metric_definitions
    ]
    new_table = RoutingTable(new_rules)
    new_pairs = compiled(new_definitions)
    warnings: list[str] = []
    codec = SnapshotCodec(new_table, LATENESS, new_pairs, warn=warnings.append)
    after = Sites(new_table, [metric for _, metric in new_pairs])
    after.detectors = {site: restored for site, data in snapshots.items() if (restored := codec.load(data)) is not None}
    assert len(after.detectors) == len(snapshots) > 10
    assert sorted(warnings) == [
        f"recovery: metric {resolution_changed!r} changed or was removed since the snapshot: its open buckets are dropped",
        f"recovery: rule {removed!r} changed or was removed since the snapshot: its state is not restored (a changed rule starts fresh)",
        f"recovery: rule {retuned!r} changed or was removed since the snapshot: its state is not restored (a changed rule starts fresh)",
    ]  # once per rule and metric, not once per site
    for detector in after.detectors.values():
        assert removed not in detector.index
        retuned_runner = detector.runners[detector.index[retuned]]
        assert (retuned_runner.fps, retuned_runner.clock, retuned_runner.instant) == ({}, None, 0)
        assert detector.metrics is not None
        assert all(name != resolution_changed for _, name, _ in detector.metrics.named())
    after.feed(records[half:])
    after.finish()

    # Unchanged rules (the renamed one included) carry on as if nothing happened.
    straight = Sites(old_table, [metric for _, metric in old_pairs])
    straight.feed(records)
    straight.finish()
    untouched = {retuned, removed}
    assert decisions(after.alerts, exclude=untouched) == decisions(straight.alerts[len(before.alerts):], exclude=untouched)
    renamed = [json.loads(alert) for alert in after.alerts if json.loads(alert)["rule"]["id"] == retitled]
    assert renamed and all(alert["rule"]["title"] == "Mail is failing (renamed)" and alert["severity"] == "critical" for alert in renamed)
    # The retuned rule behaves exactly as a rule that started at the restore point.
    fresh = Sites(RoutingTable([rule for rule in new_rules if rule.id == retuned]), [])
    fresh.feed(records[half:])
    assert [alert for alert in after.alerts if json.loads(alert)["rule"]["id"] == retuned] == fresh.alerts
    assert decisions(straight.alerts[len(before.alerts):], only={retuned}) != decisions(fresh.alerts, only={retuned})
    # Metric buckets: the kept metrics go on (buckets that straddle the cut included), the changed one restarts at the cut.
    kept = [point for point in after.points if point.metric != resolution_changed]
    assert kept == [point for point in straight.points[len(before.points):] if point.metric != resolution_changed]
    assert min(point.bucket_start for point in after.points if point.metric == resolution_changed) >= records[half].ts - 300_000


def decisions(alerts: list[str], exclude: set[str] = frozenset(), only: set[str] | None = None) -> list[tuple[Any, ...]]:  # type: ignore[assignment]
    """What a notification decided, without its presentation (title, severity): alert id, seq, status, instants, value."""
    picked = []
    for line in alerts:
        record = json.loads(line)
        rule = record["rule"]["id"]
        if rule in exclude or (only is not None and rule not in only):
            continue
        picked.append((record["alert_id"], record["seq"], record["status"], record["evaluated_at"], json.dumps(record["value"]),
                       record["suppressed_count"], json.dumps(record["evidence"])))
    return picked


def test_a_snapshot_that_cannot_be_read_starts_its_site_fresh_with_one_warning(pack: Any, records: list[Record]) -> None:
    rules, _ = pack
    table = RoutingTable(rules)
    warnings: list[str] = []
    codec = SnapshotCodec(table, LATENESS, warn=warnings.append)
    sites = Sites(table, [])
    sites.feed(records[:2000])
    good = codec.dump(next(iter(sites.detectors.values())))
    assert codec.load(b"not a pickle") is None
    assert codec.load(b"not a pickle either") is None  # same reason (invalid load key), so no second warning
    assert codec.load(good[: len(good) // 2]) is None
    assert codec.load(good) is not None
    assert len(warnings) == 2, warnings  # one per distinct reason
    assert all(warning.startswith("recovery: a site's snapshot cannot be read (") and warning.endswith("that site starts fresh")
               for warning in warnings)


def test_the_codec_refuses_a_detector_with_fields_it_does_not_snapshot(monkeypatch: pytest.MonkeyPatch, pack: Any) -> None:
    # A field the codec does not list: as if SiteDetector had grown one (its class cannot be patched when compiled).
    monkeypatch.setattr(snapshot, "_SITE_FIELDS", snapshot._SITE_FIELDS - {"dues"})
    with pytest.raises(SnapshotError, match="dues"):
        SnapshotCodec(RoutingTable(pack[0]), LATENESS)


# -- through Bytewax's own recovery -----------------------------------------------------------------


class CountingCodec(SnapshotCodec):
    """Counts the detectors restored from a snapshot, so the test knows resuming really happened."""

    restored = 0

    def load(self, data: bytes) -> SiteDetector | None:
        CountingCodec.restored += 1
        return super().load(data)


class AbortingSource(FixedPartitionedSource[list[Line], int]):
    """Chunks of lines, one per batch; execution n aborts on reaching position ``aborts[n]`` (once).

    Not ``bytewax.testing.TestingSource`` (Bytewax 0.21): its resume state is
    the count of items it has emitted, but a resumed execution also steps over
    the ABORT marker that stopped the last one without counting it, so every
    snapshot after the first abort is one item behind what was read. Resumed
    from such a snapshot, it reads again the last chunk the detector snapshot
    of the same epoch already holds: that chunk's records that are not late
    are applied twice, and their instants, counted twice, show as a larger
    ``suppressed_count`` in absence resolutions. The flow is right to apply
    what its source delivers; that offset was wrong. Here the resume state is
    the position of the next chunk, and the aborts are not items.
    """

    def __init__(self, chunks: Sequence[list[Line]], aborts: Sequence[int]) -> None:
        self.chunks = chunks
        self.aborts = list(aborts)  # consumed as they trigger, so a resumed execution goes past them

    @override
    def list_parts(self) -> list[str]:
        return ["chunks"]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _AbortingPartition:
        return _AbortingPartition(self, resume_state or 0)


class _AbortingPartition(StatefulSourcePartition[list[Line], int]):
    def __init__(self, source: AbortingSource, position: int) -> None:
        self.source = source
        self.position = position

    @override
    def next_batch(self) -> list[list[Line]]:
        aborts = self.source.aborts
        if aborts and self.position >= aborts[0]:
            aborts.pop(0)
            raise AbortExecution()
        if self.position >= len(self.source.chunks):
            raise StopIteration
        self.position += 1
        return [self.source.chunks[self.position - 1]]

    @override
    def snapshot(self) -> int:
        return self.position


def test_the_aborting_source_resumes_exactly_after_the_chunks_it_has_read() -> None:
    chunks = [[(n, b"{}")] for n in range(1, 7)]
    source = AbortingSource(chunks, [2, 4])
    parts = [source.build_part("in", "chunks", None)]
    read: list[list[Line]] = []
    for _ in range(3):
        try:
            while True:
                read.extend(parts[-1].next_batch())
        except (AbortExecution, StopIteration):
            parts.append(source.build_part("in", "chunks", parts[-1].snapshot()))
    assert read == chunks  # each chunk once, in order, when every snapshot is committed


def test_an_execution_aborted_twice_and_resumed_from_its_snapshots_gives_the_uninterrupted_notifications(
    tmp_path: Path, pack: Any
) -> None:
    rules, _ = pack
    lines = list(generate_corpus(6000, 8, seed=5, duration_s=7200))
    signals = tmp_path / "signals.jsonl"
    signals.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = replay(str(signals), rules).alerts
    assert len(expected) > 20
    assert {json.loads(alert)["rule"]["id"] for alert in expected if json.loads(alert)["suppressed_count"] > 0} >= {
        SCHEDULED.id, SILENT.id}  # firing episodes that suppress across the aborts
    chunks = [[(start + i + 1, line.encode()) for i, line in enumerate(lines[start:start + 500])]
              for start in range(0, len(lines), 500)]
    source = AbortingSource(chunks, [len(chunks) // 3, 2 * len(chunks) // 3])
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    table = RoutingTable(rules)
    emitted: list[Emitted] = []
    CountingCodec.restored = 0
    # 1. Epochs of 1 ms: snapshots all the way, then an abort. 2. One epoch for the whole execution: nothing it
    # does is committed, so 3. resumes from the snapshots of 1. and reads and detects what 2. did again.
    for epoch in (timedelta(milliseconds=1), timedelta(hours=1), timedelta(milliseconds=1)):
        sinks = DetectSinks(alerts=CallbackSink(emitted.extend), rejects=CallbackSink(lambda _: None),
                            stats=CallbackSink(lambda _: None))
        options = DetectOptions(lateness=LATENESS, snapshots=CountingCodec(table, LATENESS, warn=pytest.fail))
        flow = build_detect_flow(source, table, sinks, options)
        run_main(flow, epoch_interval=epoch, recovery_config=RecoveryConfig(recovery))
    assert CountingCodec.restored > 0
    lines_out = [alert.line for alert in emitted]
    assert len(lines_out) > len(expected)  # what execution 2 emitted, execution 3 emitted again
    assert set(lines_out) == set(expected)
    by_identity: dict[tuple[str, int], set[str]] = {}
    for line in lines_out:
        record = json.loads(line)
        by_identity.setdefault((record["alert_id"], record["seq"]), set()).add(line)
    assert all(len(versions) == 1 for versions in by_identity.values())
