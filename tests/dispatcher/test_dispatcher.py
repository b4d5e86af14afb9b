"""The site-side dispatcher against a real HTTP receiver on loopback.

The receiver verifies every request with the independent ``standardwebhooks``
package, checks the body against the contract, dedupes by ``batch_id`` (as
the gateway will) and can be told to answer 500/503/429/4xx, hang, or be down.
Tests that depend on waits (backoff, Retry-After, the breaker's cooldown) run
on a fake clock whose ``sleep`` advances it; the receiver stamps each request
with that clock, so the gaps between requests are exact.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import itertools
import json
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from dispatcher import (
    MAX_BATCH_BYTES,
    Dispatcher,
    InvalidSignal,
    Signals,
    fingerprint,
    hash_identity,
    network_prefix,
    new_id,
    sign_batch,
)
from protocol.resilience import Backoff, BreakerState, CircuitBreaker
from protocol.wire import Kind, classify, parse_retry_after, secret_bytes
from schemas.records import Record, parse_record
from schemas.timestamps import TS_PATTERN
from tests.support.polling import wait_for

SITE = "shop-eu"
SECRET = "plain-secret-for-tests"
IDENTITY_KEY = "site-identity-key"
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
SENT_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REPO = Path(__file__).resolve().parents[2]


# -- the receiver ---------------------------------------------------------------------------------------------


class FakeClock:
    """Epoch seconds that move only when the dispatcher sleeps (plus a real pause, so a down loop cannot spin)."""

    def __init__(self) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        time.sleep(0.002)


@dataclass
class Seen:
    """One request as the receiver saw it."""

    batch_id: str
    at: float
    status: int
    signals: int
    body: bytes


@dataclass
class Receiver:
    """A gateway stand-in: verifies, dedupes by batch_id, and answers as scripted."""

    verify_secret: str | bytes
    clock: Callable[[], float] = time.time
    duplicate_status: int = 200
    reject: Callable[[dict[str, Any]], str | None] | None = None
    requests: list[Seen] = field(default_factory=list)
    accepted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    script: deque[tuple[Any, ...]] = field(default_factory=deque)
    problems: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.webhook = Webhook(self.verify_secret)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                receiver.handle(self)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # a client that gave up
        self.port = server.server_address[1]
        self.server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def stop(self) -> None:
        """Go down: stop listening (connections are refused until ``start``)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def answer(self, *actions: tuple[Any, ...]) -> None:
        """Queue responses for the next requests: ``(status, headers)`` or ``("hang", seconds)``."""
        self.script.extend(actions)

    def _respond(self, handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _check(self, handler: BaseHTTPRequestHandler, raw: bytes, batch: Any) -> None:
        """Everything the protocol promises about one request (problems are collected, not raised, in a server thread)."""
        if handler.path != "/v1/batches":
            self.problems.append(f"path {handler.path}")
        if handler.headers.get("content-type") != "application/json":
            self.problems.append(f"content-type {handler.headers.get('content-type')}")
        if not isinstance(batch, dict) or list(batch) != ["site", "batch_id", "sent_at", "signals"]:
            self.problems.append(f"body keys {list(batch) if isinstance(batch, dict) else batch!r}")
            return
        if batch["site"] != SITE or batch["batch_id"] != handler.headers["webhook-id"] or not SENT_AT.match(batch["sent_at"]):
            self.problems.append(f"envelope {batch['site']} {batch['batch_id']} {batch['sent_at']}")
        if not 1 <= len(batch["signals"]) <= 1000 or len(raw) > MAX_BATCH_BYTES:
            self.problems.append(f"batch of {len(batch['signals'])} signals, {len(raw)} bytes")
        for signal in batch["signals"]:
            parsed = parse_record(json.dumps(signal, separators=(",", ":"), ensure_ascii=False).encode(), 0)
            if not isinstance(parsed, Record):
                self.problems.append(f"invalid signal sent: {parsed}")

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers["content-length"]))
        at = self.clock()
        try:
            batch = self.webhook.verify(raw, {name: value for name, value in handler.headers.items()})
        except WebhookVerificationError as error:
            self.problems.append(f"signature: {error}")
            self._respond(handler, 401)
            return
        self._check(handler, raw, batch)
        batch_id, signals = batch["batch_id"], batch["signals"]
        with self.lock:
            action = self.script.popleft() if self.script else None
            if action is not None and action[0] != "hang":
                self.requests.append(Seen(batch_id, at, action[0], len(signals), raw))
            elif batch_id in self.accepted:
                self.requests.append(Seen(batch_id, at, self.duplicate_status, len(signals), raw))
                action = ("duplicate",)
            else:
                self.requests.append(Seen(batch_id, at, 200, len(signals), raw))
                self.accepted[batch_id] = signals
                self.order.append(batch_id)
        if action is not None and action[0] == "hang":  # processed, but the answer comes too late
            self.release.wait(action[1])
        if action is not None and action[0] not in ("hang", "duplicate"):
            status, headers = action[0], action[1] if len(action) > 1 else {}
            self._respond(handler, status, {"error": "scripted"}, headers)
        elif action is not None and action[0] == "duplicate":
            if self.duplicate_status == 409:
                self._respond(handler, 409, {"error": "duplicate batch_id"})
            else:
                self._respond(handler, 200, {"accepted": 0, "rejected": [], "duplicate": True})
        else:
            rejected = []
            for index, signal in enumerate(signals):
                reason = self.reject(signal) if self.reject else None
                if reason:
                    rejected.append({"index": index, "reason": reason})
            self._respond(handler, 200, {"accepted": len(signals) - len(rejected), "rejected": rejected, "duplicate": False})

    def signals(self, *, app_only: bool = False) -> list[dict[str, Any]]:
        """Every accepted signal, in the order the batches were accepted."""
        with self.lock:
            every = [signal for batch_id in self.order for signal in self.accepted[batch_id]]
        return [s for s in every if s["type"] != "integration"] if app_only else every

    def integration(self, event: str) -> list[dict[str, Any]]:
        return [s for s in self.signals() if s["type"] == "integration" and s["data"]["event"] == event]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        wait_for(predicate, "expected state of the receiver", timeout, every=0.005)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(SECRET.encode())
    receiver.start()
    yield receiver
    receiver.release.set()
    receiver.stop()
    assert receiver.problems == []


@pytest.fixture
def make_dispatcher(tmp_path: Path, receiver: Receiver) -> Iterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def make(**options: Any) -> Dispatcher:
        settings: dict[str, Any] = {
            "buffer_path": tmp_path / "buffer.sqlite3", "backoff_base": 0.01, "backoff_cap": 0.05, "breaker_cooldown": 0.2,
            "poll_interval": 0.02, "timeout": 2.0, "heartbeat_every": 3600.0,
        }
        settings.update(options)
        url = settings.pop("url", None) or receiver.url
        dispatcher = Dispatcher(SITE, settings.pop("secret", SECRET), url, **settings)
        made.append(dispatcher)
        return dispatcher

    yield make
    receiver.release.set()
    for dispatcher in made:
        dispatcher.close(timeout=0)


def mail(n: int, ts: str = "2026-11-28T10:00:00.000Z") -> dict[str, Any]:
    """A valid mail signal whose id carries its number."""
    return {"v": 1, "id": f"mail-{n:06d}", "site": SITE, "type": "mail", "ts": ts,
            "data": {"outcome": "failed", "transport": "smtp", "error_class": f"e{n}"}}


def ids(signals: list[dict[str, Any]]) -> list[str]:
    return [signal["id"] for signal in signals]


# -- delivery -------------------------------------------------------------------------------------------------


def test_batches_are_delivered_in_order_exactly_once(make_dispatcher: Callable[..., Dispatcher], receiver: Receiver) -> None:
    dispatcher = make_dispatcher()
    emitted = [mail(n) for n in range(450)]
    assert all(dispatcher.emit(signal) for signal in emitted)
    dispatcher.start()
    assert dispatcher.flush(5.0)

    assert ids(receiver.signals(app_only=True)) == ids(emitted)
    # Everything was buffered before start: the `started` signal is the 451st, and batches are full ones of 200.
    assert [seen.signals for seen in receiver.requests] == [200, 200, 51]
    assert len({seen.batch_id for seen in receiver.requests}) == 3
    assert all(ULID.match(seen.batch_id) for seen in receiver.requests)
    assert receiver.integration("started")[0]["data"]["version"] == "0.1.0"
    stats = dispatcher.stats()
    assert (stats.delivered_total, stats.batches_total, stats.buffered, stats.breaker) == (451, 3, 0, "closed")


def test_a_whsec_secret_is_base64_decoded_as_standard_webhooks_does(tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(b"\x00\xffraw key bytes\x10").decode()
    receiver = Receiver(secret)  # the library decodes the whsec_ form itself
    receiver.start()
    try:
        with Dispatcher(SITE, secret, receiver.url, buffer_path=tmp_path / "b.sqlite3", poll_interval=0.02) as dispatcher:
            dispatcher.emit(mail(1))
            assert dispatcher.flush(5.0)
        assert ids(receiver.signals(app_only=True)) == ["mail-000001"]
        assert receiver.problems == []
    finally:
        receiver.stop()


def test_a_wrong_secret_is_caught_by_the_receiver(tmp_path: Path, receiver: Receiver) -> None:
    with Dispatcher(SITE, "not-the-secret", receiver.url, buffer_path=tmp_path / "b.sqlite3", poll_interval=0.02,
                    breaker_cooldown=60.0) as dispatcher:
        dispatcher.emit(mail(1))
        receiver.wait_for(lambda: bool(receiver.problems))
        assert dispatcher.flush(0.1) is False  # 401: kept, not dropped
        assert dispatcher.stats().failures_total == {"client_error": 1}
        dispatcher.stop(0)
    assert receiver.problems == ["signature: No matching signature found"]
    receiver.problems.clear()


def test_emit_never_waits_for_the_network(make_dispatcher: Callable[..., Dispatcher], receiver: Receiver) -> None:
    receiver.answer(("hang", 3.0))
    dispatcher = make_dispatcher(timeout=5.0)
    dispatcher.start()
    receiver.wait_for(lambda: len(receiver.requests) == 1)  # the sender is now stuck in a request
    started = time.monotonic()
    for n in range(200):
        assert dispatcher.emit(mail(n))
    assert time.monotonic() - started < 1.0
    receiver.release.set()
    assert dispatcher.flush(5.0)
    assert ids(receiver.signals(app_only=True)) == ids([mail(n) for n in range(200)])


def test_the_buffer_survives_a_restart(make_dispatcher: Callable[..., Dispatcher], receiver: Receiver) -> None:
    receiver.stop()
    first = make_dispatcher()
    first.start()
    emitted = [mail(n) for n in range(30)]
    for signal in emitted:
        first.emit(signal)
    assert first.stop(timeout=0.2) is False
    first.close(timeout=0)

    receiver.start()
    second = make_dispatcher()  # a new process: same buffer file
    second.start()
    assert second.flush(5.0)
    assert ids(receiver.signals(app_only=True)) == ids(emitted)
    events = [s["data"]["event"] for s in receiver.signals() if s["type"] == "integration"]
    assert events[0] == "started" and "stopped" in events and events[-1] == "started"


def test_a_batch_in_flight_is_resumed_after_a_restart_with_the_same_batch_id(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver
) -> None:
    # The receiver stores the batch but answers too late; the first process gives up and is stopped before retrying.
    receiver.answer(("hang", 2.0))
    first = make_dispatcher(timeout=0.3, backoff_base=60.0, backoff_cap=60.0, random=lambda: 1.0)
    emitted = [mail(n) for n in range(10)]
    for signal in emitted:
        first.emit(signal)
    first.start()
    receiver.wait_for(lambda: first.stats().failures_total == {"timeout": 1})
    first.close(timeout=0)  # interrupts the 60 s backoff

    second = make_dispatcher()
    second.start()
    assert second.flush(5.0)
    assert receiver.requests[0].batch_id == receiver.requests[1].batch_id
    assert receiver.requests[1].status == 200 and second.stats().duplicate_batches_total == 1
    assert ids(receiver.signals(app_only=True)) == ids(emitted)
    assert len(ids(receiver.signals())) == len(set(ids(receiver.signals())))


@pytest.mark.parametrize("duplicate_status", [200, 409])
def test_a_timed_out_batch_is_retried_and_the_duplicate_answer_counts_as_delivered(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver, duplicate_status: int
) -> None:
    receiver.duplicate_status = duplicate_status
    receiver.answer(("hang", 1.0))
    dispatcher = make_dispatcher(timeout=0.3)
    emitted = [mail(n) for n in range(5)]
    for signal in emitted:
        dispatcher.emit(signal)
    dispatcher.start()
    assert dispatcher.flush(5.0)
    first, second = receiver.requests[:2]
    assert first.batch_id == second.batch_id and second.status == duplicate_status
    assert ids(receiver.signals(app_only=True)) == ids(emitted)
    stats = dispatcher.stats()
    assert stats.failures_total == {"timeout": 1} and stats.duplicate_batches_total == 1 and stats.buffered == 0


def test_receiver_down_for_a_while_then_up_gets_everything_in_order(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver
) -> None:
    receiver.stop()
    dispatcher = make_dispatcher(batch_size=50, breaker_threshold=3, breaker_cooldown=0.1)
    dispatcher.start()
    emitted = []
    for n in range(300):
        emitted.append(mail(n))
        dispatcher.emit(emitted[-1])
        if n % 50 == 0:
            time.sleep(0.03)  # the sender keeps failing meanwhile
    receiver.wait_for(lambda: dispatcher.stats().failures_total.get("connection", 0) >= 3)
    assert dispatcher.stats().breaker in ("open", "half_open")
    receiver.start()
    assert dispatcher.flush(5.0)
    assert ids(receiver.signals(app_only=True)) == ids(emitted)
    assert len(receiver.order) == len(receiver.requests)  # no batch was sent twice
    assert dispatcher.stats().breaker == "closed"


def test_overflow_drops_the_oldest_and_reports_the_count_once_the_gateway_is_back(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver
) -> None:
    receiver.stop()
    dispatcher = make_dispatcher(max_buffered=50)
    emitted = [mail(n) for n in range(80)]
    for signal in emitted:
        assert dispatcher.emit(signal)
    stats = dispatcher.stats()
    assert (stats.buffered, stats.dropped_pending, stats.overflow_dropped_total) == (50, 30, 30)

    dispatcher.start()  # `started` is one more row: the oldest remaining signal goes too
    receiver.wait_for(lambda: dispatcher.stats().failures_total.get("connection", 0) >= 2)
    receiver.start()
    assert dispatcher.flush(5.0)

    assert ids(receiver.signals(app_only=True)) == ids(emitted[31:])
    reports = receiver.integration("dropped")
    assert [report["data"]["dropped"] for report in reports] == [31]
    assert receiver.signals()[0] == reports[0]  # in front of the backlog, in the first batch the gateway took
    assert dispatcher.stats().dropped_pending == 0

    dispatcher.emit(mail(999))
    assert dispatcher.flush(5.0)
    assert len(receiver.integration("dropped")) == 1  # the counter was reset


def test_overflow_while_a_batch_is_in_flight_keeps_its_id_order_and_counts(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver
) -> None:
    receiver.stop()
    dispatcher = make_dispatcher(max_buffered=20, batch_size=10)
    emitted = [mail(n) for n in range(22)]
    for signal in emitted[:5]:
        dispatcher.emit(signal)
    dispatcher.start()  # the batch in flight: m0..m4 and `started`
    receiver.wait_for(lambda: dispatcher.stats().failures_total.get("connection", 0) >= 1)
    for signal in emitted[5:]:
        dispatcher.emit(signal)  # 23 rows for 20 places: m0, m1, m2 go, from the batch in flight
    assert dispatcher.stats().overflow_dropped_total == 3
    receiver.start()
    assert dispatcher.flush(5.0)

    first, second, third = ([s["id"] if s["type"] == "mail" else s["data"]["event"] for s in receiver.accepted[batch_id]]
                            for batch_id in receiver.order)
    assert first == ["mail-000003", "mail-000004", "started"]  # what survived of the batch in flight
    assert second == ["dropped", *ids(emitted[5:14])]  # then the report, in front of the next batch
    assert third == ids(emitted[14:])
    assert receiver.integration("dropped")[0]["data"]["dropped"] == 3
    assert len(receiver.requests) == 3


def test_signals_the_gateway_rejects_are_dropped_and_counted_not_retried(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver
) -> None:
    receiver.reject = lambda signal: "error_class: unknown" if signal["type"] == "mail" and signal["data"]["error_class"] == "e3" else None
    dispatcher = make_dispatcher()
    for n in range(6):
        dispatcher.emit(mail(n))
    dispatcher.start()
    assert dispatcher.flush(5.0)
    stats = dispatcher.stats()
    assert stats.rejected_total == 1 and stats.delivered_total == 6  # 5 mails and `started`
    assert len(receiver.requests) == 1 and stats.buffered == 0


# -- waiting: backoff, Retry-After, the breaker ------------------------------------------------------------------


def gaps(receiver: Receiver) -> list[float]:
    times = [seen.at for seen in receiver.requests]
    return [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)]


def test_the_breaker_opens_after_consecutive_failures_and_probes_with_one_request(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver
) -> None:
    clock = FakeClock()
    receiver.clock = clock
    receiver.answer(*[(500,)] * 6)
    dispatcher = make_dispatcher(clock=clock, sleep=clock.sleep, random=lambda: 1.0, backoff_base=1.0, backoff_cap=4.0,
                                 breaker_threshold=3, breaker_cooldown=20.0)
    for n in range(3):
        dispatcher.emit(mail(n))
    dispatcher.start()
    assert dispatcher.flush(5.0)

    # Backoff 1 s, 2 s; the third failure opens the breaker: no request for 20 s, then one probe, which fails
    # and opens it again, three times, until the seventh request (a probe) succeeds and closes it.
    assert gaps(receiver) == [1.0, 2.0, 20.0, 20.0, 20.0, 20.0]
    assert [seen.status for seen in receiver.requests] == [500] * 6 + [200]
    assert len({seen.batch_id for seen in receiver.requests}) == 1
    stats = dispatcher.stats()
    assert stats.failures_total == {"server_error": 6} and stats.breaker == "closed"
    assert ids(receiver.signals(app_only=True)) == ids([mail(n) for n in range(3)])


def test_retry_after_is_honoured_and_429_does_not_open_the_breaker(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver
) -> None:
    clock = FakeClock()
    receiver.clock = clock
    http_date = email.utils.formatdate(clock.now + 7 + 11 + 11 + 30, usegmt=True)  # 30 s after the fourth request
    receiver.answer((503, {"Retry-After": "7"}), (429, {"Retry-After": "11"}), (429, {"Retry-After": "11"}),
                    (503, {"Retry-After": http_date}))
    dispatcher = make_dispatcher(clock=clock, sleep=clock.sleep, random=lambda: 0.0, breaker_threshold=3,
                                 breaker_cooldown=100.0)
    dispatcher.emit(mail(1))
    dispatcher.start()
    assert dispatcher.flush(5.0)

    measured = gaps(receiver)
    assert measured[:3] == [7.0, 11.0, 11.0]
    assert 29.0 <= measured[3] <= 31.0  # an HTTP-date has whole seconds
    stats = dispatcher.stats()
    assert stats.failures_total == {"unavailable": 2, "rate_limited": 2} and stats.breaker == "closed"
    assert ids(receiver.signals(app_only=True)) == ["mail-000001"]


def test_a_client_error_keeps_the_batch_and_waits_for_the_cooldown(
    make_dispatcher: Callable[..., Dispatcher], receiver: Receiver
) -> None:
    clock = FakeClock()
    receiver.clock = clock
    receiver.answer((401,), (404,))
    dispatcher = make_dispatcher(clock=clock, sleep=clock.sleep, random=lambda: 0.0, breaker_threshold=5, breaker_cooldown=50.0)
    dispatcher.emit(mail(1))
    dispatcher.start()
    assert dispatcher.flush(5.0)
    assert gaps(receiver) == [50.0, 50.0]  # one 4xx opens the breaker at once: no hammering
    assert len({seen.batch_id for seen in receiver.requests}) == 1
    assert dispatcher.stats().failures_total == {"client_error": 2}
    assert ids(receiver.signals(app_only=True)) == ["mail-000001"]


def test_backoff_is_exponential_full_jitter_and_bounded() -> None:
    draws = iter([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0])
    backoff = Backoff(base=0.5, cap=4.0, random=lambda: next(draws))
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(3) == 1.0 and backoff.delay(100) == 0.0


def test_breaker_state_machine() -> None:
    now = [1000.0]
    moves: list[tuple[str, str]] = []
    breaker = CircuitBreaker(threshold=2, cooldown=10.0, clock=lambda: now[0], on_change=lambda a, b: moves.append((a.value, b.value)))
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow() and breaker.wait_time() == 10.0
    now[0] += 10.0
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN  # the probe
    breaker.failure()  # one failed probe is enough to open again
    assert breaker.state is BreakerState.OPEN and breaker.wait_time() == 10.0
    now[0] += 10.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED  # the failure count restarted
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"), ("half_open", "closed")]


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [(200, Kind.DELIVERED, "accepted"), (202, Kind.DELIVERED, "accepted"), (409, Kind.DELIVERED, "duplicate"),
     (429, Kind.RATE_LIMITED, "rate_limited"), (503, Kind.RETRY, "unavailable"), (500, Kind.RETRY, "server_error"),
     (502, Kind.RETRY, "server_error"), (408, Kind.RETRY, "server_error"), (400, Kind.CLIENT_ERROR, "client_error"),
     (401, Kind.CLIENT_ERROR, "client_error"), (413, Kind.CLIENT_ERROR, "client_error"), (302, Kind.CLIENT_ERROR, "client_error")],
)
def test_responses_are_classified(status: int, kind: Kind, reason: str) -> None:
    outcome = classify(status, None, b"", 0.0)
    assert (outcome.kind, outcome.reason) == (kind, reason)


def test_a_200_body_is_read_for_rejections_and_duplicates() -> None:
    body = json.dumps({"accepted": 2, "rejected": [{"index": 1, "reason": "data.x: field not allowed"}], "duplicate": False})
    outcome = classify(200, None, body.encode(), 0.0)
    assert (outcome.accepted, outcome.rejected, outcome.duplicate) == (2, [(1, "data.x: field not allowed")], False)
    assert classify(200, None, b'{"accepted":0,"rejected":[],"duplicate":true}', 0.0).duplicate
    assert classify(200, None, b"not json", 0.0).kind is Kind.DELIVERED


def test_retry_after_values() -> None:
    now = 1_764_324_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 45, usegmt=True), now) == 45.0
    assert parse_retry_after(email.utils.formatdate(now - 45, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None and parse_retry_after("nan", now) is None


# -- heartbeats, toggles, several processes -----------------------------------------------------------------------


def test_heartbeats_are_emitted_every_interval(make_dispatcher: Callable[..., Dispatcher], receiver: Receiver) -> None:
    dispatcher = make_dispatcher(heartbeat_every=0.1)
    dispatcher.start()
    receiver.wait_for(lambda: len(receiver.integration("heartbeat")) >= 3, timeout=3.0)
    heartbeats = receiver.integration("heartbeat")
    assert all(isinstance(beat["data"]["buffered"], int) for beat in heartbeats)
    stamps = [datetime.strptime(beat["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp() for beat in heartbeats[:3]]
    assert all(later - earlier >= 0.099 for earlier, later in itertools.pairwise(stamps))
    assert dispatcher.stats().heartbeats_total >= 3


def test_switched_off_types_are_dropped_and_counted(make_dispatcher: Callable[..., Dispatcher], receiver: Receiver) -> None:
    builder = Signals(SITE, IDENTITY_KEY)
    dispatcher = make_dispatcher(enabled_types={"auth"}, heartbeat_every=0.05)
    dispatcher.start()
    assert dispatcher.emit(mail(1)) is False
    assert dispatcher.emit(builder.auth("failure", "password", user="alice")) is True
    time.sleep(0.15)  # heartbeats would be due, but `integration` is off too
    assert dispatcher.flush(5.0)
    assert [s["type"] for s in receiver.signals()] == ["auth"]
    assert dispatcher.stats().disabled_total == {"mail": 1}

    dispatcher.set_enabled_types(None)
    assert dispatcher.emit(mail(2)) is True
    assert dispatcher.flush(5.0)
    assert ids(receiver.signals(app_only=True))[-1] == "mail-000002"
    with pytest.raises(ValueError, match="enabled_types: unknown signal type 'email'"):
        dispatcher.set_enabled_types({"mail", "email"})


def test_processes_sharing_a_buffer_send_through_one_sender(make_dispatcher: Callable[..., Dispatcher], receiver: Receiver) -> None:
    one, two = make_dispatcher(), make_dispatcher()
    one.start()
    receiver.wait_for(lambda: one.stats().sending)
    two.start()
    emitted = []
    for n in range(100):
        emitted.append(mail(n))
        (one if n % 2 else two).emit(emitted[-1])
    assert one.flush(5.0) and two.flush(5.0)
    assert ids(receiver.signals(app_only=True)) == ids(emitted)
    assert (one.stats().sending, two.stats().sending) == (True, False)
    assert two.stats().batches_total == 0

    one.close(timeout=1.0)  # the other process takes over
    two.emit(mail(100))
    assert two.flush(5.0)
    assert ids(receiver.signals(app_only=True))[-1] == "mail-000100" and two.stats().sending


# -- validation ---------------------------------------------------------------------------------------------------


def _with(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    signal = mail(1)
    change(signal)
    return signal


@pytest.mark.parametrize(
    ("signal", "message"),
    [
        (_with(lambda s: s["data"].update(outcome="ok")), "data.outcome: input should be"),
        (_with(lambda s: s["data"].update(email="a@b.c")), "data.email: field not allowed"),
        (_with(lambda s: s.pop("ts")), "ts: field required"),
        (_with(lambda s: s.update(ts="2026-02-30T10:00:00Z")), "ts: 2026-02-30 is not a calendar date"),
        (_with(lambda s: s.update(ts=datetime.now(UTC))), "ts: not representable in JSON"),
        (_with(lambda s: s.update(seq=1.0)), "seq: input should be a valid integer"),
        (_with(lambda s: s.update(id="short")), "id: string should match pattern"),
        (_with(lambda s: s.update(site="other-site")), "site: 'other-site' is not this dispatcher's site"),
        (_with(lambda s: s.update(type="tick", data={})), "type: 'tick' is written by the gateway"),
        (_with(lambda s: s.update(type="sms")), "type: unknown signal type 'sms'"),
        (_with(lambda s: s["data"].update(transport="x" * 33)), "data.transport: string should have at most 32 characters"),
        ("not a dict", "signal: must be a dict"),
    ],
)
def test_invalid_signals_raise_naming_the_field(make_dispatcher: Callable[..., Dispatcher], signal: Any, message: str) -> None:
    dispatcher = make_dispatcher()
    with pytest.raises(InvalidSignal) as raised:
        dispatcher.emit(signal)
    assert str(raised.value).startswith(message)
    assert isinstance(raised.value, ValueError)
    assert dispatcher.stats().buffered == 0


def test_an_oversized_signal_is_rejected(make_dispatcher: Callable[..., Dispatcher]) -> None:
    signals = Signals(SITE, IDENTITY_KEY)
    big = signals.php_error("fatal", "plugin:" + "é" * 120, "wp-content/" + "€" * 240, 1, "boom")
    assert len(json.dumps(big, separators=(",", ":"), ensure_ascii=False).encode()) <= 2048
    big["data"]["component"] = "\x01" * 128  # each within its length limit, but \u0001 takes 6 bytes in JSON
    big["data"]["file"] = "😀" * 256
    big["id"] = "i" * 64
    with pytest.raises(InvalidSignal, match="over the 2048-byte limit"):
        make_dispatcher().emit(big)


def test_constructor_arguments_are_checked(tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "b.sqlite3"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"site": "Shop EU"}, "site:"),
        ({"secret": ""}, "secret: must be a non-empty string"),
        ({"secret": "whsec_***"}, "secret: the part after 'whsec_' is not valid base64"),
        ({"url": "ftp://gateway"}, "url: must be an http"),
        ({"batch_size": 1001}, "batch_size: must be between 1 and 1000"),
        ({"max_buffered": 0}, "max_buffered: must be at least 1"),
        ({"heartbeat_every": 0}, "heartbeat_every: must be > 0"),
        ({"enabled_types": "mail"}, "enabled_types: must be a collection"),
    ]
    for change, message in cases:
        arguments: dict[str, Any] = {"site": SITE, "secret": SECRET, "url": receiver.url, "buffer_path": path, **change}
        with pytest.raises(ValueError) as raised:
            Dispatcher(arguments.pop("site"), arguments.pop("secret"), arguments.pop("url"), **arguments)
        assert str(raised.value).startswith(message)
        assert "***" not in str(raised.value)
    Dispatcher(SITE, SECRET, receiver.url, buffer_path=path).close()
    with pytest.raises(ValueError, match="buffer_path: this buffer belongs to site 'shop-eu', not 'blog'"):
        Dispatcher("blog", SECRET, receiver.url, buffer_path=path)


def test_the_buffer_is_sqlite_in_wal_mode(make_dispatcher: Callable[..., Dispatcher], tmp_path: Path) -> None:
    dispatcher = make_dispatcher()
    dispatcher.emit(mail(1))
    with sqlite3.connect(tmp_path / "buffer.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [json.loads(body)["id"] for (body,) in db.execute("SELECT body FROM signals")] == ["mail-000001"]


# -- privacy helpers and builders ---------------------------------------------------------------------------------


def test_hash_identity_is_hmac_sha256_keyed_per_site() -> None:
    expected = hmac.new(b"key-a", b"alice@example.com", hashlib.sha256).hexdigest()
    assert hash_identity("alice@example.com", "key-a") == expected
    assert hash_identity("alice@example.com", "key-b") != expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    with pytest.raises(ValueError, match="site_key"):
        hash_identity("alice", "")


@pytest.mark.parametrize(
    ("ip", "prefix"),
    [("203.0.113.77", "203.0.113.0/24"), (" 198.51.100.255 ", "198.51.100.0/24"), ("2001:db8:abcd:12::1", "2001:db8:abcd::/48"),
     ("[2001:db8::1]", "2001:db8::/48"), ("fe80::1%eth0", "fe80::/48"), ("::ffff:192.0.2.9", "192.0.2.0/24")],
)
def test_network_prefix(ip: str, prefix: str) -> None:
    assert network_prefix(ip) == prefix


def test_network_prefix_rejects_garbage_without_echoing_it() -> None:
    with pytest.raises(ValueError) as raised:
        network_prefix("203.0.113.77, 10.0.0.1")
    assert "203.0.113" not in str(raised.value)


def test_builders_produce_valid_envelopes() -> None:
    clock = FakeClock()
    clock.now = 1_764_324_000.1239
    signals = Signals(SITE, IDENTITY_KEY, root="/var/www/html", clock=clock)
    built = [
        signals.auth("failure", "xmlrpc", user="alice", ip="203.0.113.7", privileged=True, seq=3),
        signals.mail("failed", "smtp", "auth"),
        signals.cron("wp_scheduled_delete", "finished", 1200.7),
        signals.php_error("fatal", "plugin:woo", "/var/www/html/wp-content/plugins/woo/x.php", 42, "Undefined index 'k7' at 0x1f"),
        signals.config_change("siteurl", "https://a.example", "https://b.example", actor="admin", sensitive=True),
        signals.db_event("slow_query", "wp_posts", 3500),
        signals.request("get", "/wp-json/wp/v2/posts/{id}?_embed=1", "rest", 200, 35.2, "Chrome"),
        signals.plugin("akismet", "plugin", "updated", "5.0", "5.1"),
        signals.file_edit("/var/www/html/wp-content/uploads/x.php", "created", 512, ["php_in_uploads", "eval_call", "php_in_uploads"]),
        signals.integration("heartbeat", buffered=3, version="1.0"),
    ]
    assert [signal["type"] for signal in built] == ["auth", "mail", "cron", "php_error", "config_change", "db_event", "request",
                                                    "plugin", "file_edit", "integration"]
    for signal in built:
        parsed = parse_record(json.dumps(signal).encode(), 0)
        assert isinstance(parsed, Record), parsed
        assert ULID.match(signal["id"]) and re.match(TS_PATTERN, signal["ts"])
        assert signal["ts"] == "2025-11-28T10:00:00.123Z"
    assert len({signal["id"] for signal in built}) == len(built)
    auth, _, cron, php, config, _, request, _, file_edit, _ = (signal["data"] for signal in built)
    assert auth == {"outcome": "failure", "method": "xmlrpc", "source": "203.0.113.0/24", "privileged": True,
                    "user_hash": hash_identity("alice", IDENTITY_KEY), "user_len": 5}
    assert built[0]["seq"] == 3 and cron["duration_ms"] == 1200
    assert php["file"] == "wp-content/plugins/woo/x.php"
    assert php["fingerprint"] == fingerprint("Undefined index 'other' at 0x2a", IDENTITY_KEY)  # same message, other details
    assert config["after_hash"] == hash_identity("https://b.example", IDENTITY_KEY)
    assert (request["method"], request["path"], request["duration_ms"]) == ("GET", "/wp-json/wp/v2/posts/{id}", 35)
    assert file_edit["path"] == "wp-content/uploads/x.php" and file_edit["flags"] == ["php_in_uploads", "eval_call"]


def test_builders_fit_outside_values_and_reject_programming_mistakes() -> None:
    signals = Signals(SITE, IDENTITY_KEY)
    long_user = "u" * 300
    auth = signals.auth("failure", "password", user=long_user, ip="forged, header")
    assert auth["data"]["user_len"] == 256 and "source" not in auth["data"]
    request = signals.request("PROPFIND", "/a b\tc@d#frag", "dav", 207, -5)
    assert (request["data"]["method"], request["data"]["path"], request["data"]["duration_ms"]) == ("OTHER", "/a b_c_d", 0)
    with pytest.raises(InvalidSignal, match=r"^data\.outcome"):
        signals.auth("ok", "password")
    with pytest.raises(InvalidSignal, match=r"^data\.kind"):
        signals.plugin("akismet", "addon", "updated")
    with pytest.raises(ValueError, match="identity_key"):
        Signals(SITE, "")


def test_nothing_sent_carries_a_raw_identity_address_or_value(make_dispatcher: Callable[..., Dispatcher], receiver: Receiver) -> None:
    dispatcher = make_dispatcher()
    signals = dispatcher.signals(IDENTITY_KEY, root="/home/alice/site")
    dispatcher.emit(signals.auth("failure", "password", user="alice@example.com", ip="203.0.113.77"))
    dispatcher.emit(signals.auth("success", "cookie", user="Alice Liddell", ip="2001:db8:abcd:12:3456:789a:bcde:f012"))
    dispatcher.emit(signals.config_change("admin_email", before="alice@example.com", after="hunter2-secret", actor="alice"))
    dispatcher.emit(signals.php_error("warning", "core", "/home/alice/site/wp-includes/x.php", 9, "Bad password 'hunter2' for alice"))
    dispatcher.emit(signals.request("POST", "/wp-login.php?log=alice&pwd=hunter2", "login", 302, 12))
    dispatcher.start()
    assert dispatcher.flush(5.0)

    sent = b"".join(seen.body for seen in receiver.requests).decode()
    for raw in ("alice", "Alice", "203.0.113.77", "2001:db8:abcd:12:", "hunter2", "example.com"):
        assert raw not in sent, raw
    auths = [s["data"] for s in receiver.signals() if s["type"] == "auth"]
    assert [a["source"] for a in auths] == ["203.0.113.0/24", "2001:db8:abcd::/48"]
    assert auths[0]["user_hash"] == hmac.new(IDENTITY_KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()


# -- the protocol as documented -----------------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_library_and_the_documented_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    batch_id = "01JDQ3K9Y0A1B2C3D4E5F6G7H8"
    body = (b'{"site":"shop-eu","batch_id":"01JDQ3K9Y0A1B2C3D4E5F6G7H8","sent_at":"2026-11-28T10:00:00.000Z","signals":'
            b'[{"v":1,"id":"01JDQ3K9Y0A1B2C3D4E5F6G7H9","site":"shop-eu","type":"mail","ts":"2026-11-28T09:59:59.120Z",'
            b'"data":{"outcome":"failed","transport":"smtp"}}]}')
    timestamp = 1_795_860_000
    expected = Webhook(secret).sign(batch_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    assert sign_batch(secret, batch_id, timestamp, body) == expected
    plain = sign_batch("s3cr3t", batch_id, timestamp, body)
    assert plain == Webhook(b"s3cr3t").sign(batch_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    assert secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")

    protocol = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert body.decode() in protocol
    assert expected in protocol and plain in protocol and str(timestamp) in protocol


def test_new_ids_are_ulids_in_time_order() -> None:
    first, second = new_id(1_764_324_000_000), new_id(1_764_324_000_001)
    assert ULID.match(first) and ULID.match(second) and first[:10] < second[:10]
    assert len({new_id(5) for _ in range(1000)}) == 1000


def test_batches_stay_within_the_byte_limit(make_dispatcher: Callable[..., Dispatcher], receiver: Receiver) -> None:
    signals = Signals(SITE, IDENTITY_KEY)
    dispatcher = make_dispatcher(batch_size=1000)
    emitted = [signals.php_error("fatal", "plugin:" + "€" * 120, f"{n}/" + "😀" * 250, n, "boom") for n in range(800)]
    for signal in emitted:
        dispatcher.emit(signal)
    dispatcher.start()
    assert dispatcher.flush(10.0)
    assert ids(receiver.signals(app_only=True)) == ids(emitted)
    assert len(receiver.requests) >= 2  # 800 × ~1.6 KB do not fit one 1 MiB body
    assert all(len(seen.body) <= MAX_BATCH_BYTES for seen in receiver.requests)


def test_the_public_surface_is_small() -> None:
    import dispatcher

    assert sorted(dispatcher.__all__) == [
        "Dispatcher", "DispatcherStats", "InvalidSignal", "MAX_BATCH_BYTES", "MAX_BATCH_SIGNALS", "Signals", "VERSION",
        "fingerprint", "hash_identity", "network_prefix", "new_id", "normalise_message", "sign_batch",
    ]
    assert all(hasattr(dispatcher, name) for name in dispatcher.__all__)
