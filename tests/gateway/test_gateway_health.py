"""``GET /healthz`` and ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gateway.errors import REQUEST_REASONS, SIGNAL_REASONS
from gateway.metrics import BATCH_OUTCOMES
from tests.gateway.support import RunningGateway, Sender, mail, metric_value
from tests.support.kafka_broker import Broker, unique_topic

pytestmark = pytest.mark.broker


def test_healthz_says_the_broker_answers_and_the_topic_exists(gateway: RunningGateway, topic: str) -> None:
    response = httpx.get(f"{gateway.url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "topic": topic, "ticker": "off", "broker": "reachable", "partitions": 3}


def test_healthz_is_503_while_the_topic_does_not_exist(make_gateway: Callable[..., RunningGateway], shared_broker: Broker) -> None:
    missing = unique_topic("never-created")
    gateway = make_gateway(shared_broker.bootstrap, missing)
    response = httpx.get(f"{gateway.url}/healthz", timeout=10)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"status": "unavailable", "topic": missing, "ticker": "off", "broker": "reachable", "partitions": 0,
                               "message": f"topic {missing!r} does not exist"}
    assert shared_broker.partition_count(missing) == 0  # asking did not create it


def test_a_batch_for_a_topic_that_does_not_exist_is_503_and_creates_no_topic(
    make_gateway: Callable[..., RunningGateway], shared_broker: Broker,
) -> None:
    # Brokers that auto-create topics (Tansu here, Apache Kafka by default) would turn a misspelt --topic into a new one.
    missing = unique_topic("misspelt")
    gateway = make_gateway(shared_broker.bootstrap, missing, produce_timeout_s=1.0)
    sender = Sender(gateway.url, gateway.gateway.clock)
    try:
        assert sender.post("shop-eu", [mail(1)]).status_code == 503
    finally:
        sender.client.close()
    assert shared_broker.partition_count(missing) == 0


def test_metrics_count_what_happened_in_the_prometheus_text_format(gateway: RunningGateway, sender: Sender) -> None:
    assert sender.post("shop-eu", [mail(1), mail(2), {"v": 1, "site": "shop-eu"}], batch_id="metrics-batch").status_code == 200
    assert sender.post("shop-eu", [mail(1)], batch_id="metrics-batch").json()["duplicate"] is True
    assert sender.post("shop-eu", [mail(3)], secret="wrong").status_code == 401
    assert sender.client.get(f"{gateway.url}/nowhere").status_code == 404

    response = httpx.get(f"{gateway.url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    for name, kind in [
        ("logystera_gateway_signals_accepted_total", "counter"), ("logystera_gateway_signals_rejected_total", "counter"),
        ("logystera_gateway_requests_rejected_total", "counter"), ("logystera_gateway_batches_total", "counter"),
        ("logystera_gateway_produce_seconds", "histogram"), ("logystera_gateway_ticks_written_total", "counter"),
        ("logystera_gateway_tick_rounds_skipped_total", "counter"), ("logystera_gateway_ticker_leader", "gauge"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text, name
    expected = {
        ("logystera_gateway_signals_accepted_total", ()): 2,
        ("logystera_gateway_signals_rejected_total", ("invalid",)): 1,
        ("logystera_gateway_requests_rejected_total", ("bad_signature",)): 1,
        ("logystera_gateway_requests_rejected_total", ("not_found",)): 1,
        ("logystera_gateway_batches_total", ("accepted",)): 1,
        ("logystera_gateway_batches_total", ("duplicate",)): 1,
        ("logystera_gateway_batches_total", ("rejected",)): 2,
        ("logystera_gateway_produce_seconds_count", ()): 1,
    }
    label = {"logystera_gateway_signals_rejected_total": "reason", "logystera_gateway_requests_rejected_total": "reason",
             "logystera_gateway_batches_total": "outcome"}
    every = [(name, (value,)) for name, values in [("logystera_gateway_signals_rejected_total", SIGNAL_REASONS),
                                                   ("logystera_gateway_requests_rejected_total", tuple(REQUEST_REASONS)),
                                                   ("logystera_gateway_batches_total", BATCH_OUTCOMES)] for value in values]
    for name, values in [*every, ("logystera_gateway_signals_accepted_total", ()), ("logystera_gateway_produce_seconds_count", ())]:
        labels = {label[name]: values[0]} if values else {}
        wanted = expected.get((name, values), 0)
        assert metric_value(text, name, **labels) == wanted, (name, values)
        if not wanted:  # present at 0, not missing
            assert any(line.startswith(name) and (not labels or f'"{values[0]}"' in line) for line in text.splitlines()), (name, values)
    assert metric_value(text, "logystera_gateway_produce_seconds_bucket", le="+Inf") == 1
    assert metric_value(text, "logystera_gateway_produce_seconds_sum") > 0
