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

from flows.cluster import site_shard
from flows.sources import Line, chunk_index
from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.metrics import CompiledMetric, MetricPoint
from operators.notification import DEFAULT_LINK_BASE, Decision, Emitted, Notification, decision_counts
from operators.routing import RoutingTable
from operators.site import SiteDetector
from operators.snapshot import SnapshotCodec
from schemas.records import Record, parse_lines, salvage_site_and_ts
from schemas.store import alert_rows, metric_row, rejected_row, signal_columns
from sinks.callback import OwnerSink
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


PendingReject = tuple[int, str, str, int | None, int]
"""A rejected line's store row before the latest valid ``ts`` of earlier chunks is known:
(line, salvaged site, reason, its own ``ts`` or None, the latest valid ``ts`` before it in its chunk or 0)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """What :class:`ParseAndRoute` makes of one chunk."""

    rejects: list[Reject]
    valid: int
    work: list[tuple[str, list[Record]]]  # the routed records per site, in file order: the detect step's input
    store: list[StoreItem]  # signals and (unordered flow) rejected rows, with a store
    pending: list[PendingReject] = field(default_factory=list)  # ordered flow, with a store: rejected rows to finish
    latest_ts: int = 0  # the largest valid ts of the chunk (0: none)
    chunk: int = 0  # ordered flow: which chunk of the file this is


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
    That attribution depends only on the input order, never on chunking: in
    the unordered (live) flow this step runs on the worker that reads the
    partition, in order; in the ordered (replay) flow, whose chunks are parsed
    by every worker, the rows are finished by :class:`ChunkOrder`, which sees
    the chunks in file order (``chunk_lines`` set: the chunk's index is known).
    """

    def __init__(self, table: RoutingTable, store_source: str | None = None, metric_types: Iterable[str] = (),
                 chunk_lines: int | None = None) -> None:
        self.table = table
        self.store_source = store_source
        # A type only a metric reads must still reach its site's detector, or the metric never counts it.
        self.routed = set(table.by_type).union(metric_types)
        self.chunk_lines = chunk_lines
        self.latest_ts = 0

    def __call__(self, chunk: list[Line]) -> Parsed:
        """The chunk's rejects, valid count, records per site and (with a store) rows."""
        by_site: dict[str, list[Record]] = {}
        records, rejects = parse_lines(chunk, self.routed, by_site)
        store: list[StoreItem] = []
        pending: list[PendingReject] = []
        latest = max(map(_ts_of, records)) if records else 0
        if self.store_source is not None:
            store.append(("signals", signal_columns(records)))
            if rejects:
                pending = self._pending_rejects(chunk, records, rejects)
            if self.chunk_lines is None:
                if pending:
                    store.append(("rejected", finish_rejected(self.store_source, pending, self.latest_ts)))
                    pending = []
                self.latest_ts = max(self.latest_ts, latest)
        index = chunk_index(chunk, self.chunk_lines) if self.chunk_lines is not None else 0
        return Parsed(rejects, len(records), list(by_site.items()), store, pending, latest, index)

    def _pending_rejects(self, chunk: list[Line], records: list[Record], rejects: list[Reject]) -> list[PendingReject]:
        raw_of = dict(chunk)
        # No object per record: under the store every allocation that lives to the next collection costs GC time.
        lines = list(map(_line_of, records))
        if lines != sorted(lines):  # parse_lines keeps the chunk's order, which is line order
            records = sorted(records, key=_line_of)
            lines = list(map(_line_of, records))
        latest, before = 0, 0
        rows: list[PendingReject] = []
        for line, reason in rejects:
            upto = bisect_left(lines, line, before)
            if upto > before:
                latest = max(latest, max(map(_ts_of, records[before:upto])))
                before = upto
            site, ts = salvage_site_and_ts(raw_of[line])
            rows.append((line, site, reason, ts, latest))
        return rows


def finish_rejected(source: str, pending: list[PendingReject], latest_before_chunk: int) -> list[tuple[Any, ...]]:
    """The ``rejected`` rows of a chunk, given the latest valid ``ts`` of every chunk before it."""
    return [rejected_row(source, line, site, reason, ts if ts is not None else max(latest_before_chunk, latest))
            for line, site, reason, ts, latest in pending]


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
        detector = self.detector
        if detector is None:
            detector = self.detector = SiteDetector(self.table, values[0][0].site, self.lateness, self.metrics)
        detected = detect_batch(detector, values, self.link_base, bool(self.metrics))
        return ([] if detected is None else [detected]), StatefulBatchLogic.RETAIN

    @override
    def on_eof(self) -> tuple[list[Detected], bool]:
        # The input has ended: every open metric bucket is final. Not under recovery (snapshots): there the
        # end of the input is a pause, and the buckets stay open in the snapshot for the next run to finish.
        if self.detector is None or not self.metrics or self.snapshots is not None:
            return [], StatefulBatchLogic.RETAIN
        return [final_metrics(self.detector)], StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> bytes | None:
        # Bytewax asks at every epoch's end, recovery or not: only a flow with recovery pays for the bytes.
        if self.snapshots is None or self.detector is None:
            return None
        return self.snapshots.dump(self.detector)


def detect_batch(detector: SiteDetector, values: Iterable[list[Record]], link_base: str, metrics: bool) -> Detected | None:
    """Feed one site's detector its records, in order: what came out, or None for nothing.

    Called once per site and chunk: builds only what the batch needs (no metric points without metrics,
    nothing at all for the usual batch that makes no notification, is not late and closes no bucket).
    """
    out: list[Notification] = []
    points: list[MetricPoint] | None = [] if metrics else None
    late: list[int] = []
    for records in values:
        late += detector.process_all(records, out, points)
    if not (out or late or points):
        return None
    alerts = [notification.emitted(link_base) for notification in out]
    stats = FlowStats(late=late, decisions=decision_counts(alerts)) if out or late else None
    rows: list[StoreItem] = [("metrics", [metric_row(point) for point in points])] if points else []
    return Detected(alerts, stats, rows)


def final_metrics(detector: SiteDetector) -> Detected:
    """The site's open metric buckets, written as final (the input has ended)."""
    return Detected([], None, [("metrics", [metric_row(point) for point in detector.flush_metrics()])])


ShardWork = tuple[int, list[tuple[str, list[Record]]]]
"""One chunk's routed records of the sites of one shard: (chunk index, [(site, records)])."""


class ShardLogic(StatefulBatchLogic[ShardWork, Detected, None]):
    """The detectors of the sites of one shard, fed their records in file order (the ordered, replay flow).

    Every worker parses chunks of the file, so a site's records arrive from
    several workers, in no particular order between them. Every parsed chunk
    sends every shard its part (empty or not): the shard holds chunks that
    arrive early and runs them strictly in chunk order, so each site sees
    exactly the sequence of records a single reader would have given it —
    and the output, lateness included, is the same for any cluster shape.
    """

    def __init__(self, table: RoutingTable, lateness: int, link_base: str, metrics: list[CompiledMetric]) -> None:
        self.table = table
        self.lateness = lateness
        self.link_base = link_base
        self.metrics = metrics
        self.sites: dict[str, SiteDetector] = {}
        self.next_chunk = 0
        self.early: dict[int, list[tuple[str, list[Record]]]] = {}

    @override
    def on_batch(self, values: list[ShardWork]) -> tuple[list[Detected], bool]:
        early, sites, link_base, metrics = self.early, self.sites, self.link_base, bool(self.metrics)
        for index, work in values:
            early[index] = work
        out: list[Detected] = []
        while self.next_chunk in early:
            for site, records in early.pop(self.next_chunk):
                detector = sites.get(site)
                if detector is None:
                    detector = sites[site] = SiteDetector(self.table, site, self.lateness, self.metrics)
                detected = detect_batch(detector, (records,), link_base, metrics)
                if detected is not None:
                    out.append(detected)
            self.next_chunk += 1
        return out, StatefulBatchLogic.RETAIN

    @override
    def on_eof(self) -> tuple[list[Detected], bool]:
        if not self.metrics:
            return [], StatefulBatchLogic.RETAIN
        return [final_metrics(self.sites[site]) for site in sorted(self.sites)], StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> None:
        return None  # the ordered flow is replay's, which has no recovery


@dataclass(frozen=True, slots=True)
class Ordered:
    """What :class:`ChunkOrder` releases for one chunk, in file order."""

    rejects: list[Reject]
    store: list[StoreItem]


ChunkReport = tuple[int, list[Reject], list[PendingReject], int]
"""What :class:`ChunkOrder` needs of a parsed chunk (not its records): index, rejects, pending rows, latest ``ts``."""


def chunk_report(parsed: Parsed) -> ChunkReport:
    """The part of a parsed chunk that goes to :class:`ChunkOrder`."""
    return parsed.chunk, parsed.rejects, parsed.pending, parsed.latest_ts


class ChunkOrder(StatefulBatchLogic[ChunkReport, Ordered, None]):
    """The parsed chunks' rejected lines in file order, and their store rows finished (one key: one worker).

    Rejected lines are reported in line order whatever worker parsed them,
    and a rejected line without a ``ts`` of its own is attributed to the
    latest valid ``ts`` before it in the file — which only a step that sees
    the chunks in order knows.
    """

    def __init__(self, store_source: str | None) -> None:
        self.store_source = store_source
        self.next_chunk = 0
        self.latest_ts = 0
        self.early: dict[int, ChunkReport] = {}

    @override
    def on_batch(self, values: list[ChunkReport]) -> tuple[list[Ordered], bool]:
        early = self.early
        for report in values:
            early[report[0]] = report
        out: list[Ordered] = []
        while self.next_chunk in early:
            _, rejects, pending, latest_ts = early.pop(self.next_chunk)
            if rejects:
                store: list[StoreItem] = []
                if self.store_source is not None and pending:
                    store.append(("rejected", finish_rejected(self.store_source, pending, self.latest_ts)))
                out.append(Ordered(rejects, store))
            self.latest_ts = max(self.latest_ts, latest_ts)
            self.next_chunk += 1
        return out, StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> None:
        return None


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
    ordering: Ordering | None = None


@dataclass(frozen=True)
class Ordering:
    """The ordered (replay) flow: the file's chunks of ``chunk_lines`` lines are read by several partitions.

    Sites are spread over ``shard_keys`` (:func:`flows.cluster.shard_keys`:
    one per worker) and each shard runs its chunks in file order
    (:class:`ShardLogic`); rejected lines are put back in order by
    :class:`ChunkOrder`.
    """

    chunk_lines: int
    shard_keys: tuple[str, ...] = ("0",)


@dataclass(frozen=True)
class DetectOutputs:
    """The detection step's results as typed streams (as Bytewax's ``KafkaOpOut(oks, errs)``)."""

    alerts: Stream[Emitted]
    rejects: Stream[Reject]
    stats: Stream[FlowStats]
    store_rows: Stream[StoreItem] | None  # with a store: signals, notifications and evidence, metric buckets, rejected lines


@dataclass(frozen=True)
class DetectSinks:
    """Where the flow's outputs go (``store`` None: no store).

    Items for a :class:`sinks.callback.OwnerSink` (one partition, in the
    cluster's process 0) are keyed for it.
    """

    alerts: Sink[Emitted] | Sink[tuple[str, Emitted]]
    rejects: Sink[Reject] | Sink[tuple[str, Reject]]
    stats: Sink[FlowStats] | Sink[tuple[str, FlowStats]]
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
    snapshots, lateness, ordering = options.snapshots, options.lateness, options.ordering
    if snapshots is not None and (snapshots.table is not table or snapshots.lateness != lateness or snapshots.metrics != site_metrics):
        raise ValueError("snapshots: the codec was made for other rules, lateness or metrics than this flow's")
    if snapshots is not None and ordering is not None:
        raise ValueError("the ordered flow has no recovery")
    metric_types = {signal_type for metric in site_metrics for signal_type in metric.types}
    store_source = options.store_source if storing else None
    parse = ParseAndRoute(table, store_source, metric_types, ordering.chunk_lines if ordering is not None else None)
    parsed = op.map("parse_route", chunks, parse)
    store_parts: list[Stream[StoreItem]] = [op.flat_map("store_parsed", parsed, lambda chunk: chunk.store)]
    if ordering is None:
        work = op.flat_map("work", parsed, lambda chunk: chunk.work)
        results = op.stateful_batch(
            "detect", work, lambda resume: DetectLogic(table, lateness, options.link_base, site_metrics, snapshots, resume),
        )
        rejects = op.flat_map("rejected_lines", parsed, lambda chunk: chunk.rejects)
    else:
        keys = ordering.shard_keys
        shard_work = op.flat_map("shard_work", parsed, lambda chunk: _shard_items(chunk, keys))
        results = op.stateful_batch(
            "detect", shard_work, lambda resume: ShardLogic(table, lateness, options.link_base, site_metrics),
        )
        reports = op.key_on("order_key", op.map("chunk_report", parsed, chunk_report), lambda _: "order")
        ordered = op.key_rm("ordered", op.stateful_batch("order", reports, lambda resume: ChunkOrder(store_source)))
        rejects = op.flat_map("rejected_lines", ordered, lambda chunk: chunk.rejects)
        store_parts.append(op.flat_map("store_rejected", ordered, lambda chunk: chunk.store))
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
            *store_parts,
            op.flat_map("store_metrics", detected, lambda batch: batch.metrics),
            op.flat_map("alert_rows", alerts, _store_items),
        )
    return DetectOutputs(alerts, rejects, stats, store_rows)


def _shard_items(parsed: Parsed, keys: tuple[str, ...]) -> list[tuple[str, ShardWork]]:
    """A chunk's work for every shard, empty or not: a shard runs chunk ``n`` only once it has had every chunk before."""
    parts: list[list[tuple[str, list[Record]]]] = [[] for _ in keys]
    shards = len(keys)
    for site, records in parsed.work:
        parts[site_shard(site, shards)].append((site, records))
    return [(key, (parsed.chunk, part)) for key, part in zip(keys, parts, strict=True)]


def build_detect_flow(
    source: Source[list[Line]], table: RoutingTable, sinks: DetectSinks, options: DetectOptions | None = None,
) -> Dataflow:
    """Wire source → :func:`detect` → sinks; with a ``sinks.store``, everything also goes to the store."""
    flow = Dataflow("logystera_detect")
    outputs = detect(op.input("signals", flow, source), table, options or DetectOptions(), sinks.store is not None)
    _output("alerts", outputs.alerts, sinks.alerts)
    _output("rejects", outputs.rejects, sinks.rejects)
    _output("stats", outputs.stats, sinks.stats)
    if sinks.store is not None and outputs.store_rows is not None:
        op.output("store", outputs.store_rows, sinks.store)
    return flow


def _output(step_id: str, stream: Stream[Any], sink: Sink[Any]) -> None:
    if isinstance(sink, OwnerSink):
        stream = op.key_on(f"{step_id}_to_owner", stream, lambda _: "owner")
    op.output(step_id, stream, sink)
