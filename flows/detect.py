"""The detection dataflow: parse and validate, route to sites, detect, emit.

``build_detect_flow`` only wires: validation lives in :mod:`schemas.records`,
routing in :mod:`operators.routing`, detection in :mod:`operators.engine`.
Invalid lines go down their own branch to ``rejects_sink`` (counted and
reported, never dropped). Decisions never use Bytewax's clock-driven windows
or wake-ups: time comes only from the records.

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
from operator import attrgetter
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from typing_extensions import override

from flows.sources import Line
from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.metrics import CompiledMetric, MetricPoint
from operators.notification import DEFAULT_LINK_BASE, Notification
from operators.routing import RoutingTable
from operators.site import SiteDetector
from operators.snapshot import SnapshotCodec
from schemas.records import Record, parse_lines, salvage_site_and_ts
from schemas.store import alert_rows, metric_row, rejected_row, signal_columns
from sinks.clickhouse import StoreItem

Reject = tuple[int, str]
"""A rejected input line: its number and the one-line reason."""
Alert = tuple[tuple[Any, ...], str]
"""A notification: its output sort key and its compact JSON record."""

_line_of, _ts_of = attrgetter("line"), attrgetter("ts")


class ParseAndRoute:
    """Validate a chunk of lines and group the routed records per site, keeping file order.

    With ``store_source`` set it also emits the rows for the store: every
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

    def __call__(self, chunk: list[Line]) -> Iterable[tuple[str, Any]]:
        """Tagged outputs: ``reject`` per bad line, one ``valid`` count, ``work`` per site, ``store`` rows."""
        by_site: dict[str, list[Record]] = {}
        records, rejects = parse_lines(chunk, self.routed, by_site)
        out: list[tuple[str, Any]] = [("reject", reject) for reject in rejects]
        out.append(("valid", len(records)))
        out.extend(("work", item) for item in by_site.items())
        if self.store_source is not None:
            out.append(("store", ("signals", signal_columns(records))))
            if rejects:
                out.append(("store", ("rejected", self._rejected_rows(chunk, records, rejects))))
            if records:
                self.latest_ts = max(self.latest_ts, max(map(_ts_of, records)))
        return out

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


class DetectLogic(StatefulBatchLogic[list[Record], tuple[str, Any], Any]):
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
    def on_batch(self, values: list[list[Record]]) -> tuple[list[tuple[str, Any]], bool]:
        # Called once per site and chunk: builds only what the batch needs (no metric points without metrics).
        out: list[Notification] = []
        points: list[MetricPoint] | None = [] if self.metrics else None
        detector = self.detector
        if detector is None:
            detector = self.detector = SiteDetector(self.table, values[0][0].site, self.lateness, self.metrics)
        late: list[int] = []
        for records in values:
            late += detector.process_all(records, out, points)
        emitted: list[tuple[str, Any]] = [("late", line) for line in late]
        if out:
            link_base = self.link_base
            emitted.extend(("alert", (n.sort_key(), n.to_json(link_base))) for n in out)
        if points:
            emitted.append(("store", ("metrics", [metric_row(point) for point in points])))
        return emitted, StatefulBatchLogic.RETAIN

    @override
    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        # The input has ended: every open metric bucket is final. Not under recovery (snapshots): there the
        # end of the input is a pause, and the buckets stay open in the snapshot for the next run to finish.
        if self.detector is None or not self.metrics or self.snapshots is not None:
            return [], StatefulBatchLogic.RETAIN
        points = self.detector.flush_metrics()
        return [("store", ("metrics", [metric_row(point) for point in points]))], StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> bytes | None:
        # Bytewax asks at every epoch's end, recovery or not: only a flow with recovery pays for the bytes.
        if self.snapshots is None or self.detector is None:
            return None
        return self.snapshots.dump(self.detector)


def _tagged(step_id: str, stream: Any, tag: str) -> Any:
    return op.filter_map(step_id, stream, lambda item: item[1] if item[0] == tag else None)


def _store_items(alert: Alert) -> list[StoreItem]:
    alert_row, evidence = alert_rows(alert[1])
    return [("alerts", [alert_row]), ("evidence", evidence)]


def build_detect_flow(
    source: Source[list[Line]],
    alerts_sink: Sink[Alert],
    rejects_sink: Sink[Reject],
    stats_sink: Sink[tuple[str, int]],
    table: RoutingTable,
    lateness: int = DEFAULT_ALLOWED_LATENESS_MS,
    link_base: str = DEFAULT_LINK_BASE,
    store_sink: Sink[StoreItem] | None = None,
    store_source: str = "replay",
    metrics: list[CompiledMetric] | None = None,
    snapshots: SnapshotCodec | None = None,
) -> Dataflow:
    """Wire source → parse/route → detect → sinks.

    ``stats_sink`` receives ``("valid", n)`` per chunk and ``("late", line)``
    per record that was late for at least one rule it was routed to. With a
    ``store_sink``, every valid signal, notification (with its evidence),
    final metric bucket and rejected line also goes to the store, as
    ``(table, rows)`` items; ``store_source`` names the input in ``rejected``.
    With ``snapshots`` (a flow run with Bytewax recovery), each site's
    detector is snapshotted at the end of every epoch that touched it and
    restored from that on resume; the codec must be made for this flow's
    ``table``, ``lateness`` and (stored) ``metrics``.
    """
    flow = Dataflow("logystera_detect")
    chunks = op.input("signals", flow, source)
    storing = store_sink is not None
    site_metrics = (metrics or []) if storing else []
    metric_types = {signal_type for metric in site_metrics for signal_type in metric.types}
    if snapshots is not None and (snapshots.table is not table or snapshots.lateness != lateness or snapshots.metrics != site_metrics):
        raise ValueError("snapshots: the codec was made for other rules, lateness or metrics than this flow's")
    parsed = op.flat_map("parse_route", chunks, ParseAndRoute(table, store_source if storing else None, metric_types))
    keyed = _tagged("work", parsed, "work")
    op.output("rejects", _tagged("reject", parsed, "reject"), rejects_sink)
    results = op.stateful_batch("detect", keyed, lambda resume: DetectLogic(table, lateness, link_base, site_metrics, snapshots, resume))
    outcomes = op.key_rm("outcomes", results)
    alerts = _tagged("alert", outcomes, "alert")
    op.output("alerts", alerts, alerts_sink)
    valid = op.map("valid", _tagged("valid_count", parsed, "valid"), lambda n: ("valid", n))
    late = op.map("late", _tagged("late_line", outcomes, "late"), lambda line: ("late", line))
    op.output("stats", op.merge("stats_merge", valid, late), stats_sink)
    if store_sink is not None:
        rows = op.merge(
            "store_rows",
            _tagged("store_parsed", parsed, "store"),
            _tagged("store_detected", outcomes, "store"),
            op.flat_map("alert_rows", alerts, _store_items),
        )
        op.output("store", rows, store_sink)
    return flow
