"""``logystera detect`` on a real Kafka-protocol broker (Tansu, tests/support/kafka_broker.py).

The flow runs as the user runs it, a ``logystera detect`` process, over a
synthetic corpus (simulate/corpus.py: every signal type, ticks, late and invalid
records, bursts that make the default pack fire) written to ``signals`` keyed
by site. What it writes to ``alerts`` is compared with ``replay`` of the same
records: exactly the same notifications, byte for byte. Then the same after
``kill -9`` at two points and a restart from the recovery directory (every
notification there, repeated ones identical; absence alerts fire across both
kills), a clean stop on SIGTERM with
the store written, and a broker that stops acknowledging.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from flows.live import KafkaLinesSource, LiveTotals
from flows.replay import ReplayResult, replay
from schemas.rule_loader import load_rules
from simulate.corpus import generate_corpus
from sinks.kafka import KafkaDeliveryError, KafkaTopicSink, topic_partitions
from tests.support import polling
from tests.support.kafka_broker import Broker, Record, unique_topic
from tests.support.processes import LogysteraProcess

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "rules"
LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or shutil.which("logystera")
DEADLINE_S = 45.0
REJECT_LINE = re.compile(r"^(?P<topic>\S+) partition (?P<partition>\d+) offset (?P<offset>\d+): (?P<reason>.+)$")


def corpus(n_signals: int, seed: int) -> list[str]:
    # Two hours of event time over a few sites: most rules of the default pack fire, some twice.
    return list(generate_corpus(n_signals, 8, seed=seed, duration_s=7200))


def key_of(line: str) -> bytes:
    """What the gateway keys a record by: its site (an unreadable line goes to a fixed key)."""
    try:
        return str(json.loads(line)["site"]).encode()
    except (ValueError, KeyError, TypeError):
        return b"unreadable"


def produce(
    producer: Producer, topic: str, values: list[tuple[bytes, bytes | None]], partition: int | None = None
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` pairs in order; return each one's (partition, offset) from its delivery report."""
    positions: dict[int, tuple[int, int]] = {}
    errors: list[KafkaError] = []

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(error)
            else:
                positions[index] = (message.partition(), message.offset())
        return report

    for index, (key, value) in enumerate(values):
        producer.produce(topic, value, key, partition=-1 if partition is None else partition, on_delivery=delivered(index))
        producer.poll(0)
    assert producer.flush(15) == 0 and errors == []
    return [positions[index] for index in range(len(values))]


def produce_lines(producer: Producer, topic: str, lines: list[str]) -> list[tuple[int, int]]:
    return produce(producer, topic, [(key_of(line), line.encode()) for line in lines])


def live_case(broker: Broker, tmp_path: Path, partitions: int, signals: int, seed: int) -> tuple[str, str, list[str], ReplayResult]:
    """New ``signals`` and ``alerts`` topics of ``partitions`` partitions, a corpus, and what replay makes of it."""
    signals_topic, alerts_topic = unique_topic("signals"), unique_topic("alerts")
    broker.create_topics([signals_topic, alerts_topic], partitions=partitions)
    lines = corpus(signals, seed=seed)
    return signals_topic, alerts_topic, lines, replayed(tmp_path, lines, "all")


def replayed(tmp_path: Path, lines: list[str], name: str, rules: Path = RULES_DIR) -> ReplayResult:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return replay(str(path), load_rules(rules).enabled_rules)


# Absence rules on the corpus's cron jobs (which run every 5 to 15 minutes): the slower jobs fire for minutes at a
# time, so firing episodes, and their suppressed_count (a count of evaluation instants), run across every kill.
ABSENCE_RULES = """
rules:
  - {id: job-silent, title: Job silent, severity: low, subsystem: cron, signal: cron,
     where: {event: {in: [started, finished]}}, group_by: [job], kind: absence, absence: {after: 4m}, resolve_after: 1m}
  - {id: job-late-berlin, title: Job late, severity: medium, subsystem: cron, signal: cron,
     where: {event: {in: [started, finished]}}, group_by: [job], kind: absence,
     absence: {schedule: "*/5 * * * *", timezone: Europe/Berlin, grace: 2m}, resolve_after: 1m}
"""


def pack_with_absence(tmp_path: Path) -> Path:
    """A rules directory: the default pack and :data:`ABSENCE_RULES`."""
    directory = tmp_path / "rules"
    shutil.copytree(RULES_DIR, directory)
    (directory / "absence.yaml").write_text(ABSENCE_RULES, encoding="utf-8")
    return directory


wait_for = partial(polling.wait_for, timeout=DEADLINE_S)


class Detect(LogysteraProcess):
    """A running ``logystera detect`` process whose stderr lines are collected as they come."""

    def __init__(self, broker: Broker, *args: str, rules: Path = RULES_DIR) -> None:
        super().__init__(["detect", "--bootstrap", broker.bootstrap, "--rules", str(rules), *args])

    def rejects(self) -> dict[tuple[int, int], str]:
        """(partition, offset) → reason, for every rejected record it reported."""
        found = {}
        for line in self.lines:
            match = REJECT_LINE.match(line)
            if match:
                found[(int(match["partition"]), int(match["offset"]))] = match["reason"]
        return found

    def finish(self) -> int:
        """Wait for it to end by itself (``--exit-at-end``, a usage error); the exit status."""
        returncode = self.process.wait(DEADLINE_S)
        self._reader.join(DEADLINE_S)
        return returncode


def run_detect(broker: Broker, *args: str, rules: Path = RULES_DIR) -> tuple[int, Detect]:
    detect = Detect(broker, *args, rules=rules)
    return detect.finish(), detect


def notifications(broker: Broker, topic: str) -> list[Record]:
    records = broker.read_all(topic)
    for record in records:
        assert record.value is not None
        assert record.key == json.loads(record.value)["site"].encode()  # keyed by site: a site's notifications stay in order
    return records


def expected_rejects(result: ReplayResult, positions: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Replay's rejected lines (1-based), moved to the Kafka position each line was written to."""
    return {positions[line - 1]: reason for line, reason in result.rejects}


# -- the same notifications as replay -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.process
def test_live_detect_writes_exactly_the_notifications_of_replay_and_resumes_at_the_end(broker: Broker, tmp_path: Path) -> None:
    signals, alerts, lines, expected = live_case(broker, tmp_path, partitions=3, signals=3000, seed=26)
    assert len(expected.alerts) > 20 and expected.rejects and expected.late_lines
    producer = broker.producer()
    positions = produce_lines(producer, signals, lines)
    tombstone = produce(producer, signals, [(b"shop-0000", None)])[0]

    recovery = tmp_path / "recovery"
    returncode, detect = run_detect(broker, "--topic", signals, "--alerts-topic", alerts, "--workers", "2",
                                    "--recovery-dir", str(recovery), "--exit-at-end")
    assert returncode == 0, "\n".join(detect.lines)
    got = [record.value.decode() for record in notifications(broker, alerts) if record.value is not None]
    assert sorted(got) == sorted(expected.alerts)  # each one exactly once: nothing failed, nothing was re-emitted
    assert detect.rejects() == {**expected_rejects(expected, positions), tombstone: "not a JSON object"}
    assert all(REJECT_LINE.match(line)["topic"] == signals for line in detect.lines if REJECT_LINE.match(line))  # type: ignore[index]
    assert detect.lines[-1] == (f"detect reached the end of the topic: {expected.valid} signals, "
                                f"{len(expected.rejects) + 1} invalid, {len(expected.late_lines)} late")
    assert detect.lines[-2] == LiveTotals(decisions=expected.decisions).decisions_line  # the engine decided as in replay

    # Started again on the same recovery directory, it resumes at the end: nothing is read or written again.
    returncode, again = run_detect(broker, "--topic", signals, "--alerts-topic", alerts, "--workers", "2",
                                   "--recovery-dir", str(recovery), "--exit-at-end")
    assert returncode == 0, "\n".join(again.lines)
    assert again.lines[-1] == "detect reached the end of the topic: 0 signals, 0 invalid, 0 late"
    assert len(broker.read_all(alerts)) == len(expected.alerts)


@pytest.mark.broker
@pytest.mark.process
def test_detect_names_a_missing_topic_without_creating_it(broker: Broker) -> None:
    alerts = unique_topic("alerts")
    broker.create_topics([alerts])
    missing = unique_topic("signals")
    returncode, detect = run_detect(broker, "--topic", missing, "--alerts-topic", alerts)
    assert returncode == 2
    assert detect.lines == [f"logystera: error: topic {missing!r} does not exist on {broker.bootstrap} "
                            "(create it with the partitions it needs)"]
    assert broker.partition_count(missing) == 0


@pytest.mark.slow
@pytest.mark.process
def test_an_unreachable_broker_is_one_line_not_a_flood_of_client_logs() -> None:
    # librdkafka logs every failed connection attempt (~200 lines before the 10 s verdict); we say it once.
    assert LOGYSTERA is not None
    result = subprocess.run([LOGYSTERA, "detect", "--bootstrap", "127.0.0.1:1"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("logystera: error: Kafka at 127.0.0.1:1 did not answer within 10s"), lines


@pytest.mark.broker
def test_a_new_client_asks_the_broker_at_once_not_at_its_next_connection_slot(broker: Broker) -> None:
    # librdkafka's sparse connections held a new client's first request for ~50 ms (one in three on this broker), at
    # each of the clients a detect start makes in turn (the topic check, the partition listing, the consumers).
    durations = []
    for _ in range(20):
        started = time.perf_counter()
        assert topic_partitions(broker.bootstrap, ["no-such-topic"]) == {}
        durations.append(time.perf_counter() - started)
    assert sum(duration >= 0.045 for duration in durations) <= 2, [round(duration, 3) for duration in durations]
    assert KafkaLinesSource(broker.bootstrap, "signals").consumer_settings["enable.sparse.connections"] == "false"


@pytest.mark.broker
def test_the_partition_listing_gets_the_commands_kafka_options(broker: Broker) -> None:
    # Bytewax's listing client got none of --kafka-option, so a secured broker's settings never reached it. An option
    # librdkafka refuses shows that the listing client is made with them; without options it lists the partitions.
    topic = unique_topic("signals")
    broker.create_topics([topic], partitions=3)
    assert KafkaLinesSource(broker.bootstrap, topic).list_parts() == [f"{index}-{topic}" for index in range(3)]
    with pytest.raises(KafkaException, match=re.escape("no.such.property")):
        KafkaLinesSource(broker.bootstrap, topic, options={"no.such.property": "1"}).list_parts()


def test_a_saved_offset_the_topic_no_longer_has_resumes_at_the_earliest_record_kept() -> None:
    # librdkafka's default (the end of the partition) would skip every record still kept after retention removed the
    # saved offset. The test broker cannot remove records (no DeleteRecords), so the setting itself is checked here.
    assert KafkaLinesSource("127.0.0.1:9", "signals").consumer_settings["auto.offset.reset"] == "earliest"
    chosen = KafkaLinesSource("127.0.0.1:9", "signals", options={"auto.offset.reset": "latest"})
    assert chosen.consumer_settings["auto.offset.reset"] == "latest"  # --kafka-option may still choose


# -- kill -9 and restart ----------------------------------------------------------------------------------


def committed_offsets(recovery: Path, topic: str) -> dict[int, int]:
    """The offset each partition of ``topic`` resumes from after a crash now (read from Bytewax's recovery store).

    A source snapshot counts once its epoch is committed (Bytewax 0.21's
    ``snaps`` and ``commits`` tables); test-only knowledge of Bytewax, used
    to kill the flow at a point where a restart must resume from a snapshot.
    """
    found: dict[int, int] = {}
    for part in recovery.glob("*.sqlite3"):
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5) as connection:
                committed = connection.execute("SELECT max(commit_epoch) FROM commits").fetchone()[0]
                rows = connection.execute(
                    "SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id LIKE '%.signals' AND snap_epoch <= ? "
                    "ORDER BY snap_epoch", (committed if committed is not None else -1,),
                ).fetchall()
        except sqlite3.OperationalError:  # the partition file exists, its tables not yet: nothing committed
            continue
        for key, _, change in rows:
            partition, _, name = key.partition("-")
            if name == topic and change is not None:
                found[int(partition)] = pickle.loads(change)  # Bytewax's own store, written by this test's flow
    return found


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.process
def test_kill_9_at_two_points_and_a_restart_give_the_notifications_of_an_uninterrupted_run(broker: Broker, tmp_path: Path) -> None:
    signals, alerts = unique_topic("signals"), unique_topic("alerts")
    broker.create_topics([signals, alerts], partitions=3)
    lines = corpus(4000, seed=33)
    first, second = len(lines) * 2 // 5, len(lines) * 3 // 4
    rules = pack_with_absence(tmp_path)
    uninterrupted, part1 = replayed(tmp_path, lines, "all", rules), replayed(tmp_path, lines[:first], "part1", rules)
    expected, before_first_kill = uninterrupted.alerts, set(part1.alerts)
    assert len(expected) > 30 and 5 < len(before_first_kill) < len(expected) - 10
    suppressing = [json.loads(alert) for alert in expected if json.loads(alert)["suppressed_count"] > 0]
    assert {alert["rule"]["id"] for alert in suppressing} >= {"job-silent", "job-late-berlin"}
    producer = broker.producer()
    recovery = tmp_path / "recovery"
    args = ("--topic", signals, "--alerts-topic", alerts, "--recovery-dir", str(recovery))

    # 1. Part one, then a marker (an invalid record) at the end of every partition; kill -9 once an epoch
    #    after the markers is committed, so that the restart has to resume from snapshots.
    run = Detect(broker, *args, "--epoch-interval", "1s", rules=rules)
    produce_lines(producer, signals, lines[:first])
    markers = [produce(producer, signals, [(b"marker", b'{"marker":true}')], partition=p)[0] for p in range(3)]
    wait_for(lambda: all(marker in run.rejects() for marker in markers), "marker reported")
    wait_for(lambda: all(committed_offsets(recovery, signals).get(p, -1) > offset for p, offset in markers), "epoch committed")
    assert before_first_kill <= {record.value.decode() for record in notifications(broker, alerts) if record.value}
    assert run.stop(signal.SIGKILL) == -signal.SIGKILL

    # 2. Restart, part two, kill -9 as soon as its first notification is out (mid-stream). Its epoch is
    #    long: nothing it does is committed, so the restart must do it all again, notifications included.
    run = Detect(broker, *args, "--epoch-interval", "10m", rules=rules)
    produce_lines(producer, signals, lines[first:second])
    wait_for(lambda: any(record.value and record.value.decode() not in before_first_kill for record in broker.read_all(alerts)),
             "a notification of part two")
    assert run.stop(signal.SIGKILL) == -signal.SIGKILL
    assert not set(markers) & set(run.rejects())  # it resumed after the markers, not from the beginning

    # 3. Part three, restart and read to the end.
    produce_lines(producer, signals, lines[second:])
    returncode, last = run_detect(broker, *args, "--epoch-interval", "1s", "--exit-at-end", rules=rules)
    assert returncode == 0, "\n".join(last.lines)
    # It resumed exactly after the markers: parts two and three, each record once.
    invalid = sum(1 for line, _ in uninterrupted.rejects if line > first)
    late = sum(1 for line in uninterrupted.late_lines if line > first)
    valid = uninterrupted.valid - part1.valid
    assert last.lines[-1] == f"detect reached the end of the topic: {valid} signals, {invalid} invalid, {late} late"

    versions: dict[tuple[str, int], set[str]] = defaultdict(set)
    emitted = notifications(broker, alerts)
    assert len(emitted) > len(expected)  # what the second run emitted was emitted again by the third
    for record in emitted:
        assert record.value is not None
        body = json.loads(record.value)
        versions[(body["alert_id"], body["seq"])].add(record.value.decode())
    assert all(len(texts) == 1 for texts in versions.values()), "a notification was emitted twice with different bytes"
    assert {text for texts in versions.values() for text in texts} == set(expected)


# -- clean stop and the store ------------------------------------------------------------------------------


def sql(store: Path, query: str) -> list[dict[str, Any]]:
    assert LOGYSTERA is not None
    result = subprocess.run([LOGYSTERA, "sql", "--store", f"chdb://{store}", "--format", "json", query],
                            capture_output=True, text=True, encoding="utf-8", timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.process
def test_sigterm_stops_cleanly_with_every_notification_delivered_and_everything_stored(broker: Broker, tmp_path: Path) -> None:
    signals, alerts = unique_topic("signals"), unique_topic("alerts")
    broker.create_topics([signals, alerts], partitions=2)
    lines = corpus(3000, seed=25)
    expected = replayed(tmp_path, lines, "all")
    producer = broker.producer()
    store, recovery = tmp_path / "store", tmp_path / "recovery"
    run = Detect(broker, "--topic", signals, "--alerts-topic", alerts, "--store", f"chdb://{store}", "--recovery-dir", str(recovery),
                 "--epoch-interval", "1s")
    positions = produce_lines(producer, signals, lines)
    markers = [produce(producer, signals, [(b"marker", b'{"marker":true}')], partition=p)[0] for p in range(2)]
    # Once an epoch past the markers is committed, every record before them went all the way through the flow.
    wait_for(lambda: all(committed_offsets(recovery, signals).get(p, -1) > offset for p, offset in markers), "epoch committed")
    assert run.stop(signal.SIGTERM) == 0, "\n".join(run.lines)
    assert run.lines[-1] == (f"detect stopped: {expected.valid} signals, {len(expected.rejects) + len(markers)} invalid, "
                             f"{len(expected.late_lines)} late")
    assert sorted(record.value.decode() for record in notifications(broker, alerts) if record.value) == sorted(expected.alerts)

    ticks = sum(1 for line in lines if '"type":"tick"' in line)
    [counts] = sql(store, "SELECT (SELECT count() FROM signals_final) AS signals, (SELECT count() FROM alerts_final) AS alerts, "
                          "(SELECT count() FROM evidence_final) AS evidence, (SELECT count() FROM metrics_final) AS metrics")
    assert counts["signals"] == expected.valid - ticks and counts["alerts"] == len(expected.alerts)
    assert counts["evidence"] >= counts["alerts"] and counts["metrics"] > 0
    rejected = sql(store, "SELECT source, line, reason FROM rejected FINAL ORDER BY line")
    assert {(row["source"], row["line"]) for row in rejected} == {
        (f"kafka:{signals}", partition * 10**12 + offset) for partition, offset in [*expected_rejects(expected, positions), *markers]
    }


# -- the alerts sink ---------------------------------------------------------------------------------------


@pytest.mark.broker
def test_the_alerts_sink_waits_for_acknowledgements_and_raises_when_the_broker_stops_giving_them(broker: Broker) -> None:
    topic = unique_topic("alerts")
    broker.create_topics([topic], partitions=3)
    sink: KafkaTopicSink[tuple[bytes, bytes]] = KafkaTopicSink(broker.bootstrap, topic, lambda item: item, timeout=1.5)
    partition = sink.build("alerts", 0, 1)
    partition.write_batch([(b"shop-a", b"1"), (b"shop-b", b"2"), (b"shop-a", b"3")])
    # Acknowledged means written: everything is on the topic as soon as write_batch returns, a key's records in order.
    written = broker.read_all(topic)
    assert sorted((record.key, record.value) for record in written) == [(b"shop-a", b"1"), (b"shop-a", b"3"), (b"shop-b", b"2")]
    assert len({record.partition for record in written if record.key == b"shop-a"}) == 1
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(KafkaDeliveryError, match=rf"^topic '{topic}': 1 of 1 records not acknowledged by the broker \(.*timed out"):
            partition.write_batch([(b"shop-a", b"4")])
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    partition.close()
