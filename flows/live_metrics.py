"""``logystera detect --metrics-port``: what the flow counted, for Prometheus (``GET /metrics``).

Served by process 0 of a cluster, where the other processes send their
rejected records and counts (:class:`flows.live.LiveTotals`), so the numbers
are the cluster's. Counters restart at zero with the process, as Prometheus
counters may; records read again after a restart count again (the same
records are detected again, by design: docs/live.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from flows.live import DECISIONS, LiveTotals


class DetectMetrics(Collector):
    """The metric families of one detect process's :class:`LiveTotals`, in a registry of their own."""

    def __init__(self, totals: LiveTotals) -> None:
        self.totals = totals
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """The metric families, from one consistent reading of the totals."""
        now = self.totals.reading()
        records = CounterMetricFamily("logystera_detect_records", "Records read from the signals topic, by outcome "
                                      "(invalid: rejected, reported on stderr with partition and offset).", labels=["outcome"])
        records.add_metric(["valid"], now.valid)
        records.add_metric(["invalid"], now.invalid)
        late = CounterMetricFamily("logystera_detect_late_records",
                                   "Valid records that came later than the allowed lateness for a rule (not evaluated by it).",
                                   value=now.late)
        decisions = CounterMetricFamily("logystera_detect_decisions",
                                        "The engine's decisions, by rule and reason (fired, renotified and resolved are "
                                        "notifications written to the alerts topic; suppressed counts silenced instants).",
                                        labels=["rule", "decision"])
        for (rule, decision), count in sorted(now.decisions.items(), key=lambda item: (item[0][0], DECISIONS.index(item[0][1]))):
            decisions.add_metric([rule, decision], count)
        yield from (records, late, decisions)

    def exposition(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
