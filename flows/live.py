"""``logystera detect``: the detection flow on Kafka, continuously, with crash recovery.

The flow is replay's (:func:`flows.detect.build_detect_flow`); only the ends
differ:

- **in**: the ``signals`` topic, one Bytewax input partition per Kafka
  partition, read by assignment. Producers key records by site, so a
  site's records are one partition, in order — what the detector needs. A
  record's "line number" is :func:`kafka_line` of its partition and offset;
  rejected records are reported as ``TOPIC partition P offset O: reason``.
- **out**: every notification record, compact JSON exactly as replay prints
  it, to the ``alerts`` topic keyed by site (:class:`sinks.kafka.KafkaTopicSink`:
  each batch acknowledged before the flow moves on); with a store, everything
  to ClickHouse through :class:`sinks.clickhouse.EpochStoreSink`.

With a recovery directory, Bytewax snapshots at the end of every epoch the
Kafka offsets and the detector of every site the epoch touched
(:mod:`operators.snapshot`), and a restart — after SIGTERM or ``kill -9`` alike
— resumes from the last completed epoch: the records after it are read and
detected again, which gives the same notifications (same ``alert_id``, ``seq``
and bytes) as the first time. So delivery is at least once, and repeated
notifications are identical. Without a recovery directory, the flow keeps
no state and starts at the beginning of the topic every time
(``docs/live.md``).

SIGINT and SIGTERM stop the flow cleanly: the workers stop between steps,
deliveries in flight are awaited and buffered store rows are written.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TextIO

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import override

from flows.cluster import ClusterShape, LocalCluster, run_on, state_placement
from flows.detect import DetectOptions, DetectSinks, FlowStats, Reject, build_detect_flow
from flows.sources import LINE_STRIDE, Line
from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.metrics import compile_metric
from operators.notification import DEFAULT_LINK_BASE, Decision, Emitted
from operators.routing import RoutingTable
from operators.snapshot import SnapshotCodec
from schemas.errors import Failure, LogysteraError, UsageError, root_cause
from schemas.rules import MetricDefinition, Rule
from sinks.callback import CallbackSink, OwnerSink
from sinks.clickhouse import EpochStoreSink, Store, StoreSink
from sinks.kafka import DEFAULT_TIMEOUT_S, KafkaTopicSink, topic_partitions
from sinks.kafka_client import CONSUMER_DEFAULTS, metadata_client_settings, reported_once

DEFAULT_EPOCH_S = 10.0
"""Bytewax epoch length: how often offsets and touched detectors are snapshotted (see docs/live.md)."""

POLL_RECORDS = 10_000
"""The most records one poll of a partition reads (one chunk): what is already fetched, up to this many.

A chunk is split by site, and each site's worker validates and detects its
part in one call, whose fixed cost (the call, a batch of results, the
gather) is paid per site and chunk. With a backlog (a restart, a burst), a
chunk of 1,000 records over 1,000 sites is about one record per site; 10,000
made detect use 25–35% less CPU on the scale bench (200k signals, 1,000
sites, 1 and 2 processes). Caught up, a poll finds only what arrived since
the last one, so latency is unchanged."""

METADATA_WAIT_S = 5.0
"""How long a partition's consumer waits for the topic's metadata before it is assigned (see ``_KafkaLinesPartition``)."""

IDLE_POLL = timedelta(milliseconds=10)
"""How soon an input partition that had nothing is polled again (Bytewax's default, 1 ms, keeps a core busy)."""

DECISIONS: tuple[Decision, ...] = ("fired", "renotified", "resolved", "suppressed")
"""The reasons in the order the run summary shows them."""


class LiveConfigError(UsageError):
    """The live flow cannot start as configured (a missing topic, an unusable recovery directory)."""


class KafkaReadError(Failure):
    """The consumer reported an error reading the signals topic (the flow stops; a restart resumes)."""


def kafka_line(partition: int, offset: int) -> int:
    """The line number the flow gives the record at ``offset`` of ``partition``."""
    if not 0 <= offset < LINE_STRIDE:
        raise ValueError(f"offset {offset} of partition {partition} does not fit a line number")
    return partition * LINE_STRIDE + offset


def kafka_position(line: int) -> tuple[int, int]:
    """The (partition, offset) a line number stands for (inverse of :func:`kafka_line`)."""
    return divmod(line, LINE_STRIDE)


class _KafkaLinesPartition(StatefulSourcePartition[list[Line], int | None]):
    """One Kafka partition as chunks of numbered lines, read by a consumer assigned to it (no consumer group).

    The offset to resume from is this partition's snapshot, as in Bytewax's
    ``KafkaSource`` (same state: a recovery directory of either resumes with
    the other). It is read here rather than through Bytewax's partition, which
    makes a message object of eight fields for every record: this makes only
    the ``(line, bytes)`` the flow reads (measured: about 5% of detect's CPU).
    """

    def __init__(self, config: dict[str, Any], topic: str, partition: int, offset: int) -> None:
        self._consumer = Consumer(config)
        # The partition's leader first: assigned before it is known, a start at a logical offset (the beginning) waits
        # for librdkafka's offset-query retry, a fixed 500 ms, before the first fetch (measured: 0.50 s to the first
        # record of a topic; 0.03 s this way; the metadata takes 1-3 ms, CONNECT_AT_ONCE). A broker that does not
        # answer here is reported by the first poll.
        with suppress(KafkaException):
            self._consumer.list_topics(topic, timeout=METADATA_WAIT_S)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._eof = False
        self._idle = False

    @override
    def next_batch(self) -> list[list[Line]]:
        if self._eof:  # reached on the previous call, whose records were still returned
            raise StopIteration
        messages = self._consumer.consume(POLL_RECORDS, 0.001)
        base = kafka_line(self._partition, 0)
        lines: list[Line] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:  # only with enable.partition.eof: not tailing
                    self._eof = True
                    break
                raise KafkaReadError(f"error consuming from Kafka topic {self._topic!r}: {error}")
            value = message.value()
            # An empty record (a tombstone) would pass for a blank line and be skipped: make it a rejected one.
            lines.append((base + message.offset(), value if value and not value.isspace() else b"null"))  # type: ignore[operator]  # a consumed record has an offset
        self._idle = not lines
        if not lines:
            return []
        self._offset = kafka_position(lines[-1][0])[1] + 1
        kafka_line(self._partition, self._offset)  # an offset too large for a line number stops the flow, never wraps
        return [lines]

    @override
    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + IDLE_POLL if self._idle else None

    @override
    def snapshot(self) -> int | None:
        return self._offset

    @override
    def close(self) -> None:
        self._consumer.close()


class KafkaLinesSource(FixedPartitionedSource[list[Line], int | None]):
    """The partitions of ``topic``, each poll as one chunk of ``(line, bytes)``.

    ``tail=False`` ends each partition where it ended when reached (``--exit-at-end``); ``options`` (``--kafka-option``)
    change :data:`sinks.kafka_client.CONSUMER_DEFAULTS` and add to them. The partitions are listed by Bytewax's
    ``KafkaSource`` (their names, ``"3-signals"``, are the recovery store's).
    """

    def __init__(self, bootstrap: str, topic: str, tail: bool = True, options: Mapping[str, str] | None = None) -> None:
        # A saved offset the topic no longer has (retention removed it, or the topic was made anew) resumes at the
        # earliest record still there, not at the end (librdkafka's default), which would skip every record kept.
        self.consumer_settings: dict[str, Any] = {**CONSUMER_DEFAULTS, "auto.offset.reset": "earliest", **(options or {}),
                                                  **reported_once()}
        """What each partition's consumer is given on top of the settings it needs to read by assignment."""
        # Its client lists the partitions, with the command's options (a secured broker's settings).
        self._kafka = KafkaSource([bootstrap], [topic], tail=tail, add_config=metadata_client_settings(options))
        self._config: dict[str, Any] = {
            "group.id": "logystera-detect",  # never joined (the partition is assigned) nor committed to
            "enable.auto.commit": False,
            "bootstrap.servers": bootstrap,
            "enable.partition.eof": not tail,
            **self.consumer_settings,
        }

    @override
    def list_parts(self) -> list[str]:
        return self._kafka.list_parts()

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaLinesPartition:
        index, topic = for_part.split("-", 1)
        return _KafkaLinesPartition(dict(self._config), topic, int(index), OFFSET_BEGINNING if resume_state is None else resume_state)


def alert_message(alert: Emitted) -> tuple[bytes, bytes]:
    """Key: :attr:`Emitted.kafka_key` (the site); value: the record as replay prints it."""
    return alert.kafka_key.encode("utf-8"), alert.line.encode("utf-8")


CLUSTER_FILE = "logystera-cluster.json"
"""In a recovery directory: the cluster it was made for and how its state is keyed (:func:`prepare_recovery`)."""

STATE_BY_PARTITION: Literal["by-partition"] = "by-partition"
"""The marker's ``state``: each site's detector keyed to the worker reading its partition (:mod:`flows.placement`)."""

MARKER_LIMIT = 1_000_000
"""The largest count a marker may hold (processes, workers, partitions): past it, the file is not one we wrote."""

RECOVERY_WAIT_S = 30.0
"""How long a process other than 0 waits for process 0 to initialise a shared recovery directory."""


class ClusterMarker(BaseModel):
    """:data:`CLUSTER_FILE`: the shape a recovery directory was made for. An earlier release wrote only ``processes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    processes: int = Field(ge=1, le=MARKER_LIMIT)
    workers: int | None = Field(default=None, ge=1, le=MARKER_LIMIT)  # per process
    partitions: int | None = Field(default=None, ge=1, le=MARKER_LIMIT)
    state: Literal["by-partition"] | None = None

    @model_validator(mode="after")
    def _placed_state_names_its_shape(self) -> ClusterMarker:
        if self.state is not None and (self.workers is None or self.partitions is None):
            raise ValueError("a state placed by partition names its workers and partitions")
        return self


@dataclass(frozen=True)
class RecoveryLayout:
    """What :func:`prepare_recovery` found: whether it made the directory, and whether its state is placed by partition."""

    initialised: bool
    by_partition: bool


def prepare_recovery(directory: Path, shape: ClusterShape, topic: str, partitions: int,
                     wait_s: float = RECOVERY_WAIT_S) -> RecoveryLayout:
    """Create and initialise the recovery partitions on first start (``python -m bytewax.recovery DIR N``).

    Process 0 does it, with one partition per worker of the cluster, and
    records the cluster's shape and the partition count of ``topic`` in
    :data:`CLUSTER_FILE`; the other processes wait for it (the directory is
    shared). A directory made for another number of processes, workers or
    partitions is refused (:class:`LiveConfigError`): its partitions are
    spread for that cluster, and each site's state is keyed for the worker
    that read its partition then (:mod:`flows.placement`), so resuming it
    otherwise would be silently wrong. A directory made before the state was
    placed by partition (its marker has no ``state``, or there is none: one
    process) keeps its sites' state keyed by site, and ``--workers`` may
    still change on it: Bytewax moves each site's state to the worker that
    owns it then.
    """
    marker = directory / CLUSTER_FILE
    made = ClusterMarker(processes=shape.processes, workers=shape.workers, partitions=partitions, state=STATE_BY_PARTITION)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not shape.owner:
            deadline = time.monotonic() + wait_s
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not marker.exists():
                raise LiveConfigError(f"--recovery-dir {directory}: process 0 did not initialise it within {wait_s:.0f}s "
                                      "(every process of a cluster uses the same, shared, directory)")
        elif not any(directory.glob("*.sqlite3")):
            init_db_dir(directory, shape.total_workers)
            written = marker.with_suffix(".tmp")  # whole or absent: the other processes read it as soon as it exists
            written.write_text(made.model_dump_json(exclude_none=True) + "\n", encoding="utf-8")
            os.replace(written, marker)
            return RecoveryLayout(initialised=True, by_partition=True)
        text = marker.read_text(encoding="utf-8") if marker.exists() else None
    except OSError as error:
        raise LiveConfigError(f"--recovery-dir {directory}: {error.strerror or error}") from None
    try:
        found = ClusterMarker(processes=1) if text is None else ClusterMarker.model_validate_json(text)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "the file"
        raise LiveConfigError(f"--recovery-dir {directory}: {CLUSTER_FILE} is not a marker Logystera wrote ({where}: "
                              f"{problem['msg']}): give a new directory") from None
    refused = f"--recovery-dir {directory} holds the state of"
    if found.processes != shape.processes:
        raise LiveConfigError(
            f"{refused} a cluster of {found.processes} process{'es' if found.processes != 1 else ''}, "
            f"not {shape.processes}: start it with --processes {found.processes}, or give a new directory (docs/scaling.md)")
    if found.state is None:
        return RecoveryLayout(initialised=False, by_partition=False)
    if found.workers != shape.workers:
        raise LiveConfigError(
            f"{refused} {found.workers} worker{'s' if found.workers != 1 else ''} per process, not {shape.workers}: "
            f"start it with --workers {found.workers}, or give a new directory (docs/scaling.md)")
    if found.partitions != partitions:
        raise LiveConfigError(
            f"{refused} a topic of {found.partitions} partitions; {topic!r} has {partitions}: each site's state "
            "is kept where its partition is read, so give a new directory (docs/scaling.md)")
    return RecoveryLayout(initialised=False, by_partition=True)


@dataclass(frozen=True)
class DetectSettings:
    """Everything ``logystera detect`` is told, parsed."""

    bootstrap: str
    topic: str = "signals"
    alerts_topic: str = "alerts"
    recovery_dir: Path | None = None
    cluster: ClusterShape = field(default_factory=ClusterShape)
    lateness: int = DEFAULT_ALLOWED_LATENESS_MS
    link_base: str = DEFAULT_LINK_BASE
    epoch_interval: float = DEFAULT_EPOCH_S
    delivery_timeout: float = DEFAULT_TIMEOUT_S
    exit_at_end: bool = False
    kafka_options: Mapping[str, str] = field(default_factory=dict)
    """``--kafka-option``: librdkafka settings for every client (consumers, producer, metadata check)."""


@dataclass
class LiveTotals:
    """What the flow saw since this process started (records read again after a restart count again).

    ``decisions``: the engine's decisions by (rule id, reason), as
    :class:`flows.replay.ReplayResult` counts them.
    """

    valid: int = 0
    invalid: int = 0
    late: int = 0
    stopped_by_signal: bool = False
    decisions: Counter[tuple[str, Decision]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held by the workers' updates and by :meth:`reading` (a metrics scrape, on another thread)."""

    def reading(self) -> LiveTotals:
        """A copy of the counts at one moment (no update half-applied)."""
        with self.lock:
            return LiveTotals(self.valid, self.invalid, self.late, self.stopped_by_signal, Counter(self.decisions))

    @property
    def decisions_line(self) -> str:
        """The decisions by reason, the stderr line before :attr:`line`."""
        by_reason: Counter[str] = Counter()
        for (_, reason), count in self.decisions.items():
            by_reason[reason] += count
        return "detect decisions: " + ", ".join(f"{by_reason[reason]} {reason}" for reason in DECISIONS)

    @property
    def line(self) -> str:
        """The last stderr line of a run."""
        how = "stopped" if self.stopped_by_signal else "reached the end of the topic"
        return f"detect {how}: {self.valid} signals, {self.invalid} invalid, {self.late} late"


def run_detect(settings: DetectSettings, rules: list[Rule], metrics: list[MetricDefinition], store: Store | None,
               err: TextIO = sys.stderr, cluster: LocalCluster | None = None, totals: LiveTotals | None = None) -> LiveTotals:
    """Run the live flow until SIGINT/SIGTERM (or the end of the topic with ``exit_at_end``).

    ``cluster``: the local cluster this process started (``--processes N``,
    :func:`flows.cluster.start_local_cluster`), told once the configuration
    is checked; None for one process or a cluster started by hand
    (``--addresses``). Process 0 gathers the rejected records and the totals
    of all, and in process 0 only the totals are the cluster's. ``totals``:
    where to count them (read while the flow runs: ``--metrics-port``).

    Raises :class:`LiveConfigError` when it cannot start as configured,
    :class:`sinks.kafka_client.KafkaUnreachable` when the broker does not answer,
    and the :class:`KafkaReadError`, :class:`sinks.kafka.KafkaDeliveryError`
    or :class:`sinks.clickhouse.StoreError` that stopped it.
    """
    partitions = topic_partitions(settings.bootstrap, [settings.topic, settings.alerts_topic], options=settings.kafka_options)
    for topic in (settings.topic, settings.alerts_topic):
        if topic not in partitions:
            raise LiveConfigError(f"topic {topic!r} does not exist on {settings.bootstrap} (create it with the partitions it needs)")
    # First, so that its producer gets its producer id while the rest starts (sinks.kafka.KafkaTopicSink).
    alerts = KafkaTopicSink(settings.bootstrap, settings.alerts_topic, alert_message, timeout=settings.delivery_timeout,
                            options=settings.kafka_options)
    totals = totals if totals is not None else LiveTotals()
    table = RoutingTable(rules)
    pairs = [(metric, compile_metric(metric)) for metric in metrics] if store is not None else []
    compiled_metrics = [compiled for _, compiled in pairs]
    recovery = None
    snapshots = None
    by_partition = True
    if settings.recovery_dir is not None:
        by_partition = prepare_recovery(settings.recovery_dir, settings.cluster, settings.topic, partitions[settings.topic]).by_partition
        recovery = RecoveryConfig(settings.recovery_dir, timedelta(0))
        snapshots = SnapshotCodec(table, settings.lateness, pairs, warn=lambda message: print(message, file=err, flush=True))

    def report_rejects(items: list[Reject]) -> None:
        with totals.lock:
            totals.invalid += len(items)
        for line, reason in items:
            partition, offset = kafka_position(line)
            print(f"{settings.topic} partition {partition} offset {offset}: {reason}", file=err, flush=True)

    def count(items: list[FlowStats]) -> None:
        with totals.lock:
            for stats in items:
                totals.valid += stats.valid
                totals.late += len(stats.late)
                totals.decisions.update(stats.decisions)

    shape = settings.cluster
    gathered = shape.processes > 1
    local_store = not gathered or shape.owner or (store is not None and store.address.kind != "chdb")
    rejects: OwnerSink[Reject] | CallbackSink[Reject] = OwnerSink(report_rejects, shape.owner) if gathered else CallbackSink(report_rejects)
    stats: OwnerSink[FlowStats] | CallbackSink[FlowStats] = OwnerSink(count, shape.owner) if gathered else CallbackSink(count)
    sinks = DetectSinks(
        alerts=alerts, rejects=rejects, stats=stats,
        store=EpochStoreSink(StoreSink(store), local=local_store) if store is not None else None,
    )
    placement = state_placement(settings.topic, partitions[settings.topic], shape.total_workers) if by_partition else None
    options = DetectOptions(lateness=settings.lateness, link_base=settings.link_base, store_source=f"kafka:{settings.topic}",
                            metrics=compiled_metrics, snapshots=snapshots, placement=placement)
    source = KafkaLinesSource(settings.bootstrap, settings.topic, tail=not settings.exit_at_end, options=settings.kafka_options)
    flow = build_detect_flow(source, table, sinks, options)
    if shape.owner:
        print(f"detect: {settings.topic} → {settings.alerts_topic} on {settings.bootstrap}, {shape.describe}, "
              f"recovery {settings.recovery_dir or 'off (reading from the beginning)'}", file=err, flush=True)
    try:
        here = cluster or LocalCluster(shape)
        here.checked()  # the others may now report a mistake of their own
        run_on(flow, here.shape, epoch_interval=timedelta(seconds=settings.epoch_interval), recovery=recovery)
    except KeyboardInterrupt:
        totals.stopped_by_signal = True
    except Exception as error:
        # Bytewax wraps a step's exception; the sink or store that gave up is what the user needs to read.
        cause = root_cause(error, LogysteraError)
        if cause is not None:
            raise cause from None
        raise
    return totals
