"""The detection dataflow: parse and validate, route to (site, rule), detect, emit.

``build_detect_flow`` only wires: validation lives in :mod:`schemas.records`,
routing in :mod:`operators.routing`, detection in :mod:`operators.engine`.
Invalid lines go down their own branch to ``rejects_sink`` (counted and
reported, never dropped). Decisions never use Bytewax's clocks or
``notify_at``: time comes only from the records.
"""

from __future__ import annotations

from collections import defaultdict
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
from operators.engine import RuleRunner
from operators.notification import DEFAULT_LINK_BASE, Notification
from operators.routing import RoutingTable
from schemas.records import Record, parse_record

Reject = tuple[int, str]
"""A rejected input line: its number and the one-line reason."""
Alert = tuple[tuple[Any, ...], str]
"""A notification: its output sort key and its compact JSON record."""


def key_of(site: str, rule_id: str) -> str:
    """The state key of one (site, rule); ``/`` appears in neither part."""
    return f"{site}/{rule_id}"


class ParseAndRoute:
    """Validate a chunk of lines and group its records per (site, rule) key, keeping order."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table

    def __call__(self, chunk: list[Line]) -> Iterable[tuple[str, Any]]:
        """Tagged outputs: ``reject`` per bad line, one ``valid`` count, ``work`` per key."""
        groups: dict[str, list[Record]] = defaultdict(list)
        rule_of: dict[str, str] = {}
        valid = 0
        out: list[tuple[str, Any]] = []
        routes = self.table.routes
        for line, raw in chunk:
            raw = raw.strip()
            if not raw:
                continue
            parsed = parse_record(raw, line)
            if isinstance(parsed, str):
                out.append(("reject", (line, parsed)))
                continue
            valid += 1
            for compiled in routes(parsed):
                key = key_of(parsed.site, compiled.id)
                groups[key].append(parsed)
                rule_of[key] = compiled.id
        out.append(("valid", valid))
        out.extend(("work", (key, (rule_of[key], records))) for key, records in groups.items())
        return out


class DetectLogic(StatefulBatchLogic[tuple[str, list[Record]], tuple[str, Any], Any]):
    """Bytewax state for one (site, rule): a :class:`RuleRunner`, fed in arrival order."""

    def __init__(self, table: RoutingTable, lateness: int, link_base: str) -> None:
        self.table = table
        self.lateness = lateness
        self.link_base = link_base
        self.runner: RuleRunner | None = None

    @override
    def on_batch(self, values: list[tuple[str, list[Record]]]) -> tuple[list[tuple[str, Any]], bool]:
        out: list[Notification] = []
        emitted: list[tuple[str, Any]] = []
        for rule_id, records in values:
            runner = self.runner
            if runner is None:
                runner = self.runner = RuleRunner(self.table.rules[rule_id], records[0].site, self.lateness)
            for record in records:
                if not runner.process(record, out):
                    emitted.append(("late", record.line))
        emitted.extend(("alert", (n.sort_key(), n.to_json(self.link_base))) for n in out)
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
    per record that was late for a rule it was routed to.
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
