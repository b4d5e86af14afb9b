"""When the broker does not confirm: 503 with Retry-After, nothing acknowledged that is not written, nothing written twice.

The broker is paused with SIGSTOP (Tansu keeps its data in memory, so a
restart would lose it; a paused broker holds its connections open and takes
the queued requests when continued, the nastiest case for duplicates).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dispatcher import Dispatcher
from tests.gateway.support import SECRETS, RunningGateway, Sender, mail, values
from tests.support.kafka_broker import Broker, unique_topic
from tests.support.polling import wait_for

pytestmark = pytest.mark.broker


def _topic(broker: Broker) -> str:
    name = unique_topic("signals")
    broker.create_topics([name], partitions=3)
    return name


def _until_taken(sender: Sender, batch: list[dict[str, object]], batch_id: str, timeout: float = 30.0) -> httpx.Response:
    """Post a batch the way a site does: again and again with the same batch_id until it is taken."""
    answers: list[httpx.Response] = []

    def taken() -> bool:
        answers.append(sender.post("shop-eu", batch, batch_id=batch_id))
        return answers[-1].status_code == 200

    wait_for(taken, f"200 for batch {batch_id}", timeout)
    assert {a.status_code for a in answers[:-1]} <= {503}
    return answers[-1]


def test_a_paused_broker_gets_503_and_retries_write_each_signal_once(
    broker: Broker, paused: Callable[[bool], None], make_gateway: Callable[..., RunningGateway]
) -> None:
    topic = _topic(broker)
    gateway = make_gateway(broker.bootstrap, topic, produce_timeout_s=1.0, retry_after_s=7, health_timeout_s=0.5)
    sender = Sender(gateway.url)
    warm = [mail(n) for n in range(10)]
    _until_taken(sender, warm, "warm-up-batch")  # the producer has its id and its connection

    paused(True)
    during = [mail(n) for n in range(100, 300)]
    refused = sender.post("shop-eu", during, batch_id="during-pause")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "7"
    assert refused.json() == {"error": "unavailable", "message": "the broker did not confirm the batch in time; retry later"}
    # A retry while the first attempt's signals are still in flight waits for them instead of writing them again.
    again = sender.post("shop-eu", during, batch_id="during-pause")
    assert again.status_code == 503
    assert again.json()["message"] == "the broker has not confirmed an earlier attempt of this batch yet; retry later"
    other = [mail(n) for n in range(300, 310)]
    assert sender.post("shop-eu", other, batch_id="other-during").status_code == 503
    health = httpx.get(f"{gateway.url}/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["broker"] == "unreachable"
    assert gateway.metric("logystera_gateway_batches_total", outcome="unavailable") == 3
    assert gateway.metric("logystera_gateway_signals_accepted_total") == 10  # nothing acknowledged while paused

    paused(False)
    assert _until_taken(sender, during, "during-pause").json() == {"accepted": 200, "rejected": [], "duplicate": False}
    assert _until_taken(sender, other, "other-during").json()["accepted"] == 10
    # Every signal once, in the order of its batch (a site's batches are one ordered stream).
    assert values(broker.read_all(topic)) == warm + during + other
    assert gateway.metric("logystera_gateway_signals_accepted_total") == 220
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200


def test_a_batch_only_partly_written_is_completed_by_its_retries_without_duplicates(
    make_gateway: Callable[..., RunningGateway], broker: Broker
) -> None:
    """A full producer queue refuses the tail of a batch: the written prefix is remembered, retries write only the rest."""
    topic = _topic(broker)
    # At most 50 records wait in the producer; a long linger keeps the first 50 waiting while the rest are offered. At
    # 300 ms it failed once on a loaded machine, likely so: the gateway's thread descheduled mid-batch, the linger ran
    # out, the queue emptied and took more than 50. 1 s leaves room for that, at ~2 s more for the test.
    gateway = make_gateway(broker.bootstrap, topic, kafka_options={"queue.buffering.max.messages": "50", "linger.ms": "1000"})
    sender = Sender(gateway.url)
    batch = [mail(n) for n in range(120)]
    answers = [sender.post("shop-eu", batch, batch_id="partly-written") for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert [a.json()["message"] for a in answers[:2]] == [
        "the broker took 50 of 120 signals; retry later",
        "the broker took 100 of 120 signals; retry later",
    ]
    assert answers[2].json() == {"accepted": 120, "rejected": [], "duplicate": False}
    assert values(broker.read_all(topic)) == batch
    assert gateway.metric("logystera_gateway_signals_accepted_total") == 120


def test_a_dead_broker_gets_503_and_an_unhealthy_healthz(make_gateway: Callable[..., RunningGateway], broker: Broker) -> None:
    topic = _topic(broker)
    gateway = make_gateway(broker.bootstrap, topic, produce_timeout_s=0.5, health_timeout_s=0.5, close_timeout_s=0.5)
    broker.stop()
    response = Sender(gateway.url).post("shop-eu", [mail(1)])
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    health = httpx.get(f"{gateway.url}/healthz", timeout=10)
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable" and health.json()["broker"] == "unreachable"
    assert gateway.metric("logystera_gateway_signals_accepted_total") == 0


def test_the_dispatcher_rides_out_a_paused_broker_without_loss(
    broker: Broker, paused: Callable[[bool], None], make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    topic = _topic(broker)
    gateway = make_gateway(broker.bootstrap, topic, produce_timeout_s=0.5, retry_after_s=1)
    _until_taken(Sender(gateway.url), [mail(0)], "warm-up-batch")
    dispatcher = Dispatcher("shop-eu", SECRETS["shop-eu"], gateway.url, buffer_path=tmp_path / "buffer.sqlite3", batch_size=25,
                            heartbeat_every=3600.0, poll_interval=0.02, backoff_base=0.05, backoff_cap=0.2)
    try:
        paused(True)
        sent = [mail(n) for n in range(1, 101)]
        for item in sent:
            assert dispatcher.emit(item)
        dispatcher.start()
        wait_for(lambda: gateway.metric("logystera_gateway_batches_total", outcome="unavailable") >= 2, "503", 20)
        paused(False)
        assert dispatcher.flush(30)
    finally:
        dispatcher.close(timeout=5)
    assert [s for s in values(broker.read_all(topic)) if s["type"] == "mail"] == [mail(0), *sent]
