"""What no single input may do to a real gateway (issue 9): crash a request, move a site's clock to year 9999, or hold it.

Over loopback against uvicorn serving the gateway exactly as the CLI does:
a body nested just deep enough to pass the JSON parser but not the code
after it, signals dated far ahead of the gateway's clock, and hundreds of
connections that send their request slowly or never finish it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest

from dispatcher import sign_batch
from schemas.timestamps import format_ts
from tests.gateway.support import SECRETS, RunningGateway, Sender, mail, read_until_closed, signal_lines
from tests.support.kafka_broker import Broker
from tests.support.polling import wait_for

pytestmark = pytest.mark.broker

# -- nesting --------------------------------------------------------------------------------------------------------


def test_a_body_nested_deeper_than_16_levels_is_a_400_at_every_depth(gateway: RunningGateway, sender: Sender, shared_broker: Broker,
                                                                      topic: str) -> None:
    """Around 965 levels the parser used to succeed and re-encoding the signal hit Python's recursion limit: a 500."""
    prefix = json.dumps(mail(1), separators=(",", ":"))[:-1]
    depths = [17, 100, *range(930, 1000)]
    for depth in depths:
        batch_id = f"deep-batch-{depth}"
        signal = f'{prefix},"x":{"[" * depth}{"]" * depth}}}'
        body = f'{{"site":"shop-eu","batch_id":"{batch_id}","sent_at":"2026-11-28T10:00:00.000Z","signals":[{signal}]}}'.encode()
        response = sender.post("shop-eu", [], batch_id=batch_id, body=body)
        assert response.status_code == 400, (depth, response.text)
        assert response.json() == {"error": "invalid_json", "message": "body: nested more than 16 levels deep"}
    assert gateway.metric("logystera_gateway_requests_rejected_total", reason="invalid_json") == len(depths)
    assert shared_broker.read_all(topic) == []
    # 16 levels is a body, not a problem: the signal is refused on its own (unknown field), the batch taken.
    shallow = f'{prefix},"x":{"[" * 12}{"]" * 12}}}'
    body = f'{{"site":"shop-eu","batch_id":"shallow-batch","sent_at":"2026-11-28T10:00:00.000Z","signals":[{shallow}]}}'.encode()
    assert sender.post("shop-eu", [], batch_id="shallow-batch", body=body).json()["rejected"][0]["index"] == 0


# -- far-future timestamps ------------------------------------------------------------------------------------------


def test_signals_dated_more_than_max_future_ahead_are_refused_one_by_one(gateway: RunningGateway, sender: Sender,
                                                                         shared_broker: Broker, topic: str) -> None:
    now = int(time.time() * 1000)
    soon = mail(0, ts=format_ts(now + 240_000))
    batch = [mail(1, ts="9999-12-31T23:59:59.999Z"), soon, mail(2, ts=format_ts(now + 360_000)), mail(3, ts="2199-12-31T23:59:59.999Z")]
    response = sender.post("shop-eu", batch)
    assert response.status_code == 200
    answer = response.json()
    assert answer["accepted"] == 1
    rejected = {entry["index"]: entry["reason"] for entry in answer["rejected"]}
    assert sorted(rejected) == [0, 2, 3]
    # Year 9999 is outside the contract's 1970–2199 once schemas bound `ts`; either way it never reaches the topic.
    assert rejected[2] == f"ts: {batch[2]['ts']} is more than 300 s ahead of the gateway's clock (check the site's clock)"
    assert rejected[3] == "ts: 2199-12-31T23:59:59.999Z is more than 300 s ahead of the gateway's clock (check the site's clock)"
    assert [r.value for r in shared_broker.read_all(topic)] == signal_lines([soon])
    assert gateway.metric("logystera_gateway_signals_rejected_total", reason="future_ts") >= 2


def test_max_future_is_an_option(make_gateway: Callable[..., RunningGateway], shared_broker: Broker, topic: str) -> None:
    running = make_gateway(shared_broker.bootstrap, topic, max_future_s=3600)
    client = Sender(running.url)
    try:
        ahead = mail(0, ts=format_ts(int(time.time() * 1000) + 3_000_000))
        assert client.post("shop-eu", [ahead]).json() == {"accepted": 1, "rejected": [], "duplicate": False}
    finally:
        client.client.close()


# -- slow and too many clients --------------------------------------------------------------------------------------


def _head(content_length: int, batch_id: str = "slow-client-batch") -> bytes:
    """A request head that passes every check made before the body (the signature itself is checked only after it)."""
    return (f"POST /v1/batches HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n"
            f"webhook-id: {batch_id}\r\nwebhook-timestamp: {int(time.time())}\r\nwebhook-signature: v1,AAAA\r\n\r\n").encode()


def _connect(gateway: RunningGateway, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def _gauge(gateway: RunningGateway, name: str) -> float:
    """A gauge read in the gateway's process (``GET /metrics`` would itself be one more connection)."""
    return gateway.gateway.metrics.registry.get_sample_value(name) or 0.0


def _error_of(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def test_slow_clients_are_closed_at_their_deadline_and_held_bytes_stay_within_the_budget(
    make_gateway: Callable[..., RunningGateway], shared_broker: Broker, topic: str
) -> None:
    """300 connections: idle, half a head, or a whole head and all but the last byte of a body; a real batch still gets its 200."""
    budget, body_size = 4 << 20, 64 << 10
    # Deadlines well above the time it takes to open 300 connections on a busy machine: none may close before all are open.
    running = make_gateway(shared_broker.bootstrap, topic, header_timeout_s=8.0, body_timeout_s=10.0, max_pending_bytes=budget)
    body_prefix = b'{"site":"shop-eu","batch_id":"slow-client-batch","sent_at":"2026-11-28T10:00:00.000Z","signals":[' + b" " * body_size
    idle = [_connect(running) for _ in range(50)]
    half_heads = [_connect(running, b"POST /v1/batches HTTP/1.1\r\nhost: gateway\r\nwebhook-id: slow") for _ in range(50)]
    stalled = [_connect(running, _head(body_size) + body_prefix[: body_size - 1]) for _ in range(200)]
    # Every connection is open, or was dropped for the budget (the oldest stalled bodies go first, closed with a 503).
    wait_for(lambda: _gauge(running, "logystera_gateway_connections")
             + (running.gateway.metrics.registry.get_sample_value("logystera_gateway_requests_rejected_total", {"reason": "overloaded"})
                or 0.0) >= 300,
             "the slow connections are not all open or dropped", timeout=30)

    client = Sender(running.url)
    try:
        response = client.post("shop-eu", [mail(1)])
        assert response.status_code == 200, response.text
        assert _gauge(running, "logystera_gateway_connections") > 100  # answered while the slow ones were still held
        # 200 bodies of 64 KiB were sent: never more than the budget held at once (oldest dropped first, with a 503).
        assert 0 < _gauge(running, "logystera_gateway_pending_bytes") <= budget
    finally:
        client.client.close()

    assert all(read_until_closed(sock, 30) == b"" for sock in idle)
    assert {_error_of(read_until_closed(sock, 30)) for sock in half_heads} == {(408, "header_timeout")}
    outcomes = [_error_of(read_until_closed(sock, 30)) for sock in stalled]
    assert set(outcomes) <= {(408, "body_timeout"), (503, "overloaded")}
    dropped = outcomes.count((503, "overloaded"))
    assert dropped >= 200 - budget // body_size  # the budget holds at most 64 of them
    assert running.metric("logystera_gateway_requests_rejected_total", reason="header_timeout") == 100
    assert running.metric("logystera_gateway_requests_rejected_total", reason="overloaded") == dropped
    assert running.metric("logystera_gateway_requests_rejected_total", reason="body_timeout") == 200 - dropped
    wait_for(lambda: _gauge(running, "logystera_gateway_connections") == 0, "connections left open", timeout=30)
    assert _gauge(running, "logystera_gateway_pending_bytes") == 0


def test_connections_beyond_the_cap_are_answered_503_and_closed(make_gateway: Callable[..., RunningGateway], shared_broker: Broker,
                                                                topic: str) -> None:
    running = make_gateway(shared_broker.bootstrap, topic, max_connections=5, header_timeout_s=30.0)
    held = [_connect(running) for _ in range(5)]
    try:
        wait_for(lambda: _gauge(running, "logystera_gateway_connections") == 5, "the five connections are not open", timeout=10)
        answer = read_until_closed(_connect(running), 10)
        assert _error_of(answer) == (503, "too_many_connections")
        assert b"\r\nretry-after: 5\r\n" in answer
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: _gauge(running, "logystera_gateway_connections") == 0, "the held connections are not closed", timeout=10)
    assert running.metric("logystera_gateway_requests_rejected_total", reason="too_many_connections") == 1


def test_the_head_deadline_runs_again_after_each_answer_on_a_kept_alive_connection(
    make_gateway: Callable[..., RunningGateway], shared_broker: Broker, topic: str
) -> None:
    running = make_gateway(shared_broker.bootstrap, topic, header_timeout_s=1.0)
    sock = _connect(running, b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
    sock.settimeout(10)
    answer = b""
    while not answer.endswith(b"}"):  # the whole JSON answer: the connection is kept alive
        answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 ")
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gat")  # the next head, never finished
    assert _error_of(read_until_closed(sock, 10)) == (408, "header_timeout")


def test_an_unknown_site_is_refused_from_the_first_kib_without_reading_the_rest(gateway: RunningGateway) -> None:
    sock = _connect(gateway, _head(500_000) + b'{"site":"intruder","batch_id":"slow-client-batch",' + b" " * 2000)
    status, error = _error_of(read_until_closed(sock, 5))  # the other 498 KB never come
    assert (status, error) == (403, "unknown_site")
    assert gateway.metric("logystera_gateway_requests_rejected_total", reason="unknown_site") == 1


def test_a_body_without_its_site_in_the_first_kib_is_refused(gateway: RunningGateway) -> None:
    sock = _connect(gateway, _head(500_000) + b"{" + b" " * 2000 + b'"site":"shop-eu"')
    assert _error_of(read_until_closed(sock, 5)) == (400, "no_site")


def _signed_request(sender: Sender, site: str, signals: list[dict[str, object]], batch_id: str) -> bytes:
    """A whole signed POST, as bytes, for a client that then does not read its answer."""
    body = sender.body(site, signals, batch_id)
    timestamp = int(time.time())
    head = (f"POST /v1/batches HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"webhook-id: {batch_id}\r\nwebhook-timestamp: {timestamp}\r\n"
            f"webhook-signature: {sign_batch(SECRETS[site], batch_id, timestamp, body)}\r\n\r\n").encode()
    return head + body


def test_an_answer_left_unread_is_abandoned_at_the_send_deadline_and_the_connection_reset(
    make_gateway: Callable[..., RunningGateway], shared_broker: Broker, topic: str
) -> None:
    """A site that posts 1,000 rejected signals (a ~120 KiB answer) and never reads it holds no connection past the deadline."""
    running = make_gateway(shared_broker.bootstrap, topic, send_timeout_s=1.0)
    sender = Sender(running.url)
    try:
        signals: list[dict[str, object]] = []
        for n in range(1000):
            signal = mail(n)
            signal["data"] = {**signal["data"], "x" * 200: 1}  # refused: a field the contract does not allow
            signals.append(signal)
        request = _signed_request(sender, "shop-eu", signals, "unread-answer-batch")
        sock = socket.socket()
        # Before connecting: a small window, and small segments as on a real network (over loopback the kernel's send buffer
        # grows to megabytes and takes any answer whole; with 536-byte segments it stays near 30 KiB, so the answer backs up).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.connect(("127.0.0.1", running.port))
        sock.sendall(request)
        wait_for(lambda: running.metric("logystera_gateway_answers_abandoned_total") == 1, "the unread answer was not abandoned",
                 timeout=15)
        wait_for(lambda: _gauge(running, "logystera_gateway_connections") == 0, "the connection is still open", timeout=5)
        received = read_until_closed(sock, 5)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
        assert length > 100_000 and len(body) < length  # part of the answer, then the reset
        # The same batch from a client that reads: answered in full, and the gateway serves on.
        answer = sender.post("shop-eu", signals, batch_id="read-answer-batch").json()
        assert answer["accepted"] == 0 and len(answer["rejected"]) == 1000
        assert running.metric("logystera_gateway_answers_abandoned_total") == 1
    finally:
        sender.client.close()
