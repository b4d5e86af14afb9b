"""The delivery process's Prometheus metrics (``--metrics-port``: ``GET /metrics``), through ``prometheus_client`` as the gateway's.

The counters live in :class:`delivery.service.DeliveryStats`, which the event
loop updates; a scrape (on ``prometheus_client``'s server thread) reads them
on the loop, so it never sees a half-updated counter. Metric names end in
``_total`` for counters, as the gateway's do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from delivery.service import DeliveryService
from protocol.prometheus import serve_registry

SCRAPE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Reading:
    """The service's counters and gauges at one moment, copied on the event loop."""

    attempts: dict[tuple[str, str], int]
    notifications: dict[tuple[str, str], int]
    records: dict[str, int]
    held: dict[str, int]
    in_flight: dict[str, int]
    pending: int
    silences: int


def _read(service: DeliveryService) -> _Reading:
    stats = service.stats
    return _Reading(
        dict(stats.attempts), dict(stats.notifications),
        {"valid": stats.records, "invalid": stats.invalid, "duplicate": stats.duplicates},
        {name: runner.schedule.held for name, runner in service.runners.items()},
        {name: runner.schedule.in_flight for name, runner in service.runners.items()},
        service.pending,
        sum(1 for silence in service.holds.silences if silence.active(round(service.clock() * 1000))),
    )


class DeliveryMetrics(Collector):
    """Every metric of one delivery service, in its own registry (two services in one process stay apart)."""

    def __init__(self, service: DeliveryService, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.service = service
        self.loop = loop
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def _reading(self) -> _Reading:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if self.loop is None or here is self.loop:
            return _read(self.service)

        async def on_loop() -> _Reading:
            return _read(self.service)

        return asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result(timeout=SCRAPE_TIMEOUT_S)

    def collect(self) -> Iterator[Metric]:
        """The metric families, from one reading of the service."""
        now = self._reading()
        attempts = CounterMetricFamily("logystera_delivery_attempts", "Delivery attempts recorded, by channel and outcome.",
                                       labels=["channel", "outcome"])
        for (channel, outcome), n in sorted(now.attempts.items()):
            attempts.add_metric([channel, outcome], n)
        notifications = CounterMetricFamily(
            "logystera_delivery_notifications",
            "Notifications per channel by how they ended (gave_up and failed never reached the receiver; "
            "silenced, muted and inhibited were held back on purpose).",
            labels=["channel", "result"])
        for (channel, result), n in sorted(now.notifications.items()):
            notifications.add_metric([channel, result], n)
        records = CounterMetricFamily("logystera_delivery_records", "Records read, by kind.", labels=["kind"])
        for kind, n in now.records.items():
            records.add_metric([kind], n)
        held = GaugeMetricFamily("logystera_delivery_held", "Notifications held by a channel's rate limit now.", labels=["channel"])
        for channel, n in sorted(now.held.items()):
            held.add_metric([channel], n)
        in_flight = GaugeMetricFamily("logystera_delivery_in_flight", "Calls in flight per channel.", labels=["channel"])
        for channel, n in sorted(now.in_flight.items()):
            in_flight.add_metric([channel], n)
        pending = GaugeMetricFamily("logystera_delivery_pending_records", "Records read and not yet done on every channel.",
                                    value=now.pending)
        silences = GaugeMetricFamily("logystera_delivery_silences_active",
                                     "Silences holding matching notifications now (as last read from the store).",
                                     value=now.silences)
        yield from (attempts, notifications, records, held, in_flight, pending, silences)

    def exposition(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
        """Serve ``http://host:port/metrics`` from a daemon thread; a port that cannot be bound is a usage error."""
        return serve_registry(self.registry, host, port)
