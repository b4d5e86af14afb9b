"""Replay a JSON Lines file of signals through the detection dataflow.

The flow's sinks collect into memory; the result is sorted as cli.md
prescribes so that the output is byte-identical for any number of workers.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main, run_main
from typing_extensions import override

from flows.detect import Alert, Reject, build_detect_flow
from flows.sources import DEFAULT_CHUNK_LINES, JsonLinesSource
from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.metrics import compile_metric
from operators.notification import DEFAULT_LINK_BASE
from operators.routing import RoutingTable
from schemas.rules import MetricDefinition, Rule
from sinks.clickhouse import Store, StoreError, StoreSink

X = TypeVar("X")


class _CallbackPartition(StatelessSinkPartition[X]):
    def __init__(self, callback: Callable[[list[X]], None], lock: threading.Lock) -> None:
        self._callback = callback
        self._lock = lock

    def write_batch(self, items: list[X]) -> None:
        with self._lock:
            self._callback(items)


class CallbackSink(DynamicSink[X], Generic[X]):
    """Hands every batch to a callback, one batch at a time across worker threads."""

    def __init__(self, callback: Callable[[list[X]], None]) -> None:
        self._callback = callback
        self._lock = threading.Lock()

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CallbackPartition[X]:
        return _CallbackPartition(self._callback, self._lock)


@dataclass
class ReplayResult:
    """What a replay produced: notification lines in output order, and the totals."""

    alerts: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    """The rejected lines in line order (empty when they were handed to ``on_rejects`` instead)."""
    invalid: int = 0
    valid: int = 0
    late_lines: set[int] = field(default_factory=set)

    @property
    def totals_line(self) -> str:
        """The final stderr line of cli.md."""
        return f"replayed {self.valid} signals, {self.invalid} invalid, {len(self.late_lines)} late"


def store_failure(error: BaseException) -> StoreError | None:
    """The :class:`StoreError` (the store gave up, or is held by another process) in an exception's chain, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, StoreError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def run_flow(flow: Dataflow, workers: int) -> None:
    """Run a dataflow to completion with ``workers`` worker threads in this process.

    The engine keeps many small long-lived objects (windows, rings), so the
    cyclic garbage collector's default thresholds make it rescan them every
    few hundred allocations; the run raises them (measured: ~10% of replay
    time) and restores them afterwards.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def replay(
    signals: str,
    rules: list[Rule],
    workers: int = 1,
    lateness: int = DEFAULT_ALLOWED_LATENESS_MS,
    link_base: str = DEFAULT_LINK_BASE,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    on_alerts: Callable[[list[Alert]], None] | None = None,
    store: Store | None = None,
    metrics: list[MetricDefinition] | None = None,
    source: str | None = None,
    on_rejects: Callable[[list[Reject]], None] | None = None,
) -> ReplayResult:
    """Run the detection flow over a file (``-`` = stdin) and return sorted results.

    Rejected lines are kept in the result, or with ``on_rejects`` handed to
    it as they are found, in line order, and only counted: a file of a
    million bad lines then holds no memory for them. With a ``store``, everything the flow sees and decides is written to it as
    well (signals, notifications and evidence, final metric buckets of
    ``metrics``, rejected lines, attributed to ``source``); a store that stays
    unavailable stops the run with :class:`sinks.clickhouse.StoreUnavailable`
    (a :class:`sinks.clickhouse.StoreError`).
    """
    result = ReplayResult()
    keyed_alerts: list[Alert] = []

    def take_alerts(items: list[Alert]) -> None:
        keyed_alerts.extend(items)
        if on_alerts is not None:
            on_alerts(items)

    def take_rejects(items: list[Reject]) -> None:
        # One worker parses (the input is one partition) and its sink partition gets its items in order.
        result.invalid += len(items)
        if on_rejects is None:
            result.rejects.extend(items)
        else:
            on_rejects(items)

    def take_stats(items: list[tuple[str, Any]]) -> None:
        for kind, value in items:
            if kind == "valid":
                result.valid += value
            else:
                result.late_lines.add(value)

    flow = build_detect_flow(
        JsonLinesSource(signals, chunk_lines),
        CallbackSink(take_alerts),
        CallbackSink(take_rejects),
        CallbackSink(take_stats),
        RoutingTable(rules),
        lateness,
        link_base,
        store_sink=StoreSink(store) if store is not None else None,
        store_source=source or (Path(signals).name if signals != "-" else "stdin"),
        metrics=[compile_metric(metric) for metric in metrics or []],
    )
    try:
        run_flow(flow, workers)
    except Exception as error:
        # Bytewax re-raises a step's exception wrapped; a store that gave up is the user-facing cause.
        cause = store_failure(error)
        if cause is not None:
            raise cause from None
        raise
    keyed_alerts.sort(key=lambda alert: alert[0])
    result.alerts = [line for _, line in keyed_alerts]
    return result
