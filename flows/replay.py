"""Replay a JSON Lines file of signals through the detection dataflow.

The file is read by as many partitions as the cluster has workers and the
flow puts every site's records back in file order (``flows.detect``'s
ordered flow). The flow's sinks collect into memory — in a cluster, in
process 0 —; the result is sorted as cli.md prescribes so that the output
is byte-identical for any number of processes, workers and chunk size.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from flows.cluster import ClusterShape, run_on, shard_keys
from flows.detect import DetectOptions, DetectSinks, FlowStats, Ordering, Reject, build_detect_flow
from flows.sources import DEFAULT_CHUNK_LINES, JsonLinesSource
from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.metrics import compile_metric
from operators.notification import DEFAULT_LINK_BASE, Decision, Emitted
from operators.routing import RoutingTable
from schemas.errors import LogysteraError, root_cause
from schemas.rules import MetricDefinition, Rule
from sinks.callback import CallbackSink, OwnerSink
from sinks.clickhouse import EpochStoreSink, Store, StoreSink

_SORT_KEY = attrgetter("sort_key")
SWITCH_INTERVAL_S = 0.1
"""How long a thread may keep the GIL while a replay runs (:func:`flows.cluster.run_on`): a batch run, where only
signals wait for it. Measured on one cluster process replaying 560k lines: ~7,000 context switches at the default 5 ms,
~1,900 at 50 ms, and 4–6% less time (0.05, 0.2 and 1 s measured alike)."""
CHDB_MAX_DELAY_S = math.inf
"""How long rows wait in a replay's chDB sink (``StoreSink.max_delay``): until a table has a full batch, or the end.
No other process can read the directory while the replay holds it, so writing every table every 2 s (the sink's
default) bought nothing, and each small insert of alerts, evidence or rejected lines costs chDB ~10 ms of CPU (alerts
~15–20 ms: the ``alerts_by_id`` view): 12 of them 0.12 s, on a replay of 560k lines that stores 340k rows in 0.6 s."""


@dataclass
class ReplayResult:
    """What a replay produced: notification lines in output order, and the totals.

    ``decisions`` counts the engine's decisions by (rule id, reason): each
    notification once, and the ``suppressed`` instants it reports (see
    :data:`operators.notification.Decision`).
    """

    alerts: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    """The rejected lines in line order (empty when they were handed to ``on_rejects`` instead)."""
    invalid: int = 0
    valid: int = 0
    late_lines: set[int] = field(default_factory=set)
    decisions: Counter[tuple[str, Decision]] = field(default_factory=Counter)

    def add(self, stats: FlowStats) -> None:
        """Count one piece of the flow's stats."""
        self.valid += stats.valid
        self.late_lines.update(stats.late)
        self.decisions.update(stats.decisions)

    @property
    def totals_line(self) -> str:
        """The final stderr line of cli.md."""
        return f"replayed {self.valid} signals, {self.invalid} invalid, {len(self.late_lines)} late"


def replay(
    signals: str,
    rules: list[Rule],
    workers: int = 1,
    lateness: int = DEFAULT_ALLOWED_LATENESS_MS,
    link_base: str = DEFAULT_LINK_BASE,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    on_alerts: Callable[[list[Emitted]], None] | None = None,
    store: Store | None = None,
    metrics: list[MetricDefinition] | None = None,
    source: str | None = None,
    on_rejects: Callable[[list[Reject]], None] | None = None,
    cluster: ClusterShape | None = None,
) -> ReplayResult:
    """Run the detection flow over a file (``-`` = stdin) and return sorted results.

    ``cluster`` (its addresses known: :func:`flows.cluster.start_local_cluster`)
    runs this as one process of a cluster; otherwise it is one process of
    ``workers`` workers. Only process 0 gets results: the others' are empty.

    Rejected lines are kept in the result, or with ``on_rejects`` handed to
    it as they are found, in line order, and only counted: a file of a
    million bad lines then holds no memory for them. With a ``store``, everything the flow sees and decides is written to it as
    well (signals, notifications and evidence, final metric buckets of
    ``metrics``, rejected lines, attributed to ``source``); a store that stays
    unavailable stops the run with :class:`sinks.clickhouse.StoreUnavailable`
    (a :class:`sinks.clickhouse.StoreError`).
    """
    result = ReplayResult()
    emitted: list[Emitted] = []

    def take_alerts(items: list[Emitted]) -> None:
        emitted.extend(items)
        if on_alerts is not None:
            on_alerts(items)

    def take_rejects(items: list[Reject]) -> None:
        # One worker puts them in order (flows.detect.ChunkOrder) and this sink gets its items in that order.
        result.invalid += len(items)
        if on_rejects is None:
            result.rejects.extend(items)
        else:
            on_rejects(items)

    def take_stats(items: list[FlowStats]) -> None:
        for stats in items:
            result.add(stats)

    shape = cluster or ClusterShape(1, workers)
    gathered = shape.processes > 1

    def sink(callback: Callable[[list[Any]], None]) -> Any:
        return OwnerSink(callback, shape.owner) if gathered else CallbackSink(callback)

    store_sink: Any = None
    if store is not None:
        embedded = store.address.kind == "chdb"
        rows = StoreSink(store, max_delay=CHDB_MAX_DELAY_S) if embedded else StoreSink(store)
        # A chDB directory is opened by one process: in a cluster its rows go to process 0's store.
        store_sink = EpochStoreSink(rows, local=shape.owner) if gathered and embedded else rows
    sinks = DetectSinks(alerts=sink(take_alerts), rejects=sink(take_rejects), stats=sink(take_stats), store=store_sink)
    options = DetectOptions(
        lateness=lateness, link_base=link_base, store_source=source or (Path(signals).name if signals != "-" else "stdin"),
        metrics=[compile_metric(metric) for metric in metrics or []],
        ordering=Ordering(chunk_lines, shard_keys(shape.total_workers)),
    )
    flow = build_detect_flow(JsonLinesSource(signals, chunk_lines, shape.total_workers), RoutingTable(rules), sinks, options)
    try:
        run_on(flow, shape, switch_interval=SWITCH_INTERVAL_S)
    except Exception as error:
        # Bytewax re-raises a step's exception wrapped; the error a person must read (a store that gave up) is inside.
        cause = root_cause(error, LogysteraError)
        if cause is not None:
            raise cause from None
        raise
    emitted.sort(key=_SORT_KEY)
    result.alerts = [alert.line for alert in emitted]
    return result
