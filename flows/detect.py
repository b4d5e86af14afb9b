"""The detection dataflow: parse and validate, route to sites, detect, emit.

``build_detect_flow`` only wires: validation lives in :mod:`schemas.records`,
routing in :mod:`operators.routing`, detection in :mod:`operators.engine`.
Invalid lines go down their own branch to ``rejects_sink`` (counted and
reported, never dropped). Decisions never use Bytewax's clocks or
``notify_at``: time comes only from the records.

The Bytewax key is the site: one state per site (:class:`SiteDetector`) holds
a :class:`RuleRunner` per rule, and a record is handed to the runners of the
rules it is routed to, in file order. That is exactly what keying by (site, rule) would compute —
each runner still sees its own records in order — but it costs Bytewax one
item per site and chunk instead of one per (site, rule) and chunk, and a
tick (routed to every rule) one dictionary append instead of one per rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from typing_extensions import override

from flows.sources import Line
from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.notification import DEFAULT_LINK_BASE, Notification
from operators.routing import RoutingTable
from operators.site import SiteDetector
from schemas.records import Record, parse_lines

Reject = tuple[int, str]
"""A rejected input line: its number and the one-line reason."""
Alert = tuple[tuple[Any, ...], str]
"""A notification: its output sort key and its compact JSON record."""


class ParseAndRoute:
    """Validate a chunk of lines and group the routed records per site, keeping file order."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table

    def __call__(self, chunk: list[Line]) -> Iterable[tuple[str, Any]]:
        """Tagged outputs: ``reject`` per bad line, one ``valid`` count, ``work`` per site."""
        records, rejects = parse_lines(chunk)
        out: list[tuple[str, Any]] = [("reject", reject) for reject in rejects]
        out.append(("valid", len(records)))
        groups: dict[str, list[Record]] = {}
        routed = self.table.by_type
        for record in records:
            if record.type in routed:
                site_records = groups.get(record.site)
                if site_records is None:
                    groups[record.site] = [record]
                else:
                    site_records.append(record)
        out.extend(("work", item) for item in groups.items())
        return out


class DetectLogic(StatefulBatchLogic[list[Record], tuple[str, Any], Any]):
    """Bytewax state for one site: its :class:`SiteDetector`, fed in arrival order."""

    def __init__(self, table: RoutingTable, lateness: int, link_base: str) -> None:
        self.table = table
        self.lateness = lateness
        self.link_base = link_base
        self.detector: SiteDetector | None = None

    @override
    def on_batch(self, values: list[list[Record]]) -> tuple[list[tuple[str, Any]], bool]:
        out: list[Notification] = []
        emitted: list[tuple[str, Any]] = []
        detector = self.detector
        for records in values:
            if detector is None:
                detector = self.detector = SiteDetector(self.table, records[0].site, self.lateness)
            process = detector.process
            for record in records:
                if not process(record, out):
                    emitted.append(("late", record.line))
        if out:
            link_base = self.link_base
            emitted.extend(("alert", (n.sort_key(), n.to_json(link_base))) for n in out)
        return emitted, StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> Any:
        # Recovery (restoring runners from snapshots) arrives with the live path; replay needs none.
        return None


def build_detect_flow(
    source: Source[list[Line]],
    alerts_sink: Sink[Alert],
    rejects_sink: Sink[Reject],
    stats_sink: Sink[tuple[str, int]],
    table: RoutingTable,
    lateness: int = DEFAULT_ALLOWED_LATENESS_MS,
    link_base: str = DEFAULT_LINK_BASE,
) -> Dataflow:
    """Wire source → parse/route → detect → sinks.

    ``stats_sink`` receives ``("valid", n)`` per chunk and ``("late", line)``
    per record that was late for at least one rule it was routed to.
    """
    flow = Dataflow("logystera_detect")
    chunks = op.input("signals", flow, source)
    parsed = op.flat_map("parse_route", chunks, ParseAndRoute(table))
    work = op.branch("is_work", parsed, lambda item: item[0] == "work")
    keyed = op.map("keyed", work.trues, lambda item: item[1])
    side = op.branch("is_reject", work.falses, lambda item: item[0] == "reject")
    op.output("rejects", op.map("reject", side.trues, lambda item: item[1]), rejects_sink)
    results = op.stateful_batch("detect", keyed, lambda _resume: DetectLogic(table, lateness, link_base))
    outcomes = op.key_rm("outcomes", results)
    alerts = op.branch("is_alert", outcomes, lambda item: item[0] == "alert")
    op.output("alerts", op.map("alert", alerts.trues, lambda item: item[1]), alerts_sink)
    op.output("stats", op.merge("stats_merge", side.falses, alerts.falses), stats_sink)
    return flow
