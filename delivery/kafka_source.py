"""``logystera deliver --bootstrap``: notification records from the Kafka ``alerts`` topic, offsets committed only when done.

The process reads every partition of the topic itself (no group membership:
one delivery process per topic, since rate limits are per process) from the
offsets committed for ``--group``, and commits a partition's offset only up
to its first record that is not done (:class:`OffsetTracker`), so a restart
re-reads what was not finished; the attempt log then skips what was (see
:mod:`delivery.attempt_log`). Invalid records are reported on stderr as
``TOPIC[P]@OFFSET: reason``, counted and never delivered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from delivery.service import DeliveryService, unless_stopped
from schemas.alerts import ReceivedRecord, parse_notification
from schemas.errors import Failure, UsageError
from sinks.kafka_client import consumer_config, list_topics

KAFKA_BATCH = 500
KAFKA_POLL_S = 0.5
METADATA_TIMEOUT_S = 10.0


class OffsetTracker:
    """Per partition, the offset up to which every record is done: what may be committed."""

    def __init__(self, start: Mapping[int, int]) -> None:
        self._next = dict(start)  # the committable offset per partition
        self._open: dict[int, deque[int]] = {partition: deque() for partition in start}
        self._done: dict[int, set[int]] = {partition: set() for partition in start}

    def read(self, partition: int, offset: int) -> Callable[[], None]:
        """A record was read; call the returned function when it is done."""
        self._open[partition].append(offset)
        return lambda: self._finish(partition, offset)

    def _finish(self, partition: int, offset: int) -> None:
        opened, done = self._open[partition], self._done[partition]
        done.add(offset)
        while opened and opened[0] in done:
            done.discard(opened[0])
            self._next[partition] = opened.popleft() + 1

    def committable(self) -> dict[int, int]:
        """The offset to commit per partition (the next record a restart must read)."""
        return dict(self._next)


async def deliver_kafka(service: DeliveryService, bootstrap: str, topic: str, group: str, grace: float,
                        stop: asyncio.Event, err: TextIO, options: Mapping[str, str] | None = None) -> None:
    """Read ``topic`` into the service until ``stop`` is set; then finish the calls in flight and commit what they finished.

    ``options``: ``--kafka-option`` (:func:`sinks.kafka_client.client_options` checked them).
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(consumer_config(bootstrap, group, lambda text: print(f"kafka: {text}", file=err, flush=True), options))
    try:
        topics = await asyncio.to_thread(list_topics, consumer, bootstrap, METADATA_TIMEOUT_S)
        if topic not in topics:
            raise UsageError(f"--topic {topic}: no such topic on {bootstrap}")
        partitions = sorted(topics[topic].partitions)
        committed = await asyncio.to_thread(consumer.committed, [TopicPartition(topic, p) for p in partitions], timeout=10)
        # No committed offset yet: start at the beginning, every alert in the topic is owed a delivery.
        start = {tp.partition: tp.offset if tp.offset >= 0 else 0 for tp in committed}
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in start.items()])
        tracker = OffsetTracker(start)
        last_commit = {tp.partition: tp.offset for tp in committed}  # the first commit records every partition's start too
        while not stop.is_set():
            messages = await asyncio.to_thread(_read, consumer)
            batch: list[tuple[ReceivedRecord, Callable[[], None]]] = []
            for message in messages:
                problem = message.error()
                if problem is not None:
                    raise Failure(f"--topic {topic}: {problem.str()}")
                partition, offset, value = int(message.partition() or 0), int(message.offset() or 0), message.value()
                done = tracker.read(partition, offset)
                parsed = parse_notification(value.decode("utf-8", "replace")) if value else "empty record"
                if isinstance(parsed, str):
                    service.stats.invalid += 1
                    print(f"{topic}[{partition}]@{offset}: {parsed}", file=err)
                    done()
                else:
                    batch.append((parsed, done))
            if not await unless_stopped(service.submit(batch), stop):
                break  # what was not handed out stays uncommitted: a restart reads it again
            last_commit = await _commit(consumer, topic, tracker, last_commit)
        # Stopping: finish the calls in flight and store their rows, then commit what that finished.
        await service.stop(grace)
        await _commit(consumer, topic, tracker, last_commit)
    finally:
        await asyncio.to_thread(consumer.close)


def _read(consumer: Any) -> list[Any]:
    """Up to :data:`KAFKA_BATCH` records, as soon as there is one (``consume(n, t)`` alone waits ``t`` unless ``n`` come)."""
    first = consumer.poll(KAFKA_POLL_S)
    return [] if first is None else [first, *consumer.consume(KAFKA_BATCH - 1, 0)]


async def _commit(consumer: Any, topic: str, tracker: OffsetTracker, last: dict[int, int]) -> dict[int, int]:
    from confluent_kafka import TopicPartition

    now = tracker.committable()
    moved = [TopicPartition(topic, partition, offset) for partition, offset in now.items() if offset != last.get(partition)]
    if moved:
        await asyncio.to_thread(consumer.commit, offsets=moved, asynchronous=False)
    return now
