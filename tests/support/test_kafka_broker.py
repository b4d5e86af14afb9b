"""The Kafka live path against a real Kafka-protocol broker (Tansu, tests/support/kafka_broker.py).

Proves what the live flow will rely on: idempotent keyed produce keeps each
site's order, consumer groups commit and resume, Bytewax's KafkaSource reads a
topic to its end and KafkaSink writes another. The last tests pin the broker
differences that docs/kafka-broker.md lists, so a Tansu upgrade that changes
them fails here instead of silently invalidating a workaround.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.testing import cluster_main, run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewPartitions, OffsetSpec

from tests.support import kafka_broker
from tests.support.kafka_broker import HOST, Broker, Record, start_broker, unique_topic

pytestmark = pytest.mark.broker

SITES = ["shop-eu", "blog-us", "shop-jp", "news-de", "wiki-fr"]
PER_SITE = 40
FLOW_TIMEOUT_S = 20.0
#: End-of-partition is reported after an empty Fetch, which the broker holds up to fetch.wait.max.ms (500 ms).
FAST_EOF = {"fetch.wait.max.ms": "50"}


def _signal(site: str, seq: int) -> bytes:
    return json.dumps({"v": 1, "id": f"{site}-{seq}", "site": site, "type": "tick", "seq": seq}, separators=(",", ":")).encode()


def _produce_sites(producer: Producer, topic: str, sites: list[str], seqs: range) -> list[tuple[bytes, int, int]]:
    """Produce ``seqs`` for every site, interleaved, keyed by site; return (key, partition, offset) per delivery."""
    delivered: list[tuple[bytes, int, int]] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.key(), msg.partition(), msg.offset()))

    for seq in seqs:
        for site in sites:
            producer.produce(topic, key=site.encode(), value=_signal(site, seq), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(10) == 0, "undelivered records after 10 s"
    assert errors == []
    return delivered


def _seqs_by_site(records: list[Record]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for record in records:
        body = json.loads(record.value or b"null")
        assert record.key == body["site"].encode()
        out[body["site"]].append(body["seq"])
    return dict(out)


def _run_flow(flow: Dataflow, workers: int) -> None:
    """Run a finite flow in a thread so a hang fails the test instead of blocking it."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            if workers == 1:
                run_main(flow)
            else:
                cluster_main(flow, [], 0, worker_count_per_proc=workers)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="bytewax-flow", daemon=True)
    thread.start()
    thread.join(FLOW_TIMEOUT_S)
    assert not thread.is_alive(), f"dataflow did not finish within {FLOW_TIMEOUT_S}s"
    if failure:
        raise failure[0]


# -- the broker itself ------------------------------------------------------------


def test_broker_answers_on_loopback_and_stop_leaves_nothing_behind() -> None:
    broker = start_broker()
    try:
        host, port = broker.bootstrap.rsplit(":", 1)
        assert host == HOST == "127.0.0.1"
        assert int(port) == broker.port
        metadata = broker.admin().list_topics(timeout=5)
        assert [(b.host, b.port) for b in metadata.brokers.values()] == [(HOST, broker.port)]
        pid = broker.process.pid
        assert broker.running
    finally:
        broker.stop()
    assert not broker.running
    assert broker.stop() == broker.process.returncode  # second stop is a no-op
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError), socket.create_connection((HOST, broker.port), timeout=1):
        pass


def test_two_brokers_run_side_by_side_on_their_own_ports() -> None:
    with start_broker() as first, start_broker() as second:
        assert first.port != second.port
        topic = unique_topic("only-on-first")
        first.create_topics([topic], partitions=2)
        assert first.partition_count(topic) == 2
        assert second.partition_count(topic) == 0
    assert not first.running and not second.running


def test_a_taken_port_makes_tansu_exit_and_start_broker_retries_on_another(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        real_free_port = kafka_broker.free_port
        handed_out: list[int] = []

        def taken_first() -> int:
            handed_out.append(taken_port if not handed_out else real_free_port())
            return handed_out[-1]

        monkeypatch.setattr(kafka_broker, "free_port", taken_first)
        with start_broker() as broker:
            assert handed_out[0] == taken_port
            assert handed_out[1:] == [broker.port]
            assert [b.port for b in broker.admin().list_topics(timeout=5).brokers.values()] == [broker.port]


@pytest.mark.process
def test_a_killed_test_process_takes_its_broker_with_it() -> None:
    """No orphan even when pytest dies without finalizers (SIGKILL): Tansu runs under setpriv --pdeathsig."""
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from tests.support.kafka_broker import start_broker;"
        "b = start_broker(); print(b.process.pid, b.log_path.parent, flush=True); time.sleep(60)"
    )
    repo_root = str(Path(kafka_broker.__file__).resolve().parents[1])
    owner = subprocess.Popen([sys.executable, "-c", script, repo_root], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()  # the child prints once the broker answers (start timeout 15 s)
        pid_text, _, workdir = line.strip().partition(" ")
        assert pid_text.isdigit() and workdir, f"owner printed {line!r}"
        tansu_pid = int(pid_text)
        assert _alive(tansu_pid)
    finally:
        owner.kill()
        owner.wait(10)
    deadline = time.monotonic() + 5
    while _alive(tansu_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(workdir, ignore_errors=True)  # the killed owner could not remove its broker's log dir
    assert not _alive(tansu_pid), f"tansu {tansu_pid} outlived the process that started it"


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped by init."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
    return state not in {"Z", "X"}


# -- produce and consume ------------------------------------------------------------


def test_idempotent_producer_keyed_by_site_keeps_each_sites_order(broker: Broker) -> None:
    topic = unique_topic("signals")
    broker.create_topics([topic], partitions=3)
    delivered = _produce_sites(broker.producer(linger_ms=5), topic, SITES, range(PER_SITE))
    assert len(delivered) == len(SITES) * PER_SITE

    records = broker.read_all(topic)
    # Every record once, at the offset its delivery report gave.
    assert sorted((r.key, r.partition, r.offset) for r in records) == sorted(delivered)
    # One site, one partition: the key is the unit of order.
    partitions_of: dict[bytes | None, set[int]] = defaultdict(set)
    for record in records:
        partitions_of[record.key].add(record.partition)
    assert all(len(parts) == 1 for parts in partitions_of.values()), partitions_of
    # Offsets are dense per partition, and each site's records come back in the order produced.
    for partition in {r.partition for r in records}:
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))
    assert _seqs_by_site(records) == {site: list(range(PER_SITE)) for site in SITES}
    # End offsets (read to end-of-partition) agree with what was written.
    counts: dict[int, int] = defaultdict(int)
    for record in records:
        counts[record.partition] += 1
    assert broker.end_offsets(topic) == {p: counts.get(p, 0) for p in range(3)}


def test_consumer_group_commits_and_a_new_member_resumes_after_them(broker: Broker) -> None:
    topic = unique_topic("signals")
    group = unique_topic("group")
    broker.create_topics([topic], partitions=3)
    producer = broker.producer(linger_ms=5)
    _produce_sites(producer, topic, SITES, range(4))
    first_batch = len(SITES) * 4

    def consume_until_eof(consumer: Consumer, budget_s: float) -> tuple[list[Any], float]:
        started = time.monotonic()
        joined_after = -1.0
        messages: list[Any] = []
        at_eof: set[int] = set()
        consumer.subscribe([topic])
        while time.monotonic() - started < budget_s:
            assigned = {tp.partition for tp in consumer.assignment()}
            if assigned and joined_after < 0:
                joined_after = time.monotonic() - started
            if assigned and at_eof >= assigned:
                break
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                at_eof.add(msg.partition())
            elif err is not None:
                raise KafkaException(err)
            else:
                messages.append(msg)
        assert assigned == {0, 1, 2} and at_eof >= assigned, f"no assignment/EOF in {budget_s}s: {assigned=} {at_eof=}"
        return messages, joined_after

    first = broker.consumer(group, enable_partition_eof=True, fetch_wait_max_ms=50)
    try:
        got, joined_after = consume_until_eof(first, 10)
        # The short-join settings work: librdkafka's default session timeout would hold the join ~22 s.
        assert joined_after < 5, f"JoinGroup took {joined_after:.1f}s"
        assert len(got) == first_batch
        committed = first.commit(asynchronous=False)
        assert committed is not None
        # Partitions it read nothing from have no position to commit (offset -1001, INVALID).
        assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == {
            p: end for p, end in broker.end_offsets(topic).items() if end > 0
        }
    finally:
        first.close()

    _produce_sites(producer, topic, SITES, range(4, 6))
    second = broker.consumer(group, enable_partition_eof=True, fetch_wait_max_ms=50)
    try:
        got, _ = consume_until_eof(second, 10)
        seqs = sorted((m.key().decode(), json.loads(m.value())["seq"]) for m in got)
        assert seqs == sorted((site, seq) for site in SITES for seq in (4, 5))
        stored = second.committed([TopicPartition(topic, p) for p in range(3)], timeout=5)
        assert all(tp.error is None for tp in stored)
    finally:
        second.close()


# -- Bytewax connectors ------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_bytewax_kafka_source_reads_to_the_end_and_kafka_sink_writes_another_topic(broker: Broker, workers: int) -> None:
    source_topic, sink_topic = unique_topic("signals"), unique_topic("alerts")
    broker.create_topics([source_topic], partitions=3)
    broker.create_topics([sink_topic], partitions=2)
    _produce_sites(broker.producer(linger_ms=5), source_topic, SITES, range(PER_SITE))
    source_records = {(r.partition, r.offset): r for r in broker.read_all(source_topic)}

    def annotate(msg: KafkaSourceMessage[bytes | None, bytes | None]) -> KafkaSinkMessage[bytes | None, bytes]:
        body = json.loads(msg.value or b"null")
        out = {"site": body["site"], "seq": body["seq"], "from": [msg.partition, msg.offset]}
        return KafkaSinkMessage(key=msg.key, value=json.dumps(out).encode())

    flow = Dataflow("kafka-roundtrip")
    # tail=False: each partition stops at end-of-partition, so the flow is finite.
    source = KafkaSource([broker.bootstrap], [source_topic], tail=False, starting_offset=OFFSET_BEGINNING, add_config=FAST_EOF)
    messages = op.input("in", flow, source)
    op.output("out", op.map("annotate", messages, annotate), KafkaSink([broker.bootstrap], sink_topic))
    _run_flow(flow, workers)

    out = broker.read_all(sink_topic)
    assert len(out) == len(source_records)
    bodies = [json.loads(r.value or b"null") for r in out]
    # Every source record exactly once, carried with the key it had and the partition/offset Bytewax saw.
    assert sorted(tuple(b["from"]) for b in bodies) == sorted(source_records)
    for record, body in zip(out, bodies, strict=True):
        origin = source_records[tuple(body["from"])]
        assert record.key == origin.key == body["site"].encode()
        assert json.loads(origin.value or b"null")["seq"] == body["seq"]
    # A site's records stay in order through the flow and the sink.
    assert _seqs_by_site(out) == {site: list(range(PER_SITE)) for site in SITES}


def test_bytewax_kafka_source_on_an_empty_topic_finishes(broker: Broker) -> None:
    topic = unique_topic("empty")
    broker.create_topics([topic], partitions=2)
    seen: list[Any] = []
    flow = Dataflow("kafka-empty")
    messages = op.input("in", flow, KafkaSource([broker.bootstrap], [topic], tail=False, add_config=FAST_EOF))
    op.inspect("seen", messages, lambda _step, item: seen.append(item))
    _run_flow(flow, 1)
    assert seen == []
    assert broker.end_offsets(topic) == {0: 0, 1: 0}


# -- differences from Apache Kafka (docs/kafka-broker.md) -----------------------------


def test_list_offsets_latest_is_per_batch_so_helpers_read_to_the_end(broker: Broker) -> None:
    topic = unique_topic("batch")
    broker.create_topics([topic], partitions=1)
    producer = broker.producer(linger_ms=200)
    for i in range(15):
        producer.produce(topic, key=b"k", value=str(i).encode())
    assert producer.flush(10) == 0  # one batch of 15 records
    tp = TopicPartition(topic, 0)
    admin = broker.admin()  # keep the client alive until its futures resolve
    listed = admin.list_offsets({tp: OffsetSpec.latest()}, request_timeout=5)[tp].result(5).offset
    consumer = Consumer(broker.config(group_id="watermarks"))
    try:
        low, high = consumer.get_watermark_offsets(tp, timeout=5)
    finally:
        consumer.close()
    # Apache Kafka answers 15 to both; Tansu answers the last batch's base offset + 1.
    assert (listed, low, high) == (1, 0, 1)
    assert broker.end_offsets(topic) == {0: 15}
    assert [r.offset for r in broker.read_all(topic)] == list(range(15))


def test_create_partitions_is_unsupported_and_auto_created_topics_get_four_partitions(broker: Broker) -> None:
    topic = unique_topic("grow")
    broker.create_topics([topic], partitions=1)
    admin = broker.admin()  # keep the client alive until its futures resolve
    future = admin.create_partitions([NewPartitions(topic, 3)], request_timeout=5)[topic]
    with pytest.raises(KafkaException) as raised:
        future.result(5)
    assert raised.value.args[0].code() == KafkaError._UNSUPPORTED_FEATURE
    assert broker.partition_count(topic) == 1
    # A metadata request naming an unknown topic creates it, with 4 partitions (Kafka's num.partitions default is 1).
    auto = unique_topic("auto")
    metadata = admin.list_topics(auto, timeout=5)
    assert metadata.topics[auto].error is None
    assert broker.partition_count(auto) == 4


def test_aborted_transactions_stay_visible_to_read_committed(broker: Broker) -> None:
    topic = unique_topic("txn")
    broker.create_topics([topic], partitions=1)
    producer = broker.producer(transactional_id=unique_topic("tx"), transaction_timeout_ms=10000)
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(10)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    assert producer.flush(10) == 0  # on the broker before the abort (abort purges what is still queued)
    producer.abort_transaction(10)

    consumer = Consumer(broker.config(group_id="read-committed", isolation_level="read_committed", enable_partition_eof=True))
    values: list[bytes | None] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                break
            values.append(msg.value())
    finally:
        consumer.close()
    # Apache Kafka would hide the aborted record (and its transaction markers).
    assert values == [b"committed", b"aborted"]
