"""The detection dataflow: parse and validate, route to sites, detect, emit.

``build_detect_flow`` only wires: validation lives in :mod:`schemas.records`,
routing in :mod:`operators.routing`, detection in :mod:`operators.engine`.
Each output is a typed stream of :class:`DetectOutputs`; invalid lines go
down their own, ``rejects`` (counted and reported, never dropped). Decisions
never use Bytewax's clock-driven windows or wake-ups: time comes only from
the records.

The Bytewax key is the site: one state per site (:class:`SiteDetector`) holds
a :class:`RuleRunner` per rule, and a record is handed to the runners of the
rules it is routed to, in file order. That is exactly what keying by (site, rule) would compute —
each runner still sees its own records in order — but it costs Bytewax one
item per site and chunk instead of one per (site, rule) and chunk, and a
tick (routed to every rule) one dictionary append instead of one per rule.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from typing_extensions import override

from flows.sources import Line
from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.metrics import CompiledMetric, MetricPoint
from operators.notification import DEFAULT_LINK_BASE, Decision, Emitted, Notification, decision_counts
from operators.routing import RoutingTable
from operators.site import SiteDetector
from operators.snapshot import SnapshotCodec
from schemas.records import Record, parse_lines, salvage_site_and_ts
from schemas.store import alert_rows, metric_row, rejected_row, signal_columns
from sinks.clickhouse import StoreItem

Reject = tuple[int, str]
"""A rejected input line: its number and the one-line reason."""

_line_of, _ts_of = attrgetter("line"), attrgetter("ts")


@dataclass(frozen=True, slots=True)
class FlowStats:
    """What the flow counts besides its outputs, in pieces the receiver adds up.

    ``valid`` records of a chunk; ``late``: lines late for at least one rule
    they were routed to; ``decisions`` by (rule id, reason), as
    :func:`operators.notification.decision_counts` counts them.
    """

    valid: int = 0
    late: list[int] = field(default_factory=list)
    decisions: dict[tuple[str, Decision], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Parsed:
    """What :class:`ParseAndRoute` makes of one chunk."""

    rejects: list[Reject]
    valid: int
    work: list[tuple[str, list[Record]]]  # the routed records per site, in file order: the detect step's input
    store: list[StoreItem]  # signals and rejected rows, with a store


@dataclass(frozen=True, slots=True)
class Detected:
    """What one site's detector made of one batch (or, ``metrics`` only, at the end of the input)."""

    alerts: list[Emitted]
    stats: FlowStats | None
    metrics: list[StoreItem]


class ParseAndRoute:
    """Validate a chunk of lines and group the routed records per site, keeping file order.

    With ``store_source`` set it also makes the rows for the store: every
    valid signal, and every rejected line (without its content) attributed to
    its own ``ts`` or, when it has none, to the latest valid ``ts`` before it.
    That attribution depends only on the input order, never on chunking: this
    step runs on the single worker that reads the input.
    """

    def __init__(self, table: RoutingTable, store_source: str | None = None, metric_types: Iterable[str] = ()) -> None:
        self.table = table
        self.store_source = store_source
        # A type only a metric reads must still reach its site's detector, or the metric never counts it.
        self.routed = set(table.by_type).union(metric_types)
        self.latest_ts = 0

    def __call__(self, chunk: list[Line]) -> Parsed:
        """The chunk's rejects, valid count, records per site and (with a store) rows."""
        by_site: dict[str, list[Record]] = {}
        records, rejects = parse_lines(chunk, self.routed, by_site)
        store: list[StoreItem] = []
        if self.store_source is not None:
            store.append(("signals", signal_columns(records)))
            if rejects:
                store.append(("rejected", self._rejected_rows(chunk, records, rejects)))
            if records:
                self.latest_ts = max(self.latest_ts, max(map(_ts_of, records)))
        return Parsed(rejects, len(records), list(by_site.items()), store)

    def _rejected_rows(self, chunk: list[Line], records: list[Record], rejects: list[Reject]) -> list[tuple[Any, ...]]:
        assert self.store_source is not None
        raw_of = dict(chunk)
        # No object per record: under the store every allocation that lives to the next collection costs GC time.
        lines = list(map(_line_of, records))
        if lines != sorted(lines):  # parse_lines keeps the chunk's order, which is line order
            records = sorted(records, key=_line_of)
            lines = list(map(_line_of, records))
        latest, before = self.latest_ts, 0
        rows = []
        for line, reason in rejects:
            upto = bisect_left(lines, line, before)
            if upto > before:
                latest = max(latest, max(map(_ts_of, records[before:upto])))
                before = upto
            site, ts = salvage_site_and_ts(raw_of[line])
            rows.append(rejected_row(self.store_source, line, site, reason, ts if ts is not None else latest))
        return rows


class DetectLogic(StatefulBatchLogic[list[Record], Detected, Any]):
    """Bytewax state for one site: its :class:`SiteDetector`, fed in arrival order."""

    def __init__(
        self, table: RoutingTable, lateness: int, link_base: str, metrics: list[CompiledMetric],
        snapshots: SnapshotCodec | None = None, resume: bytes | None = None,
    ) -> None:
        self.table = table
        self.lateness = lateness
        self.link_base = link_base
        self.metrics = metrics
        self.snapshots = snapshots
        self.detector: SiteDetector | None = None if resume is None or snapshots is None else snapshots.load(resume)

    @override
    def on_batch(self, values: list[list[Record]]) -> tuple[list[Detected], bool]:
        # Called once per site and chunk: builds only what the batch needs (no metric points without metrics,
        # nothing at all for the usual batch that makes no notification, is not late and closes no bucket).
        out: list[Notification] = []
        points: list[MetricPoint] | None = [] if self.metrics else None
        detector = self.detector
        if detector is None:
            detector = self.detector = SiteDetector(self.table, values[0][0].site, self.lateness, self.metrics)
        late: list[int] = []
        for records in values:
            late += detector.process_all(records, out, points)
        if not (out or late or points):
            return [], StatefulBatchLogic.RETAIN
        link_base = self.link_base
        alerts = [notification.emitted(link_base) for notification in out]
        stats = FlowStats(late=late, decisions=decision_counts(alerts)) if out or late else None
        metrics: list[StoreItem] = [("metrics", [metric_row(point) for point in points])] if points else []
        return [Detected(alerts, stats, metrics)], StatefulBatchLogic.RETAIN

    @override
    def on_eof(self) -> tuple[list[Detected], bool]:
        # The input has ended: every open metric bucket is final. Not under recovery (snapshots): there the
        # end of the input is a pause, and the buckets stay open in the snapshot for the next run to finish.
        if self.detector is None or not self.metrics or self.snapshots is not None:
            return [], StatefulBatchLogic.RETAIN
        points = self.detector.flush_metrics()
        return [Detected([], None, [("metrics", [metric_row(point) for point in points])])], StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> bytes | None:
        # Bytewax asks at every epoch's end, recovery or not: only a flow with recovery pays for the bytes.
        if self.snapshots is None or self.detector is None:
            return None
        return self.snapshots.dump(self.detector)


@dataclass(frozen=True)
class DetectOptions:
    """How the flow detects and what it writes besides notifications.

    ``metrics`` and ``store_source`` (the input's name in ``rejected``) count
    only with a store. With ``snapshots`` (a flow run with Bytewax recovery),
    each site's detector is snapshotted at the end of every epoch that
    touched it and restored from that on resume; the codec must be made for
    this flow's rules, ``lateness`` and (stored) ``metrics``.
    """

    lateness: int = DEFAULT_ALLOWED_LATENESS_MS
    link_base: str = DEFAULT_LINK_BASE
    store_source: str = "replay"
    metrics: list[CompiledMetric] = field(default_factory=list)
    snapshots: SnapshotCodec | None = None


@dataclass(frozen=True)
class DetectOutputs:
    """The detection step's results as typed streams (as Bytewax's ``KafkaOpOut(oks, errs)``)."""

    alerts: Stream[Emitted]
    rejects: Stream[Reject]
    stats: Stream[FlowStats]
    store_rows: Stream[StoreItem] | None  # with a store: signals, notifications and evidence, metric buckets, rejected lines


@dataclass(frozen=True)
class DetectSinks:
    """Where the flow's outputs go (``store`` None: no store)."""

    alerts: Sink[Emitted]
    rejects: Sink[Reject]
    stats: Sink[FlowStats]
    store: Sink[StoreItem] | None = None


def _store_items(alert: Emitted) -> list[StoreItem]:
    alert_row, evidence = alert_rows(alert.record, alert.line)
    return [("alerts", [alert_row]), ("evidence", evidence)]


def detect(chunks: Stream[list[Line]], table: RoutingTable, options: DetectOptions, storing: bool) -> DetectOutputs:
    """Parse and route the chunks of numbered lines, detect per site: the streams of what comes out.

    ``stats`` carries a :class:`FlowStats` per chunk (its valid records) and
    per batch of a site that had late records or notifications. With
    ``storing``, ``store_rows`` carries every valid signal, notification (with
    its evidence), final metric bucket of ``options.metrics`` and rejected
    line, as ``(table, rows)`` items.
    """
    site_metrics = options.metrics if storing else []
    snapshots, lateness = options.snapshots, options.lateness
    if snapshots is not None and (snapshots.table is not table or snapshots.lateness != lateness or snapshots.metrics != site_metrics):
        raise ValueError("snapshots: the codec was made for other rules, lateness or metrics than this flow's")
    metric_types = {signal_type for metric in site_metrics for signal_type in metric.types}
    parse = ParseAndRoute(table, options.store_source if storing else None, metric_types)
    parsed = op.map("parse_route", chunks, parse)
    work = op.flat_map("work", parsed, lambda chunk: chunk.work)
    results = op.stateful_batch(
        "detect", work, lambda resume: DetectLogic(table, lateness, options.link_base, site_metrics, snapshots, resume),
    )
    detected = op.key_rm("detected", results)
    alerts = op.flat_map("notifications", detected, lambda batch: batch.alerts)
    stats = op.merge(
        "stats_merge",
        op.map("valid", parsed, lambda chunk: FlowStats(valid=chunk.valid)),
        op.filter_map("detect_stats", detected, lambda batch: batch.stats),
    )
    store_rows = None
    if storing:
        store_rows = op.merge(
            "store_rows",
            op.flat_map("store_parsed", parsed, lambda chunk: chunk.store),
            op.flat_map("store_metrics", detected, lambda batch: batch.metrics),
            op.flat_map("alert_rows", alerts, _store_items),
        )
    return DetectOutputs(alerts, op.flat_map("rejected_lines", parsed, lambda chunk: chunk.rejects), stats, store_rows)


def build_detect_flow(
    source: Source[list[Line]], table: RoutingTable, sinks: DetectSinks, options: DetectOptions | None = None,
) -> Dataflow:
    """Wire source → :func:`detect` → sinks; with a ``sinks.store``, everything also goes to the store."""
    flow = Dataflow("logystera_detect")
    outputs = detect(op.input("signals", flow, source), table, options or DetectOptions(), sinks.store is not None)
    op.output("alerts", outputs.alerts, sinks.alerts)
    op.output("rejects", outputs.rejects, sinks.rejects)
    op.output("stats", outputs.stats, sinks.stats)
    if sinks.store is not None and outputs.store_rows is not None:
        op.output("store", outputs.store_rows, sinks.store)
    return flow
