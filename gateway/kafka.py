"""Writing records to Kafka and knowing, record by record, which ones the broker took.

One idempotent producer (``enable.idempotence``, ``acks=all``: the
guarantees of every Logystera producer, :mod:`sinks.kafka_client`) per gateway
process carries signals and ticks alike, keyed by site, so a site's records
share one partition and keep their order. :meth:`KafkaWriter.enqueue` hands
a group of records to librdkafka; a :class:`DeliveryHandle` collects their
delivery reports (delivered by a poll thread) and resolves once every record
has one. Nothing is treated as written before its report says so.

librdkafka keeps retrying a record until ``message.timeout.ms`` (5 minutes
unless configured): a handle that is not done yet is not a failure, the
records may still be written, which is why the gateway keeps waiting on it
rather than producing the same signals again.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sinks.kafka_client import CONNECT_AT_ONCE, PRODUCER_GUARANTEES, list_topics, producer_config, reported_once

log = logging.getLogger("logystera.gateway")

DEFAULTS: dict[str, Any] = {"linger.ms": 5, **CONNECT_AT_ONCE}
"""The gateway's own starting point, on top of every producer's (:data:`sinks.kafka_client.PRODUCER_DEFAULTS`).

It connects at once, as every client of a ``detect`` start does: the topic check at the gateway's start took
53 ms with librdkafka's sparse connections and 2–6 ms without (on the test broker, three starts each)."""


class DeliveryHandle:
    """The delivery reports of one group of records (a batch's signals, a round of ticks).

    ``future`` resolves (to the handle) once every record has a report, or has
    been refused before reaching librdkafka. Reports arrive on the poll
    thread; the handle may be read from any thread.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        self._written = [False] * len(self.ids)
        self._remaining = len(self.ids)
        self._lock = threading.Lock()
        self.error: str | None = None
        self.started = time.monotonic()
        self.elapsed: float | None = None
        self.future: concurrent.futures.Future[DeliveryHandle] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()  # never cancellable: reports still arrive after a waiter gives up
        if not self.ids:
            self._finish()

    @property
    def done(self) -> bool:
        """Whether every record has its report."""
        return self.future.done()

    @property
    def written_ids(self) -> list[str]:
        """Ids of the records the broker acknowledged so far."""
        with self._lock:
            return [id_ for id_, ok in zip(self.ids, self._written, strict=True) if ok]

    @property
    def all_written(self) -> bool:
        """Whether every record is done and acknowledged."""
        with self._lock:
            return self._remaining == 0 and all(self._written)

    def report(self, index: int, error: KafkaError | None, _message: Message | None = None) -> None:
        """Delivery report of record ``index`` (librdkafka's ``on_delivery``)."""
        with self._lock:
            self._written[index] = error is None
            if error is not None and self.error is None:
                self.error = error.str()
            self._remaining -= 1
            finished = self._remaining == 0
        if finished:
            self._finish()

    def refuse_from(self, index: int, reason: str) -> None:
        """Records ``index`` and after never reached librdkafka (its queue is full, the producer failed)."""
        if index >= len(self.ids):
            return  # nothing left to refuse (an empty group is done already)
        with self._lock:
            self._remaining -= len(self.ids) - index
            if self.error is None:
                self.error = reason
            finished = self._remaining == 0
        if finished:
            self._finish()

    def _finish(self) -> None:
        self.elapsed = time.monotonic() - self.started
        self.future.set_result(self)


class KafkaWriter:
    """The gateway's producer, its poll thread, and the broker health check."""

    def __init__(self, bootstrap: str, topic: str, options: Mapping[str, str] | None = None) -> None:
        """Build the producer; a :class:`ValueError` names an option librdkafka refuses or one that would weaken delivery."""
        options = dict(options or {})
        for name in options:
            if name in PRODUCER_GUARANTEES or name == "bootstrap.servers":
                raise ValueError(f"{name}: set by the gateway, cannot be changed")
        config = {**producer_config(bootstrap, {**DEFAULTS, **options}),
                  **reported_once(lambda text: log.warning("Kafka: %s", text), fatal=self._on_fatal)}
        try:
            self._producer = Producer(config)
        except (KafkaException, ValueError, TypeError) as error:
            detail = error.args[0].str() if isinstance(error, KafkaException) else str(error)
            raise ValueError(f"Kafka producer: {detail}") from None
        self.topic = topic
        self.bootstrap = bootstrap
        self.fatal: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        """Start serving delivery reports."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="gateway-kafka-poll", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _on_fatal(self, text: str) -> None:
        self.fatal = text
        log.error("Kafka producer failed for good, restart the gateway: %s", text)

    def enqueue(self, handle: DeliveryHandle, records: Sequence[tuple[str, bytes]]) -> None:
        """Hand ``(key, value)`` records, in order, to librdkafka; their reports go to ``handle`` (same order as its ids)."""
        produce, topic = self._producer.produce, self.topic
        if self.fatal is not None:
            handle.refuse_from(0, self.fatal)
            return
        for index, (key, value) in enumerate(records):
            try:
                produce(topic, value, key, on_delivery=partial(handle.report, index))
            except BufferError:
                handle.refuse_from(index, "the producer's local queue is full")
                return
            except KafkaException as error:
                handle.refuse_from(index, error.args[0].str())
                return

    def partitions(self, timeout: float) -> int:
        """Partitions of the topic (0 when it does not exist), from a fresh metadata request; :class:`KafkaUnreachable` if none comes."""
        found = list_topics(self._producer, self.bootstrap, timeout).get(self.topic)
        return 0 if found is None or found.error is not None else len(found.partitions)

    def close(self, timeout: float) -> int:
        """Wait up to ``timeout`` for outstanding records, stop the poll thread; returns how many were left undelivered."""
        left = int(self._producer.flush(timeout))
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        return left

