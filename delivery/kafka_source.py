"""``logystera deliver --bootstrap``: notification records from the Kafka ``alerts`` topic, offsets committed only when done.

The process reads every partition of the topic itself (no group membership:
one delivery process per topic, since rate limits are per process) from the
offsets committed for ``--group``, and commits a partition's offset only up
to its first record that is not done (:class:`OffsetTracker`), so a restart
re-reads what was not finished; the attempt log then skips what was (see
:mod:`delivery.attempt_log`). Invalid records are reported on stderr as
``TOPIC[P]@OFFSET: reason``, counted and never delivered.

Inhibitions outlive a restart: before delivering anything, with inhibit
rules configured, the records just before the committed offsets (at most
``--inhibit-history`` per partition) are read again as sources only
(:func:`restore_inhibitions`), so a source that fired before the restart
still holds its targets after it (docs/silences.md).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from delivery.service import DeliveryService, unless_stopped
from schemas.alerts import ReceivedRecord, parse_notification
from schemas.errors import Failure, UsageError
from sinks.kafka_client import consumer_config, list_topics

KAFKA_BATCH = 500
KAFKA_POLL_S = 0.5
METADATA_TIMEOUT_S = 10.0
INHIBIT_HISTORY = 10_000
"""Records per partition read again at start, before the committed offset, to restore the inhibitions (``--inhibit-history``).

Each costs ~57 µs (parsed and checked as if delivered): 0.6 s per partition with a full history, before the first
notification goes out; with 100,000, the 6 partitions of the compose file's ``alerts`` would keep deliver quiet ~34 s after a restart."""


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
                        stop: asyncio.Event, err: TextIO, options: Mapping[str, str] | None = None,
                        history: int = INHIBIT_HISTORY) -> None:
    """Read ``topic`` into the service until ``stop`` is set; then finish the calls in flight and commit what they finished.

    ``options``: ``--kafka-option`` (:func:`sinks.kafka_client.client_options` checked them). ``history``: the
    most records per partition read again first to restore the inhibitions (:func:`restore_inhibitions`).
    """
    from confluent_kafka import Consumer, TopicPartition

    config = consumer_config(bootstrap, group, lambda text: print(f"kafka: {text}", file=err, flush=True), options)
    consumer = Consumer(config)
    try:
        topics = await asyncio.to_thread(list_topics, consumer, bootstrap, METADATA_TIMEOUT_S)
        if topic not in topics:
            raise UsageError(f"--topic {topic}: no such topic on {bootstrap}")
        partitions = sorted(topics[topic].partitions)
        committed = await asyncio.to_thread(consumer.committed, [TopicPartition(topic, p) for p in partitions], timeout=10)
        if service.holds.inhibitor.rules and history > 0:  # no inhibit rule: nothing to restore, nothing read
            restored = await restore_inhibitions(service, config, topic, {tp.partition: tp.offset for tp in committed},
                                                 history, stop)
            print(restored.line(topic, service.holds.inhibitor.active, history), file=err, flush=True)
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


def history_range(earliest: int, committed: int, limit: int) -> tuple[int, int] | None:
    """The offsets ``[first, end)`` of one partition read again to restore inhibitions, or None: nothing to read.

    The ``limit`` records before the committed offset, none before the
    earliest one the broker still holds; nothing when no offset is committed
    (a negative one: the first start delivers the whole topic anyway).
    """
    first = max(earliest, committed - limit)
    return (first, committed) if 0 <= first < committed else None


@dataclass
class Restored:
    """What :func:`restore_inhibitions` read: records, the invalid ones among them, partitions cut short by the limit."""

    records: int = 0
    invalid: int = 0
    bounded: int = 0

    def line(self, topic: str, active: int, limit: int) -> str:
        """The stderr line ``deliver`` prints once restored."""
        cut = f"; on {self.bounded} partitions older records were not read (--inhibit-history {limit})" if self.bounded else ""
        return (f"logystera: deliver: {active} inhibitions active, restored from {self.records} records of {topic} "
                f"before the committed offsets ({self.invalid} invalid, skipped){cut}")


async def restore_inhibitions(service: DeliveryService, config: Mapping[str, Any], topic: str,
                              committed: Mapping[int, int], limit: int, stop: asyncio.Event) -> Restored:
    """Feed the records before the committed offsets (:func:`history_range`) to the inhibitor, as sources only.

    They were handled by an earlier run: nothing is sent or recorded for them
    (:meth:`DeliveryService.restore`). Each partition is read in offset order
    up to its committed offset, or to its end if records there are missing;
    invalid records are counted, not reported one by one. Own consumer, no
    group membership and no commit: the delivering consumer starts afterwards,
    from the committed offsets, as it always did.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    restored = Restored()
    consumer = Consumer({**config, "enable.partition.eof": True})
    try:
        ends: dict[int, int] = {}
        starts: list[Any] = []
        for partition, offset in committed.items():
            try:
                earliest, _ = await asyncio.to_thread(consumer.get_watermark_offsets, TopicPartition(topic, partition),
                                                      METADATA_TIMEOUT_S)
            except KafkaException as error:
                raise Failure(f"--topic {topic}[{partition}]: earliest offset: {error.args[0].str()}") from None
            span = history_range(earliest, offset, limit)
            if span is not None:
                ends[partition] = span[1]
                starts.append(TopicPartition(topic, partition, span[0]))
                restored.bounded += span[0] > earliest
        consumer.assign(starts)
        while ends and not stop.is_set():
            for message in await asyncio.to_thread(_read, consumer):
                partition = int(message.partition() or 0)
                end = ends.get(partition)
                if end is None:
                    continue  # read past its end before the partition was paused
                problem = message.error()
                if problem is not None and problem.code() != KafkaError._PARTITION_EOF:
                    raise Failure(f"--topic {topic}: {problem.str()}")
                offset = int(message.offset() or 0)
                if problem is None and offset < end:
                    restored.records += 1
                    value = message.value()
                    parsed = parse_notification(value.decode("utf-8", "replace")) if value else "empty record"
                    if isinstance(parsed, str):
                        restored.invalid += 1
                    else:
                        service.restore(parsed)
                if problem is not None or offset + 1 >= end:
                    del ends[partition]
                    consumer.pause([TopicPartition(topic, partition)])
    finally:
        await asyncio.to_thread(consumer.close)
    return restored


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
