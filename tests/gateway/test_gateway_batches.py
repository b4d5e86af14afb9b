"""``POST /v1/batches`` on a real uvicorn and a real Tansu: what is written, what is refused and why, duplicates.

Every refusal test checks the status, the reason label and message, the
reason's counter, that the answer echoes no secret, and that nothing reached
the topic.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dispatcher import Dispatcher, sign_batch
from protocol.wire import encode_batch
from schemas.factory import make_signal
from tests.gateway.support import SECRETS, SENT_AT, Clock, RunningGateway, Sender, mail, signal_lines, values
from tests.support.kafka_broker import Broker

pytestmark = pytest.mark.broker

# -- accepted --------------------------------------------------------------------------------------------------


def test_accepted_signals_are_in_the_topic_keyed_by_site_in_order_before_the_answer(
    gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str
) -> None:
    shop = [mail(n) for n in range(200)]
    blog = [mail(n, site="blog") for n in range(3)]
    first = sender.post("shop-eu", shop)
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 200, "rejected": [], "duplicate": False}
    # The answer came after the delivery reports: the records are there as soon as it is.
    records = shared_broker.read_all(topic)
    assert [r.value for r in records] == signal_lines(shop)
    assert {r.key for r in records} == {b"shop-eu"} and len({r.partition for r in records}) == 1
    assert [r.offset for r in records] == list(range(200))

    assert sender.post("blog", blog).json()["accepted"] == 3
    second = sender.post("shop-eu", [mail(n) for n in range(200, 210)])
    assert second.json()["accepted"] == 10
    records = shared_broker.read_all(topic)
    by_site: dict[bytes, list[dict[str, Any]]] = {}
    for record in records:
        assert json.loads(record.value)["site"].encode() == record.key
        by_site.setdefault(record.key or b"", []).append(json.loads(record.value))
    assert by_site[b"shop-eu"] == shop + [mail(n) for n in range(200, 210)]
    assert by_site[b"blog"] == blog
    assert len({r.partition for r in records if r.key == b"shop-eu"}) == 1
    assert gateway.metric("logystera_gateway_signals_accepted_total") == 213
    assert gateway.metric("logystera_gateway_batches_total", outcome="accepted") == 3


def test_signals_are_written_as_compact_json_keeping_key_order_and_the_ts_string(
    sender: Sender, shared_broker: Broker, topic: str
) -> None:
    spaced = (b'{"site": "shop-eu", "batch_id": "spaced-batch-01", "sent_at": "2026-11-28T10:00:00.000Z", "signals": [\n'
              b'  {"type": "mail", "v": 1, "id": "mail-spaced-1", "site": "shop-eu", "ts": "2026-11-28T10:00:00.1234Z",'
              b' "data": {"transport": "caf\\u00e9", "outcome": "sent", "error_class": null}}\n]}')
    response = sender.post("shop-eu", [], batch_id="spaced-batch-01", body=spaced)
    assert response.json() == {"accepted": 1, "rejected": [], "duplicate": False}
    [record] = shared_broker.read_all(topic)
    assert record.value == ('{"type":"mail","v":1,"id":"mail-spaced-1","site":"shop-eu","ts":"2026-11-28T10:00:00.1234Z",'
                            '"data":{"transport":"café","outcome":"sent","error_class":null}}').encode()


def test_the_dispatcher_delivers_through_the_gateway_exactly_once_in_order(
    gateway: RunningGateway, shared_broker: Broker, topic: str, tmp_path: Any
) -> None:
    dispatcher = Dispatcher("shop-eu", SECRETS["shop-eu"], gateway.url, buffer_path=tmp_path / "buffer.sqlite3",
                            batch_size=40, heartbeat_every=3600.0, poll_interval=0.02)
    try:
        sent = [mail(n) for n in range(100)]
        for signal in sent:
            assert dispatcher.emit(signal)
        dispatcher.start()
        assert dispatcher.flush(20)
        stats = dispatcher.stats()
    finally:
        dispatcher.close(timeout=5)
    written = [s for s in values(shared_broker.read_all(topic)) if s["type"] == "mail"]
    assert written == sent
    assert (stats.rejected_total, stats.duplicate_batches_total, stats.delivered_total) == (0, 0, 101)  # + integration `started`


# -- signals refused inside an accepted batch ---------------------------------------------------------------------


def test_bad_signals_are_listed_with_their_reason_and_the_valid_ones_written(
    gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str
) -> None:
    good = [mail(0, site="blog"), mail(1, site="blog")]
    batch: list[Any] = [
        good[0],
        make_signal("blog", "tick", "2026-11-28T10:00:00.000Z", "tick-forged-1"),
        mail(7, site="shop-eu"),
        make_signal("blog", "request", "2026-11-28T10:00:00.000Z", "req-000001", method="GET", path="/", route_group="home",
                    status=200, duration_ms=3),
        {**mail(8, site="blog"), "data": {"outcome": "failed", "transport": "smtp", "email": "alice@example.com"}},
        {**mail(9, site="blog"), "data": {"outcome": "exploded", "transport": "smtp"}},
        {**mail(10, site="blog"), "ts": "2026-02-30T10:00:00Z"},
        "not an object",
        good[1],
        good[0],
    ]
    response = sender.post("blog", batch)
    assert response.status_code == 200
    assert response.json() == {
        "accepted": 2,
        "rejected": [
            {"index": 1, "reason": "type: ticks are written by the gateway, never sent by a site"},
            {"index": 2, "reason": "site: must be the batch's site 'blog'"},
            {"index": 3, "reason": "type: 'request' is switched off for this site"},
            {"index": 4, "reason": "data.email: field not allowed"},
            {"index": 5, "reason": "data.outcome: input should be 'sent', 'failed', 'deferred' or 'bounced'"},
            {"index": 6, "reason": "ts: 2026-02-30 is not a calendar date"},
            {"index": 7, "reason": "not a JSON object"},
            {"index": 9, "reason": "id: the same as signals[0]"},
        ],
        "duplicate": False,
    }
    assert values(shared_broker.read_all(topic)) == good
    for reason, count in {"tick": 1, "site_mismatch": 1, "type_disabled": 1, "invalid": 4, "duplicate_id": 1}.items():
        assert gateway.metric("logystera_gateway_signals_rejected_total", reason=reason) == count, reason


def test_a_signal_that_repeats_a_key_is_refused_naming_the_key(gateway: RunningGateway, sender: Sender, shared_broker: Broker,
                                                               topic: str) -> None:
    # Re-encoding would keep the last value silently, while another reader of the same bytes could take the first.
    good = mail(0, site="blog")
    quoted = mail(3, site="blog")
    quoted["data"]["transport"] = 'smtp":relay'  # a string that looks like the end of a key: not a repeat
    line = json.dumps(mail(1, site="blog"), separators=(",", ":"))
    repeats = [
        line.replace('"site":"blog"', '"site":"blog","site":"blog"', 1),
        line.replace('"outcome":"failed"', '"outcome":"sent","outcome":"failed"', 1),
        line.replace('"outcome":"failed"', '"outcome" : "sent" , "outcome"\t:"failed"', 1),  # JSON whitespace around the colon
    ]
    body = encode_batch("blog", "batch-repeats", SENT_AT, [json.dumps(good, separators=(",", ":")), *repeats,
                                                           json.dumps(quoted, separators=(",", ":"))])
    response = sender.post("blog", [], batch_id="batch-repeats", body=body)
    assert response.status_code == 200
    assert response.json()["rejected"] == [{"index": 1, "reason": "site: key given more than once"},
                                           {"index": 2, "reason": "data.outcome: key given more than once"},
                                           {"index": 3, "reason": "data.outcome: key given more than once"}]
    assert values(shared_broker.read_all(topic)) == [good, quoted]
    assert gateway.metric("logystera_gateway_signals_rejected_total", reason="invalid") == 3


def test_a_batch_of_only_bad_signals_is_taken_and_writes_nothing(gateway: RunningGateway, sender: Sender, shared_broker: Broker,
                                                                 topic: str) -> None:
    response = sender.post("shop-eu", [{"v": 2}])
    assert response.json() == {"accepted": 0, "rejected": [{"index": 0, "reason": "site: must be the batch's site 'shop-eu'"}],
                               "duplicate": False}
    assert shared_broker.read_all(topic) == []


# -- requests refused as a whole ------------------------------------------------------------------------------------


def _refused(gateway: RunningGateway, response: httpx.Response, status: int, reason: str, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": reason, "message": message}
    assert response.headers["content-type"] == "application/json"
    assert gateway.metric("logystera_gateway_requests_rejected_total", reason=reason) == 1
    for secret in SECRETS.values():
        assert secret not in response.text
    assert "v1," not in response.text


def _nothing_written(shared_broker: Broker, topic: str) -> None:
    assert shared_broker.read_all(topic) == []


BATCH = [mail(1)]


def test_unknown_path_and_wrong_method(gateway: RunningGateway, sender: Sender) -> None:
    _refused(gateway, sender.client.post(f"{gateway.url}/v1/batch", content=b"{}"), 404, "not_found",
             "no such endpoint (POST /v1/batches, GET /healthz, GET /metrics)")
    response = sender.client.get(f"{gateway.url}/v1/batches")
    _refused(gateway, response, 405, "method_not_allowed", "method not allowed here (allowed: POST)")
    assert response.headers["allow"] == "POST"


def test_a_body_that_is_not_declared_json(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str) -> None:
    _refused(gateway, sender.post("shop-eu", BATCH, headers={"content-type": "text/plain"}), 415, "unsupported_media_type",
             "content-type: must be application/json")
    assert sender.post("shop-eu", BATCH, headers={"content-type": "Application/JSON; charset=utf-8"}).status_code == 200


@pytest.mark.parametrize("missing", [["webhook-id"], ["webhook-timestamp"], ["webhook-signature"], ["webhook-id", "webhook-signature"]])
def test_missing_signature_headers(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str,
                                   missing: list[str]) -> None:
    _refused(gateway, sender.post("shop-eu", BATCH, drop=missing), 401, "missing_signature",
             f"{', '.join(missing)}: header required (Standard Webhooks signature, docs/protocol.md §1)")
    _nothing_written(shared_broker, topic)


@pytest.mark.parametrize("batch_id", ["short", "x" * 65, "has space-in-it", "ünïcode-batch"])
def test_a_webhook_id_that_cannot_be_a_batch_id(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str,
                                                batch_id: str) -> None:
    body = sender.body("shop-eu", BATCH, "valid-batch-id")
    _refused(gateway, sender.post("shop-eu", BATCH, body=body, headers={"webhook-id": batch_id.encode()}), 400, "invalid_batch_id",
             "webhook-id: must be the batch_id, 8–64 characters of [A-Za-z0-9_-]")
    _nothing_written(shared_broker, topic)


@pytest.mark.parametrize("timestamp", ["1795860000.5", "-1795860000", "soon", "1" * 13])
def test_a_timestamp_that_is_not_whole_seconds(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str,
                                               timestamp: str) -> None:
    _refused(gateway, sender.post("shop-eu", BATCH, headers={"webhook-timestamp": timestamp}), 401, "invalid_timestamp",
             "webhook-timestamp: must be whole seconds since the Unix epoch")
    _nothing_written(shared_broker, topic)


@pytest.mark.parametrize(("skew", "words"), [(-301, "behind"), (302, "ahead of")])
def test_a_timestamp_more_than_five_minutes_off(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str,
                                                skew: int, words: str) -> None:
    now = int(gateway.gateway.clock())
    response = sender.post("shop-eu", BATCH, timestamp=now + skew)
    assert response.status_code == 401
    assert response.json()["error"] == "stale_timestamp"
    assert re.fullmatch(rf"webhook-timestamp: 3\d\d s {words} the gateway's clock, more than the 300 s allowed "
                        r"\(sign each attempt anew; check the site's clock\)", response.json()["message"])
    _nothing_written(shared_broker, topic)
    assert sender.post("shop-eu", BATCH, timestamp=now + (299 if skew > 0 else -299)).status_code == 200


def test_a_body_over_1_mib_is_refused_by_its_declared_length_and_while_streaming(
    gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str
) -> None:
    big = b'{"site":"shop-eu","pad":"' + b"x" * (1 << 20) + b'"}'
    message = "body: more than 1048576 bytes"
    response = sender.post("shop-eu", [], body=big)
    _refused(gateway, response, 413, "body_too_large", message)
    assert response.headers["connection"] == "close"

    def chunks() -> Any:  # no content-length: chunked, so only counting while reading can stop it
        yield big[:1000]
        for start in range(1000, len(big), 65536):
            yield big[start:start + 65536]

    headers = {"content-type": "application/json", "webhook-id": "streamed-batch", "webhook-timestamp": str(int(sender.clock())),
               "webhook-signature": sign_batch(SECRETS["shop-eu"], "streamed-batch", int(sender.clock()), big)}
    streamed = httpx.post(f"{gateway.url}/v1/batches", content=chunks(), headers=headers, timeout=10)
    assert streamed.status_code == 413 and streamed.json()["error"] == "body_too_large"
    assert gateway.metric("logystera_gateway_requests_rejected_total", reason="body_too_large") == 2
    _nothing_written(shared_broker, topic)


@pytest.mark.parametrize(
    "body",
    [b'{"batch_id":"x","site":"shop-eu"}', b'["shop-eu"]', b'{"site":"Shop-EU"}', b'{"site":shop-eu}', b'', b'{"site":"\\u0073hop-eu"}'],
)
def test_a_body_that_does_not_start_with_its_site(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str,
                                                  body: bytes) -> None:
    _refused(gateway, sender.post("shop-eu", [], body=body), 400, "no_site",
             'body: must be a JSON object whose first member is "site" with a valid site id, within its first 1024 bytes '
             "(docs/protocol.md §1)")
    _nothing_written(shared_broker, topic)


def test_an_unknown_site(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str) -> None:
    _refused(gateway, sender.post("intruder", [mail(1, site="intruder")]), 403, "unknown_site",
             "site: 'intruder' is not registered at this gateway")
    _nothing_written(shared_broker, topic)


def _tampered(sender: Sender) -> httpx.Response:
    body = sender.body("shop-eu", BATCH, "tampered-batch")
    signed_ts = int(sender.clock())
    signature = sign_batch(SECRETS["shop-eu"], "tampered-batch", signed_ts, body)
    return sender.post("shop-eu", [], batch_id="tampered-batch", body=body.replace(b"e1", b"e2"), timestamp=signed_ts,
                       headers={"webhook-signature": signature})


BAD_SIGNATURES: dict[str, Callable[[Sender], httpx.Response]] = {
    "wrong secret": lambda s: s.post("shop-eu", BATCH, secret="guessed"),
    "another site's secret": lambda s: s.post("shop-eu", BATCH, secret=SECRETS["blog"]),
    "tampered body": _tampered,
    "other timestamp": lambda s: s.post("shop-eu", BATCH, batch_id="sig-ts-batch", headers={
        "webhook-signature": sign_batch(SECRETS["shop-eu"], "sig-ts-batch", int(s.clock()) - 1, s.body("shop-eu", BATCH, "sig-ts-batch"))}),
    "garbage": lambda s: s.post("shop-eu", BATCH, headers={"webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl"}),
    "other scheme": lambda s: s.post("shop-eu", BATCH, headers={"webhook-signature": "v2,AAAA v1a,BBBB"}),
}


@pytest.mark.parametrize("how", list(BAD_SIGNATURES))
def test_a_bad_signature(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str, how: str) -> None:
    _refused(gateway, BAD_SIGNATURES[how](sender), 401, "bad_signature",
             "webhook-signature: does not match the body and the secret of site 'shop-eu'")
    _nothing_written(shared_broker, topic)


def test_one_good_signature_among_several_is_enough(sender: Sender) -> None:
    """Standard Webhooks sends one signature per active secret, space-separated (secret rotation)."""
    body = sender.body("shop-eu", BATCH, "rotated-secret")
    ts = int(sender.clock())
    good = sign_batch(SECRETS["shop-eu"], "rotated-secret", ts, body)
    old = sign_batch("retired-secret", "rotated-secret", ts, body)
    response = sender.post("shop-eu", [], batch_id="rotated-secret", body=body, timestamp=ts,
                           headers={"webhook-signature": f"{old} {good}"})
    assert response.json()["accepted"] == 1


@pytest.mark.parametrize(
    ("body", "reason", "message"),
    [
        (b'{"site":"shop-eu","batch_id":"batch-0001",', "invalid_json", "body: not valid JSON: Expecting property name enclosed in "
                                                                         "double quotes: line 1 column 43 (char 42)"),
        (b'{"site":"shop-eu","x":NaN}', "invalid_json", "body: not valid JSON: NaN is not JSON"),
        (b'{"site":"shop-eu","x":"\xff"}', "invalid_json", "body: not UTF-8"),
        (b'{"site":"shop-eu","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_json", "body: nested more than 16 levels deep"),
        (b'{"site":"shop-eu","batch_id":"batch-0001","signals":[{}]}', "invalid_batch", "sent_at: required"),
        (b'{"site":"shop-eu","batch_id":"batch-0001","sent_at":"2026-11-28T10:00:00.000Z","signals":[]}', "invalid_batch",
         "signals: must have at least 1 item(s)"),
        (b'{"site":"shop-eu","batch_id":"batch-0001","sent_at":"2026-11-28T10:00:00.000Z","signals":{}}', "invalid_batch",
         "signals: input should be a valid list"),
        (b'{"site":"shop-eu","batch_id":"batch-0001","sent_at":"yesterday","signals":[{}]}', "invalid_batch",
         "sent_at: 'yesterday' is not a timestamp like 2026-11-28T10:00:00.000Z"),
        (b'{"site":"shop-eu","batch_id":"batch-0001","sent_at":"2026-11-28T10:00:00.000Z","signals":[{}],"note":"hi"}',
         "invalid_batch", "note: unknown field"),
        (b'{"site":"shop-eu","batch_id":"batch-0001","sent_at":"2026-11-28T10:00:00.000Z","signals":[{}],"site":"blog"}',
         "invalid_batch", "site: given more than once"),
        (b'{"site":"shop-eu","batch_id":"batch-0001","sent_at":"2026-11-28T10:00:00.000Z","signals":[{}],"signals":[]}',
         "invalid_batch", "signals: given more than once"),
        (b'{"site":"shop-eu","batch_id":"batch-0002","sent_at":"2026-11-28T10:00:00.000Z","signals":[{}]}', "batch_id_mismatch",
         "batch_id: must equal the webhook-id header"),
    ],
)
def test_a_signed_body_that_is_not_a_batch(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str,
                                           body: bytes, reason: str, message: str) -> None:
    response = sender.post("shop-eu", [], batch_id="batch-0001", body=body)
    _refused(gateway, response, 422 if reason == "invalid_batch" else 400, reason, message)
    _nothing_written(shared_broker, topic)


def test_more_than_1000_signals(gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str) -> None:
    _refused(gateway, sender.post("shop-eu", [mail(n) for n in range(1001)]), 413, "too_many_signals",
             "signals: 1001 signals, more than the 1000 a batch may hold")
    _nothing_written(shared_broker, topic)
    assert sender.post("shop-eu", [mail(n) for n in range(1000)]).json()["accepted"] == 1000


# -- duplicates -------------------------------------------------------------------------------------------------------


def test_a_retried_batch_is_answered_as_a_duplicate_and_not_written_again(
    gateway: RunningGateway, sender: Sender, shared_broker: Broker, topic: str
) -> None:
    batch = [mail(1), {"v": 1}, mail(2)]
    first = sender.post("shop-eu", batch, batch_id="retried-batch-1")
    # A retry is signed anew and may be shorter (the site's buffer overflowed meanwhile): batch_id alone decides.
    again = sender.post("shop-eu", batch[1:], batch_id="retried-batch-1", timestamp=int(sender.clock()) + 5)
    assert first.status_code == again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert values(shared_broker.read_all(topic)) == [mail(1), mail(2)]
    assert gateway.metric("logystera_gateway_batches_total", outcome="duplicate") == 1
    assert gateway.metric("logystera_gateway_signals_accepted_total") == 2
    # Batch ids are per site: another site's batch with the same id is its own.
    assert sender.post("blog", [mail(3, site="blog")], batch_id="retried-batch-1").json()["duplicate"] is False


def test_a_batch_id_is_remembered_for_the_dedup_window_only(make_gateway: Callable[..., RunningGateway], shared_broker: Broker,
                                                            topic: str) -> None:
    clock = Clock()
    gateway = make_gateway(shared_broker.bootstrap, topic, clock=clock, dedup_window_s=600.0)
    sender = Sender(gateway.url, clock)
    assert sender.post("shop-eu", [mail(1)], batch_id="window-batch").json()["duplicate"] is False
    clock.offset = 599
    assert sender.post("shop-eu", [mail(1)], batch_id="window-batch").json()["duplicate"] is True
    clock.offset = 600.5
    assert sender.post("shop-eu", [mail(1)], batch_id="window-batch").json()["duplicate"] is False
    assert values(shared_broker.read_all(topic)) == [mail(1), mail(1)]
    assert len(gateway.gateway.ledger) == 1


def test_concurrent_attempts_of_one_batch_write_it_once(gateway: RunningGateway, shared_broker: Broker, topic: str) -> None:
    batch = [mail(n) for n in range(300)]
    senders = [Sender(gateway.url) for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda s: s.post("shop-eu", batch, batch_id="raced-batch-01").json(), senders))
    assert sorted(a["duplicate"] for a in answers) == [False, True, True, True]
    assert all(a["accepted"] == 300 for a in answers)
    assert values(shared_broker.read_all(topic)) == batch
