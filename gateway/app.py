"""The gateway's HTTP side: ``POST /v1/batches``, ``GET /healthz``, ``GET /metrics`` (Starlette on uvicorn).

A batch is answered ``200`` only once every signal it accepts has a delivery
report from the broker saying it was written; if that does not come within
``produce_timeout`` the answer is ``503`` with ``Retry-After`` and the batch
is not taken (docs/gateway.md, "Responses"). The event loop never waits on
Kafka: records are handed to librdkafka on a worker thread and the handler
awaits their delivery handle. What one client may hold of the gateway
(deadlines, connections, unauthenticated bytes) is bounded as
``gateway.limits`` describes; :func:`uvicorn_config` puts those limits on
the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn import Config

from gateway.auth import SITE_PREFIX_BYTES, signature_headers, signature_matches, site_of
from gateway.batch import check_signals, parse_batch
from gateway.errors import Rejected
from gateway.kafka import DeliveryHandle, KafkaWriter
from gateway.ledger import BatchLedger, Key
from gateway.limits import ConnectionLimits, PendingBodies, guarded_protocol
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.registry import Registry, Site
from gateway.ticker import Lease, Ticker
from protocol.wire import ENDPOINT, MAX_BATCH_BYTES, MAX_BATCH_SIGNALS
from sinks.kafka_client import KafkaUnreachable

log = logging.getLogger("logystera.gateway")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything tunable about one gateway process (the CLI's options)."""

    tick_interval_ms: int = 10_000
    ticker_lock: Path | None = Path(".logystera/ticker.lock")
    """The lease file the gateway processes of one host share; ``None`` runs no ticker in this process."""
    dedup_window_s: float = 600.0
    timestamp_tolerance_s: int = 300
    produce_timeout_s: float = 5.0
    """How long a request waits for the broker's delivery reports before answering 503."""
    retry_after_s: int = 5
    health_timeout_s: float = 2.0
    max_body_bytes: int = MAX_BATCH_BYTES
    max_signals: int = MAX_BATCH_SIGNALS
    close_timeout_s: float = 10.0
    max_future_s: int = 300
    """How far ahead of the gateway's clock a signal's ``ts`` may be."""
    header_timeout_s: float = 5.0
    """A request head must be complete this long after the connection opened or its previous answer."""
    body_timeout_s: float = 10.0
    """A request body must be complete this long after its head."""
    send_timeout_s: float = 10.0
    """An answer the client leaves unread (over 64 KiB buffered) this long is abandoned and the connection reset."""
    max_connections: int = 512
    max_pending_bytes: int = 64 * MAX_BATCH_BYTES
    """Bytes of bodies read but not authenticated yet, all requests together."""


class Gateway:
    """One gateway process's state: registry, producer, batch ledger, metrics, and (maybe) the ticker."""

    def __init__(self, registry: Registry, writer: KafkaWriter, config: GatewayConfig, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.writer = writer
        self.config = config
        self.clock = clock
        self.metrics = GatewayMetrics()
        self.ledger = BatchLedger(config.dedup_window_s, clock)
        self.pending = PendingBodies(config.max_pending_bytes)
        self.metrics.pending_bytes.set_function(lambda: self.pending.total)
        self.ticker = (
            None
            if config.ticker_lock is None
            else Ticker(registry.ids, config.tick_interval_ms, writer, Lease(config.ticker_lock), self.metrics, clock)
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the producer's poll thread and the ticker."""
        self.writer.start()
        if self.ticker is not None:
            self.ticker.start()

    def close(self) -> None:
        """Stop the ticker (handing the lease over), then deliver what is still queued, within ``close_timeout_s``."""
        if self.ticker is not None:
            self.ticker.stop()
        left = self.writer.close(self.config.close_timeout_s)
        if left:
            log.warning("%d records were still undelivered at shutdown (their batches were not acknowledged)", left)

    # -- POST /v1/batches -----------------------------------------------------------------------

    async def post_batch(self, request: Request) -> Response:
        """Authenticate, then take the batch once (``(site, batch_id)`` attempts are serialised)."""
        try:
            site, batch_id, body = await self._authenticate(request)
        except Rejected as rejected:
            return self.refuse(rejected, close=True)  # the body may be unread: do not wait for the rest of it
        except ClientDisconnect:
            return Response(status_code=400)  # the client left before its body arrived: nobody reads this
        key = (site.id, batch_id)
        async with self.ledger.hold(key):
            try:
                return await self._take(key, site, body)
            except Rejected as rejected:
                return self.refuse(rejected)

    async def _authenticate(self, request: Request) -> tuple[Site, str, bytes]:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise Rejected("unsupported_media_type", "content-type: must be application/json")
        batch_id, timestamp, signature = signature_headers(request.headers, self.clock(), self.config.timestamp_tolerance_s)
        site, body = await self._read_body(request)
        if not signature_matches(site.key, batch_id, timestamp, body, signature):
            raise Rejected("bad_signature", f"webhook-signature: does not match the body and the secret of site {site.id!r}")
        return site, batch_id, body

    async def _read_body(self, request: Request) -> tuple[Site, bytes]:
        """The body and the registered site it starts with, refused as soon as something is known to be wrong.

        Too large by its length header: before a byte is read. Too large
        while reading (chunked bodies), no registered site in its first
        :data:`SITE_PREFIX_BYTES`: as soon as those bytes are in. Not complete
        within ``body_timeout_s``, or dropped by the budget of unauthenticated
        bytes (``gateway.limits``): then.
        """
        limit = self.config.max_body_bytes
        too_large = Rejected("body_too_large", f"body: more than {limit} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        site: Site | None = None
        with self.pending.hold() as pending:
            try:
                async with asyncio.timeout(self.config.body_timeout_s) as pending.timer:
                    async for chunk in request.stream():
                        body += chunk
                        if len(body) > limit:
                            raise too_large
                        self.pending.grow(pending, len(chunk))
                        if site is None and len(body) >= SITE_PREFIX_BYTES:
                            site = self._site(body)
            except TimeoutError:
                if pending.dropped:
                    raise Rejected("overloaded", "too many request bodies are being received at once; retry later",
                                   retry_after=self.config.retry_after_s) from None
                raise Rejected("body_timeout", f"body: not complete within {self.config.body_timeout_s:g} s") from None
        return site or self._site(body), bytes(body)

    def _site(self, body: bytearray) -> Site:
        site_id = site_of(bytes(body[:SITE_PREFIX_BYTES]))
        site = self.registry.get(site_id)
        if site is None:
            raise Rejected("unknown_site", f"site: {site_id!r} is not registered at this gateway")
        return site

    async def _take(self, key: Key, site: Site, body: bytes) -> Response:
        # A malformed body is refused even under a batch id already taken: only a batch can be a duplicate of one.
        signals = parse_batch(body, site, key[1], self.config.max_signals)
        state = self.ledger.get(key)
        if state is not None and state.answer is not None:
            self.metrics.batches.labels("duplicate").inc()
            return JSONResponse({**state.answer, "duplicate": True})
        parsed = check_signals(signals, site, int((self.clock() + self.config.max_future_s) * 1000), self.config.max_future_s)
        if state is not None and not state.settle():
            # An earlier attempt's signals are still on their way: wait for them rather than write them twice.
            assert state.pending is not None
            if not await self._delivered(state.pending):
                return self._unavailable("the broker has not confirmed an earlier attempt of this batch yet")
            state.settle()
        written = state.written if state is not None else set()
        todo = [(id_, value) for id_, value in parsed.accepted if id_ not in written]
        handle = DeliveryHandle([id_ for id_, _ in todo])
        if todo:
            handle.future.add_done_callback(lambda done: self.metrics.produce_seconds.observe(done.result().elapsed or 0.0))
        state = self.ledger.track(key, handle)
        await asyncio.get_running_loop().run_in_executor(None, self.writer.enqueue, handle, [(site.id, value) for _, value in todo])
        if not await self._delivered(handle):
            return self._unavailable("the broker did not confirm the batch in time")
        state.settle()
        if not handle.all_written:
            if not state.written:
                self.ledger.forget(key)
            log.warning("batch of %s: %d of %d signals written: %s", site.id, len(state.written), len(parsed.accepted), handle.error)
            return self._unavailable(f"the broker took {len(state.written)} of {len(parsed.accepted)} signals")
        answer = parsed.answer()
        self.ledger.complete(key, answer)
        self.metrics.signals_accepted.inc(len(parsed.accepted))
        for _, reason, _ in parsed.rejected:
            self.metrics.signals_rejected.labels(reason).inc()
        self.metrics.batches.labels("accepted").inc()
        return JSONResponse(answer)

    async def _delivered(self, handle: DeliveryHandle) -> bool:
        """Wait up to ``produce_timeout_s`` for every report of ``handle`` (the handle keeps collecting them afterwards)."""
        if handle.done:
            return True
        done, _ = await asyncio.wait([asyncio.wrap_future(handle.future)], timeout=self.config.produce_timeout_s)
        return bool(done)

    def _unavailable(self, message: str) -> Response:
        return self.refuse(Rejected("unavailable", f"{message}; retry later", retry_after=self.config.retry_after_s))

    def refuse(self, rejected: Rejected, close: bool = False) -> Response:
        """The JSON error answer of a refused request, counted by reason; ``close`` ends the connection after it."""
        self.metrics.requests_rejected.labels(rejected.reason).inc()
        self.metrics.batches.labels("unavailable" if rejected.status == 503 else "rejected").inc()
        headers = {}
        if rejected.retry_after is not None:
            headers["retry-after"] = str(rejected.retry_after)
        if close:
            headers["connection"] = "close"
        return JSONResponse({"error": rejected.reason, "message": rejected.message}, rejected.status, headers)

    # -- GET /healthz, GET /metrics -------------------------------------------------------------

    async def healthz(self, _request: Request) -> Response:
        """``200`` when the broker answers and the topic exists, ``503`` otherwise; also says whether this process ticks."""
        ticker = "off" if self.ticker is None else "leader" if self.ticker.leader else "standby"
        report: dict[str, Any] = {"status": "ok", "topic": self.writer.topic, "ticker": ticker}
        if self.writer.fatal is not None:
            report.update(status="unavailable", broker="unreachable", message=f"the producer failed: {self.writer.fatal}")
            return JSONResponse(report, 503, {"retry-after": str(self.config.retry_after_s)})
        try:
            partitions = await asyncio.get_running_loop().run_in_executor(None, self.writer.partitions, self.config.health_timeout_s)
        except KafkaUnreachable as error:
            report.update(status="unavailable", broker="unreachable", message=str(error))
            return JSONResponse(report, 503, {"retry-after": str(self.config.retry_after_s)})
        report.update(broker="reachable", partitions=partitions)
        if partitions == 0:
            report.update(status="unavailable", message=f"topic {self.writer.topic!r} does not exist")
            return JSONResponse(report, 503, {"retry-after": str(self.config.retry_after_s)})
        return JSONResponse(report)

    async def metrics_page(self, _request: Request) -> Response:
        """The Prometheus text exposition."""
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI application: routes, JSON errors for unknown paths and methods, and the gateway's lifecycle."""

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return gateway.refuse(Rejected("not_found", "no such endpoint (POST /v1/batches, GET /healthz, GET /metrics)"))

    async def method_not_allowed(_request: Request, exc: Exception) -> Response:
        allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
        response = gateway.refuse(Rejected("method_not_allowed", f"method not allowed here (allowed: {allowed})"))
        response.headers["allow"] = allowed
        return response

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        gateway.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, gateway.close)

    routes = [
        Route(ENDPOINT, gateway.post_batch, methods=["POST"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/metrics", gateway.metrics_page, methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {404: not_found, 405: method_not_allowed}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.router.redirect_slashes = False  # `/metrics/` is not found, not a redirect (clients do not follow them)
    app.state.gateway = gateway
    return app


def uvicorn_config(gateway: Gateway, **options: Any) -> Config:
    """The uvicorn configuration serving ``gateway`` with its connection limits (``options``: more ``uvicorn.Config`` settings)."""
    config = gateway.config
    limits = ConnectionLimits(config.header_timeout_s, config.max_connections, config.retry_after_s, config.send_timeout_s)
    protocol = guarded_protocol(limits, lambda reason: gateway.metrics.requests_rejected.labels(reason).inc(),
                                gateway.metrics.connections.set, gateway.metrics.answers_abandoned.inc)
    return Config(create_app(gateway), http=protocol, log_config=None, access_log=False, server_header=False, lifespan="on", **options)
