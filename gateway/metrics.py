"""The gateway's Prometheus metrics (``GET /metrics``, text exposition format).

Counters end in ``_total``; every reason label is present from the start (at
0), so a dashboard or alert on a reason works before the first occurrence.
A private registry per gateway keeps two gateways in one process (tests)
apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.errors import REQUEST_REASONS, SIGNAL_REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_OUTCOMES = ("accepted", "duplicate", "rejected", "unavailable")
PRODUCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """Every metric of one gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.signals_accepted = Counter(
            "logystera_gateway_signals_accepted", "Signals written to Kafka and acknowledged to their site.", registry=registry
        )
        self.signals_rejected = Counter(
            "logystera_gateway_signals_rejected", "Signals refused inside accepted batches, by reason.", ["reason"], registry=registry
        )
        self.requests_rejected = Counter(
            "logystera_gateway_requests_rejected", "Requests refused as a whole (4xx, 503), by reason.", ["reason"], registry=registry
        )
        self.answers_abandoned = Counter(
            "logystera_gateway_answers_abandoned",
            "Answers given up because the client left them unread for --send-timeout (the connection is reset).",
            registry=registry,
        )
        self.batches = Counter(
            "logystera_gateway_batches", "POST /v1/batches requests by outcome.", ["outcome"], registry=registry
        )
        self.produce_seconds = Histogram(
            "logystera_gateway_produce_seconds",
            "From handing a batch's signals to the producer to the last delivery report.",
            buckets=PRODUCE_BUCKETS,
            registry=registry,
        )
        self.ticks_written = Counter("logystera_gateway_ticks_written", "Tick records written to Kafka.", registry=registry)
        self.tick_rounds_skipped = Counter(
            "logystera_gateway_tick_rounds_skipped",
            "Tick rounds not written because the previous round was still being delivered.",
            registry=registry,
        )
        self.connections = Gauge("logystera_gateway_connections", "HTTP connections open now.", registry=registry)
        self.pending_bytes = Gauge(
            "logystera_gateway_pending_bytes", "Bytes of request bodies read but not authenticated yet.", registry=registry
        )
        self.ticker_leader = Gauge(
            "logystera_gateway_ticker_leader", "1 while this process holds the ticker lease and writes ticks.", registry=registry
        )
        for reason in SIGNAL_REASONS:
            self.signals_rejected.labels(reason)
        for reason in REQUEST_REASONS:
            self.requests_rejected.labels(reason)
        for outcome in BATCH_OUTCOMES:
            self.batches.labels(outcome)

    def exposition(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
