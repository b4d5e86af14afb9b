"""Records to a Kafka topic, each batch acknowledged by the broker before the flow moves on.

Bytewax's ``KafkaSink`` ignores a message's partition and never looks at
delivery reports, so a record the broker refused is lost without a word.
:class:`KafkaTopicSink` produces with an idempotent producer (``acks=all``:
no duplicates or reordering from the producer's own retries), keyed as the
flow says (the site, for notifications: one partition per site, in order),
and after each batch waits for the delivery report of every record.

Delivery guarantee: at least once. A record the broker did not acknowledge
within ``timeout`` seconds raises :class:`KafkaDeliveryError`, which stops the
flow; under Bytewax recovery the restart re-emits everything after the last
completed epoch, so nothing is lost, and consumers may see a record twice
(``(alert_id, seq)`` identifies a notification). Under backpressure (a slow
or unreachable broker) the worker blocks in the batch for up to ``timeout``.
The producer's settings are every Logystera producer's
(:mod:`sinks.kafka_client`).
:func:`topic_partitions` is the start-up check: a wrong address or a missing
topic fails at start, not at the first record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from typing_extensions import override

from schemas.errors import Failure
from sinks.kafka_client import CONNECT_AT_ONCE, list_topics, metadata_client_settings, producer_config, reported_once

X = TypeVar("X")

DEFAULT_TIMEOUT_S = 30.0


class KafkaDeliveryError(Failure):
    """Records were not acknowledged by the broker in time (or were refused)."""


def topic_partitions(bootstrap: str, topics: Iterable[str], timeout: float = 10.0,
                     options: Mapping[str, str] | None = None) -> dict[str, int]:
    """How many partitions each of ``topics`` has, for those the cluster has (a missing topic is absent).

    :class:`sinks.kafka_client.KafkaUnreachable` if the cluster does not answer.
    ``options``: the command's ``--kafka-option`` settings (security settings must reach this client too).
    """
    admin = AdminClient({**metadata_client_settings(options), "bootstrap.servers": bootstrap})
    found = list_topics(admin, bootstrap, timeout)
    return {topic: len(found[topic].partitions) for topic in topics if topic in found}


class _ProducerPartition(StatelessSinkPartition[X]):
    def __init__(self, producer: Producer, topic: str, message: Callable[[X], tuple[bytes, bytes]], timeout: float) -> None:
        self._producer = producer
        self._topic = topic
        self._message = message
        self._timeout = timeout

    @override
    def write_batch(self, items: list[X]) -> None:
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        producer, topic = self._producer, self._topic
        for item in items:
            key, value = self._message(item)
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
                except KafkaException as error:
                    raise self._failed(len(items), error.args[0]) from None
        # librdkafka fails a record after message.timeout.ms (= timeout), so every report has come by then.
        deadline = time.monotonic() + self._timeout + 5.0
        while len(producer) and time.monotonic() < deadline:
            producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        if failures:
            raise self._failed(len(items), failures[0], len(failures))
        if len(producer):
            raise KafkaDeliveryError(f"topic {topic!r}: {len(producer)} records still unacknowledged after {self._timeout:g}s")

    def _failed(self, total: int, error: KafkaError, failed: int | None = None) -> KafkaDeliveryError:
        count = f"{failed} of {total}" if failed is not None else f"a batch of {total}"
        return KafkaDeliveryError(f"topic {self._topic!r}: {count} records not acknowledged by the broker ({error.str()})")

    @override
    def close(self) -> None:
        self._producer.flush(self._timeout)


class KafkaTopicSink(DynamicSink[X], Generic[X]):
    """Writes items to ``topic`` as ``message(item) -> (key, value)``, waiting for every delivery report."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        message: Callable[[X], tuple[bytes, bytes]],
        timeout: float = DEFAULT_TIMEOUT_S,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.topic = topic
        self.timeout = timeout
        self._message = message
        self._config = {
            **producer_config(bootstrap, {**(options or {}), "message.timeout.ms": max(1, int(timeout * 1000))}),
            # Connected to the brokers from the start, not at the first record: see the producer id below.
            **CONNECT_AT_ONCE,
            **reported_once(),
        }
        # An idempotent producer sends nothing before the broker gave it a producer id, which librdkafka asks for
        # at creation and, finding no broker connected yet, again every 500 ms: a producer made at the first batch
        # held it 0.5-1 s (the first notification of every start; 0.5 s of every bench run). Made now, while the
        # flow is built and started, and connected at once, it has its id by then (measured: ready 0.3 s after
        # creation); the first partition built takes it.
        self._ready: Producer | None = Producer(self._config)

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition[X]:
        producer = self._ready if self._ready is not None else Producer(self._config)  # a Producer is falsy when idle (len)
        self._ready = None
        return _ProducerPartition(producer, self.topic, self._message, self.timeout)
