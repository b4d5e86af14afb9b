"""``logystera deliver``: notification records from a JSON Lines file or the Kafka ``alerts`` topic, out to the channels.

Two sources, one service (:class:`delivery.service.DeliveryService`):

- **a file** (``logystera deliver alerts.jsonl``, ``-`` = stdin): the output
  of ``replay`` or ``demo``; the run ends once every record is done on every
  channel (delivered, gave up, collapsed, ...), or at SIGINT/SIGTERM.
- **Kafka** (``--bootstrap HOST:PORT [--topic alerts]``): runs until
  SIGINT/SIGTERM. The process reads every partition of the topic itself (no
  group membership: one delivery process per topic, since rate limits are
  per process) from the offsets committed for ``--group``, and commits a
  partition's offset only up to its first record that is not done, so a
  restart re-reads what was not finished; the attempt log then skips what
  was (see :mod:`delivery.attempt_log`).

Invalid records are reported on stderr (``line N: reason`` or
``TOPIC[P]@OFFSET: reason``), counted in the summary and never delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from delivery.attempt_log import AttemptLog
from delivery.schedule import DeliveryPolicy
from delivery.service import DeliveryService
from schemas.alerts import ReceivedRecord
from schemas.durations import parse_duration
from sinks.channel import ChannelSender
from sinks.clickhouse import Store

if TYPE_CHECKING:
    from schemas.rules import Channel

EXIT_USAGE = 2
CHUNK_LINES = 500
READ_BYTES = 1 << 16
KAFKA_BATCH = 500
KAFKA_POLL_S = 0.5
MAX_WHERE = 80


class DeliverError(Exception):
    """The run cannot start or go on; one line, and the exit code (2: how it was called, 1: the environment)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_notification(text: str) -> ReceivedRecord | str:
    """The validated record with the bytes it came as (parsed once), or why it is not a valid notification record."""
    try:
        return ReceivedRecord.parse(text.encode("utf-8"))
    except ValidationError as error:
        problems = error.errors(include_url=False)
        first = problems[0]
        if first["type"] == "json_invalid":
            reason = f"not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        elif not first["loc"]:
            reason = "not a JSON object"
        else:
            message = "field required" if first["type"] == "missing" else first["msg"][0].lower() + first["msg"][1:]
            where = ".".join(map(str, first["loc"]))  # may name a key of the input: kept short, the reason is one line
            reason = f"{where if len(where) <= MAX_WHERE else where[:MAX_WHERE - 1] + '…'}: {message}"
        return reason + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")


@dataclass
class DeliverOptions:
    """What ``logystera deliver`` was asked to do, with its channels opened and its store connected."""

    senders: list[ChannelSender]
    store: Store
    source: str | None = None  # a file, "-" for stdin; None with Kafka
    bootstrap: str | None = None
    topic: str = "alerts"
    group: str = "logystera-deliver"
    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    grace: float = 10.0
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint


def open_deliver(args: argparse.Namespace, channels: list[Channel], environ: Mapping[str, str]) -> DeliverOptions:
    """The options of ``logystera deliver``: durations read, every channel opened (its secrets read now), the store open.

    Fails before anything is sent: a missing secret or a bad duration with
    :class:`DeliverError` (exit 2), a chDB directory another process holds at
    once with :class:`sinks.clickhouse.StoreUnavailable` (exit 1).
    """
    from delivery.channels import open_sender
    from sinks.channel import ChannelConfigError
    from sinks.clickhouse import RetryPolicy, StoreConfigError

    try:
        durations = {name: parse_duration(getattr(args, name)) / 1000 for name in ("backoff", "backoff_cap", "timeout")}
        policy = DeliveryPolicy(args.max_attempts, durations["backoff"], durations["backoff_cap"], args.concurrency)
    except ValueError as error:
        raise DeliverError(str(error), EXIT_USAGE) from None
    if durations["timeout"] <= 0:
        raise DeliverError("--timeout must be more than 0", EXIT_USAGE)
    try:
        senders = [open_sender(channel, environ, timeout=durations["timeout"]) for channel in channels]
    except ChannelConfigError as error:
        raise DeliverError(str(error), EXIT_USAGE) from None
    try:
        # chDB: the directory must be ours alone, and a taken one is reported at once instead of retried for a minute.
        store = Store.open(args.store, retry=RetryPolicy(give_up_after=0)) if args.store.startswith("chdb://") \
            else Store.open(args.store)
    except StoreConfigError as error:
        raise DeliverError(f"--store: {error}", EXIT_USAGE) from None
    store.retry = RetryPolicy(give_up_after=store.address.give_up_after)
    return DeliverOptions(
        senders, store, source=args.alerts, bootstrap=args.bootstrap, topic=args.topic, group=args.group,
        policy=policy, grace=durations["timeout"],
        metrics=None if args.metrics_port is None else (args.metrics_host, args.metrics_port),
    )


def run_deliver(options: DeliverOptions, err: TextIO = sys.stderr) -> int:
    """Run to the end of the file, or until SIGINT/SIGTERM; print the summary.

    0 when the run completed (the whole input delivered, or a live run
    stopped by a signal); 1 when a file run was stopped before the end of its
    input and of every record's delivery.
    """
    return asyncio.run(_run(options, err))


async def _run(options: DeliverOptions, err: TextIO) -> int:
    service = DeliveryService(options.senders, AttemptLog(options.store), options.policy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = _serve_metrics(service, loop, *options.metrics) if options.metrics else None
    service.start()
    try:
        if options.bootstrap is None:
            finished = await _unless_stopped(service.guarded(_deliver_file(service, options.source or "-", err)), stop)
        else:
            await service.guarded(_deliver_kafka(service, options, stop, err))  # watches ``stop`` itself
            finished = True
    finally:
        await service.stop(options.grace)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if server is not None:
            server.shutdown()
            server.server_close()
    for line in service.summary():
        print(line, file=err)
    return 0 if finished else 1


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await ``work`` unless ``stop`` is set first (then cancel it); whether it finished."""
    job = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([job, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not job.done():
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        return False
    job.result()
    return True


async def _deliver_file(service: DeliveryService, path: str, err: TextIO) -> None:
    reader = LineReader(sys.stdin.fileno() if path == "-" else os.open(path, os.O_RDONLY), close=path != "-")
    number = 0
    while (lines := await reader.batch(CHUNK_LINES)) is not None:
        batch: list[tuple[ReceivedRecord, None]] = []
        for text in lines:
            number += 1
            if not text.strip():
                continue
            parsed = parse_notification(text)
            if isinstance(parsed, str):
                service.stats.invalid += 1
                print(f"line {number}: {parsed}", file=err)
            else:
                batch.append((parsed, None))
        await service.submit(batch)
    await service.drain()


class LineReader:
    """The lines of a file descriptor, read by a daemon thread and handed to the event loop in order.

    A daemon thread, not ``asyncio.to_thread``: the loop's executor is joined
    when the run ends, and a read blocked on an idle stdin pipe would keep a
    stopped ``deliver`` from exiting. It reads with ``os.read``, not a Python
    file object, so it holds no lock the interpreter needs at exit. Bytes that
    are not UTF-8 become U+FFFD: such a line is reported invalid, the run goes
    on. At most ``ahead`` chunks wait in memory.
    """

    def __init__(self, descriptor: int, close: bool, ahead: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[str] | None] = asyncio.Queue()
        self._room = threading.Semaphore(ahead)
        self._ended = False
        threading.Thread(target=self._read, args=(descriptor, close), name="read alerts", daemon=True).start()

    def _read(self, descriptor: int, close: bool) -> None:
        pending = b""
        try:
            while chunk := os.read(descriptor, READ_BYTES):
                *complete, pending = (pending + chunk).split(b"\n")
                if complete:
                    self._room.acquire()
                    self._hand([line.decode("utf-8", "replace") for line in complete])
            if pending:
                self._hand([pending.decode("utf-8", "replace")])
        finally:
            if close:
                os.close(descriptor)
            self._hand(None)

    def _hand(self, lines: list[str] | None) -> None:
        with contextlib.suppress(RuntimeError):  # the run is over and its loop closed: nobody waits
            self._loop.call_soon_threadsafe(self._queue.put_nowait, lines)

    async def batch(self, count: int) -> list[str] | None:
        """The lines read so far (waiting for some), about ``count`` at most; None at the end."""
        lines: list[str] = []
        while not self._ended and len(lines) < count and (not lines or not self._queue.empty()):
            chunk = await self._queue.get()
            if chunk is None:
                self._ended = True
            else:
                self._room.release()
                lines.extend(chunk)
        return lines or None


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


async def _deliver_kafka(service: DeliveryService, options: DeliverOptions, stop: asyncio.Event, err: TextIO) -> None:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from sinks.kafka import reported_once

    assert options.bootstrap is not None
    config = {
        "bootstrap.servers": options.bootstrap, "group.id": options.group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", **reported_once(lambda text: print(f"kafka: {text}", file=err, flush=True)),
    }
    consumer = Consumer(config)
    try:
        try:
            topics = (await asyncio.to_thread(consumer.list_topics, timeout=10)).topics
        except KafkaException as error:
            raise DeliverError(f"--bootstrap {options.bootstrap}: {error.args[0].str()}") from None
        if options.topic not in topics:
            raise DeliverError(f"--topic {options.topic}: no such topic on {options.bootstrap}", EXIT_USAGE)
        partitions = sorted(topics[options.topic].partitions)
        committed = await asyncio.to_thread(
            consumer.committed, [TopicPartition(options.topic, p) for p in partitions], timeout=10)
        # No committed offset yet: start at the beginning, every alert in the topic is owed a delivery.
        start = {tp.partition: tp.offset if tp.offset >= 0 else 0 for tp in committed}
        consumer.assign([TopicPartition(options.topic, p, offset) for p, offset in start.items()])
        tracker = OffsetTracker(start)
        last_commit = {tp.partition: tp.offset for tp in committed}  # the first commit records every partition's start too
        while not stop.is_set():
            messages = await asyncio.to_thread(consumer.consume, KAFKA_BATCH, KAFKA_POLL_S)
            batch: list[tuple[ReceivedRecord, Callable[[], None]]] = []
            for message in messages:
                problem = message.error()
                if problem is not None:
                    raise DeliverError(f"--topic {options.topic}: {problem.str()}")
                partition, offset, value = int(message.partition() or 0), int(message.offset() or 0), message.value()
                done = tracker.read(partition, offset)
                parsed = parse_notification(value.decode("utf-8", "replace")) if value else "empty record"
                if isinstance(parsed, str):
                    service.stats.invalid += 1
                    print(f"{options.topic}[{partition}]@{offset}: {parsed}", file=err)
                    done()
                else:
                    batch.append((parsed, done))
            if not await _unless_stopped(service.submit(batch), stop):
                break  # what was not handed out stays uncommitted: a restart reads it again
            last_commit = await _commit(consumer, options.topic, tracker, last_commit)
        # Stopping: finish the calls in flight and store their rows, then commit what that finished.
        await service.stop(options.grace)
        await _commit(consumer, options.topic, tracker, last_commit)
    finally:
        await asyncio.to_thread(consumer.close)


async def _commit(consumer: Any, topic: str, tracker: OffsetTracker, last: dict[int, int]) -> dict[int, int]:
    from confluent_kafka import TopicPartition

    now = tracker.committable()
    moved = [TopicPartition(topic, partition, offset) for partition, offset in now.items() if offset != last.get(partition)]
    if moved:
        await asyncio.to_thread(consumer.commit, offsets=moved, asynchronous=False)
    return now


def _serve_metrics(service: DeliveryService, loop: asyncio.AbstractEventLoop, host: str, port: int) -> ThreadingHTTPServer:
    """Prometheus text on ``http://host:port/metrics``, rendered on the event loop (the counters live there)."""

    async def render() -> str:
        return service.metrics_text()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = asyncio.run_coroutine_threadsafe(render(), loop).result(timeout=5).encode("utf-8")
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        raise DeliverError(f"--metrics-port {port}: {error.strerror}", EXIT_USAGE) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
