"""The detection flow as a Bytewax cluster of several processes (flows/cluster.py, docs/scaling.md).

Real processes, started by ``logystera replay|detect --processes N`` itself:
the notifications, rejected lines and totals must be byte-identical to one
process's whatever the cluster's shape; a ``kill -9`` of one process stops
the cluster and a restart on the recovery directory gives the notifications
of an uninterrupted run; a recovery directory made for another process count
is refused in one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from flows.cluster import STARTED_BY_PROCESS_0, ClusterShape, cluster_shape, shard_keys
from flows.live import CLUSTER_FILE, LiveConfigError, LiveTotals, RecoveryLayout, prepare_recovery
from flows.live_metrics import DetectMetrics
from flows.placement import kafka_partition
from schemas.errors import UsageError
from simulate.corpus import write_corpus
from tests.flows.test_live_kafka import (
    LOGYSTERA,
    ROOT,
    RULES_DIR,
    Detect,
    expected_rejects,
    key_of,
    live_case,
    notifications,
    produce,
    produce_lines,
    run_detect,
    sql,
    wait_for,
)
from tests.support.kafka_broker import Broker, unique_topic
from tests.support.ports import free_port
from tests.support.prometheus import scrape


def run_replay(corpus_path: Path, *options: str) -> tuple[bytes, bytes]:
    assert LOGYSTERA is not None
    result = subprocess.run([LOGYSTERA, "replay", str(corpus_path), "--rules", str(RULES_DIR), *options],
                            capture_output=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout, result.stderr


@pytest.mark.slow
@pytest.mark.process
def test_replay_is_byte_identical_for_1_2_and_3_processes_of_1_and_2_workers(tmp_path: Path) -> None:
    path = tmp_path / "signals.jsonl"
    write_corpus(path, 50_000, 60, seed=11, duration_s=3600)
    expected_out, expected_err = run_replay(path)
    assert expected_out.count(b"\n") > 20
    assert b"late" in expected_err and b"line " in expected_err  # rejected lines, in line order, then the totals
    assert not expected_err.endswith(b" 0 late\n")
    shapes = [(processes, workers) for processes in (1, 2, 3) for workers in (1, 2)]
    for run, (processes, workers) in enumerate(shapes * 2):  # every shape, twice
        out, err = run_replay(path, "--processes", str(processes), "--workers", str(workers))
        assert (out, err) == (expected_out, expected_err), f"run {run}: {processes} processes × {workers} workers"


def _processes_running(marker: str) -> list[str]:
    """The processes whose command line holds ``marker`` (a path unique to the test)."""
    return subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout.split()


@pytest.mark.process
def test_a_mistake_in_the_arguments_of_a_local_cluster_is_one_line_and_leaves_no_process(tmp_path: Path) -> None:
    # Processes 1 and 2 start before process 0 checks anything: the mistake is theirs too, and process 0 reports it once.
    signals = tmp_path / "signals.jsonl"
    signals.write_text("", encoding="utf-8")
    bad = tmp_path / "bad-rules"
    bad.mkdir()
    (bad / "r.yaml").write_text("id: r\ntitle: R\nseverity: high\nsubsystem: mail\nsignal: tick\nkind: match\n", encoding="utf-8")
    out = tmp_path / "no-such-dir" / "alerts.jsonl"
    for options, message in [
        (("--rules", str(bad)), f"{bad / 'r.yaml'}: rule r: signal: tick is not allowed (ticks only advance the clock)"),
        (("--rules", str(RULES_DIR), "--out", str(out)), f"logystera: error: --out {out}: No such file or directory"),
        (("--rules", str(RULES_DIR), "--link-base", "ftp://x"), "logystera: error: --link-base: "),
    ]:
        assert LOGYSTERA is not None
        result = subprocess.run([LOGYSTERA, "replay", str(signals), "--processes", "3", *options], capture_output=True, text=True,
                                timeout=120, check=False)
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
        assert _processes_running(str(signals)) == []


@pytest.mark.process
def test_a_process_started_by_process_0_reports_a_mistake_only_once_process_0_has_checked(tmp_path: Path) -> None:
    signals = tmp_path / "signals.jsonl"
    signals.write_text("", encoding="utf-8")
    missing = tmp_path / "no-rules"

    def start(process_0: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "replay", str(signals), "--rules", str(missing),
             "--addresses", "127.0.0.1:1,127.0.0.1:2", "--process-id", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env={**os.environ, STARTED_BY_PROCESS_0: str(process_0)},
        )

    mistake = f"{missing}: (file): path: no such file or directory\n".encode()
    child = start(os.getpid())  # this test is its process 0
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(3)  # it holds the mistake back: process 0 finds it too, reports it and kills this one
    # The end of its input is what process 0 sends once it has found no mistake (LocalCluster.checked): this one's own.
    assert child.communicate(timeout=60) == (b"", mistake) and child.returncode == 2

    stray = start(1)  # the variable inherited from elsewhere, not from its parent: it reports at once, its input open
    assert stray.wait(60) == 2
    assert stray.communicate() == (b"", mistake)


@pytest.mark.slow
@pytest.mark.process
def test_a_process_of_a_local_replay_cluster_that_dies_stops_it_in_one_line() -> None:
    # Read from stdin, kept open: the cluster runs until the child is killed, whether it is still starting or running.
    assert LOGYSTERA is not None
    run = subprocess.Popen([LOGYSTERA, "replay", "-", "--rules", str(RULES_DIR), "--processes", "2"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children = wait_for(lambda: subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True,
                                               check=False).stdout.split(), "process 1 of the cluster")
    os.kill(int(children[0]), signal.SIGKILL)
    out, err = run.communicate(timeout=60)
    assert (run.returncode, out) == (1, b"")
    assert err.decode() == "logystera: error: process 1 of the cluster ended with signal SIGKILL: the cluster is stopped\n"


def test_shard_keys_put_one_shard_on_each_worker() -> None:
    keys = shard_keys(4)
    assert len(set(keys)) == 4 and shard_keys(1) == ("0",)


def test_the_cluster_options_are_checked() -> None:
    assert cluster_shape(2, 3, None, None) == ClusterShape(3, 2)
    assert cluster_shape(1, None, "a:1,b:2", 1) == ClusterShape(2, 1, ("a:1", "b:2"), 1)
    for bad in ((1, 2, "a:1,b:2,c:3", 0), (1, None, "a:1,b:2", None), (1, None, None, 1), (1, None, "a1,b:2", 0), (0, None, None, None)):
        with pytest.raises(UsageError):
            cluster_shape(*bad)


def test_a_recovery_directory_made_for_another_cluster_or_partition_count_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "recovery"
    assert prepare_recovery(directory, ClusterShape(2, 1), "signals", 4) == RecoveryLayout(initialised=True, by_partition=True)
    assert len(list(directory.glob("*.sqlite3"))) == 2
    assert prepare_recovery(directory, ClusterShape(2, 1), "signals", 4) == RecoveryLayout(initialised=False, by_partition=True)
    with pytest.raises(LiveConfigError, match=r"holds the state of a cluster of 2 processes, not 1: start it with --processes 2"):
        prepare_recovery(directory, ClusterShape(1, 2), "signals", 4)
    # Each site's state is keyed for the worker that read its partition: neither count may change.
    with pytest.raises(LiveConfigError, match=r"holds the state of 1 worker per process, not 3: start it with --workers 1"):
        prepare_recovery(directory, ClusterShape(2, 3), "signals", 4)
    with pytest.raises(LiveConfigError, match=r"holds the state of a topic of 4 partitions; 'signals' has 6: .* give a new directory"):
        prepare_recovery(directory, ClusterShape(2, 1), "signals", 6)


def test_a_recovery_directory_made_before_placement_keeps_its_state_keyed_by_site(tmp_path: Path) -> None:
    older = tmp_path / "older"  # made by a cluster of the previous release: its marker names only the processes
    older.mkdir()
    init_db_dir(older, 2)
    (older / CLUSTER_FILE).write_text('{"processes": 2}\n', encoding="utf-8")
    assert prepare_recovery(older, ClusterShape(2, 3), "signals", 6) == RecoveryLayout(initialised=False, by_partition=False)
    oldest = tmp_path / "oldest"  # made before clusters: one process, no marker
    oldest.mkdir()
    init_db_dir(oldest, 1)
    assert prepare_recovery(oldest, ClusterShape(1, 2), "signals", 4) == RecoveryLayout(initialised=False, by_partition=False)
    with pytest.raises(LiveConfigError, match=r"holds the state of a cluster of 1 process, not 2"):
        prepare_recovery(oldest, ClusterShape(2, 1), "signals", 4)


@pytest.mark.parametrize(("marker", "problem"), [
    ("not json", r"the file: Invalid JSON"),
    ('{"processes": 2, "workers": 1, "state": "by-partition"}', r"the file: Value error, a state placed by partition names its workers"),
    ('{"processes": 2, "shards": 3}', r"shards: Extra inputs are not permitted"),
    ('{"processes": 1e30}', r"processes: "),
])
def test_a_recovery_marker_logystera_did_not_write_is_refused_in_one_line(tmp_path: Path, marker: str, problem: str) -> None:
    directory = tmp_path / "recovery"
    directory.mkdir()
    init_db_dir(directory, 2)
    (directory / CLUSTER_FILE).write_text(marker, encoding="utf-8")
    with pytest.raises(LiveConfigError, match=rf"logystera-cluster.json is not a marker Logystera wrote \({problem}.*give a new directory"):
        prepare_recovery(directory, ClusterShape(2, 1), "signals", 4)


@pytest.mark.broker
@pytest.mark.process
def test_detect_refuses_a_recovery_directory_of_another_process_count_in_one_line(broker: Broker, tmp_path: Path) -> None:
    signals, alerts = unique_topic("signals"), unique_topic("alerts")
    broker.create_topics([signals, alerts], partitions=2)
    recovery = tmp_path / "recovery"
    prepare_recovery(recovery, ClusterShape(2, 1), signals, 2)
    returncode, detect = run_detect(broker, "--topic", signals, "--alerts-topic", alerts, "--recovery-dir", str(recovery))
    assert returncode == 2
    assert detect.lines == [f"logystera: error: --recovery-dir {recovery} holds the state of a cluster of 2 processes, not 1: "
                            "start it with --processes 2, or give a new directory (docs/scaling.md)"]


@pytest.mark.broker
@pytest.mark.process
def test_a_detect_cluster_reports_a_missing_topic_once_and_a_sigterm_stops_every_process(broker: Broker, tmp_path: Path) -> None:
    # Processes 1 and 2 start before process 0 has checked the topics: they find the same mistake and hold it back.
    signals, alerts = unique_topic("signals"), unique_topic("alerts")
    broker.create_topics([signals, alerts], partitions=3)
    marker = str(tmp_path / "recovery")
    returncode, detect = run_detect(broker, "--topic", "no-such-topic", "--alerts-topic", alerts, "--processes", "3",
                                    "--recovery-dir", marker)
    assert returncode == 2
    assert detect.lines == [f"logystera: error: topic 'no-such-topic' does not exist on {broker.bootstrap} "
                            "(create it with the partitions it needs)"]
    assert _processes_running(marker) == []
    running = Detect(broker, "--topic", signals, "--alerts-topic", alerts, "--processes", "3", "--recovery-dir", marker)
    # An invalid record in every partition, reported once read: every process is in the flow.
    markers = [produce(broker.producer(), signals, [(b"marker", b'{"marker":true}')], partition=p)[0] for p in range(3)]
    wait_for(lambda: all(position in running.rejects() for position in markers), "every partition read")
    running.process.send_signal(signal.SIGTERM)
    assert running.finish() == 0, running.lines  # passed on to processes 1 and 2: a stop, not a failure
    assert running.lines[-1] == "detect stopped: 0 signals, 3 invalid, 0 late"
    assert _processes_running(marker) == []


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.process
def test_kill_9_of_one_process_of_a_cluster_and_a_restart_give_the_notifications_of_replay(broker: Broker, tmp_path: Path) -> None:
    signals, alerts, lines, expected = live_case(broker, tmp_path, partitions=4, signals=4000, seed=41)
    half = len(lines) // 2
    assert len(expected.alerts) > 20
    producer = broker.producer()
    recovery, store = tmp_path / "recovery", tmp_path / "store"
    args = ("--topic", signals, "--alerts-topic", alerts, "--recovery-dir", str(recovery), "--processes", "2",
            "--store", f"chdb://{store}", "--epoch-interval", "1s")

    run = Detect(broker, *args)
    produce_lines(producer, signals, lines[:half])
    wait_for(lambda: len(broker.read_all(alerts)) > 3, "notifications of the first half")
    children = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True, check=False).stdout.split()
    assert len(children) == 1, children  # process 1 of the cluster, started by process 0
    subprocess.run(["kill", "-9", children[0]], check=True)
    assert run.process.wait(60) == 1  # the cluster stops, and says why
    wait_for(lambda: any("process 1 of the cluster ended with signal SIGKILL" in line for line in run.lines), "the reason")

    produce_lines(producer, signals, lines[half:])
    returncode, last = run_detect(broker, *args, "--exit-at-end")
    assert returncode == 0, "\n".join(last.lines)
    versions: dict[tuple[str, int], set[str]] = defaultdict(set)
    for record in notifications(broker, alerts):
        assert record.value is not None
        body = json.loads(record.value)
        versions[(body["alert_id"], body["seq"])].add(record.value.decode())
    assert all(len(texts) == 1 for texts in versions.values()), "a notification was emitted twice with different bytes"
    assert {text for texts in versions.values() for text in texts} == set(expected.alerts)

    # The embedded store was written by process 0 only, and holds what a single-process replay stores.
    single = tmp_path / "single"
    path = tmp_path / "all.jsonl"
    assert LOGYSTERA is not None
    subprocess.run([LOGYSTERA, "replay", str(path), "--rules", str(RULES_DIR), "--store", f"chdb://{single}", "--out", "/dev/null"],
                   capture_output=True, timeout=300, check=True)
    for query in ("SELECT alert_id, seq, site, record FROM alerts FINAL ORDER BY alert_id, seq",
                  "SELECT site, type, ts, id, seq FROM signals FINAL ORDER BY site, ts, id, seq"):
        assert sql(store, query) == sql(single, query), query
    assert run.lines[0].startswith("detect: ") and "2 processes × 1 worker" in run.lines[0]


@pytest.mark.broker
@pytest.mark.process
def test_process_0_serves_the_clusters_counts_for_prometheus(broker: Broker, tmp_path: Path) -> None:
    signals, alerts, lines, expected = live_case(broker, tmp_path, partitions=2, signals=3000, seed=43)
    assert expected.rejects and len(expected.alerts) > 5
    port = free_port()
    running = Detect(broker, "--topic", signals, "--alerts-topic", alerts, "--processes", "2", "--metrics-port", str(port))
    produce_lines(broker.producer(), signals, lines)
    valid, invalid = 'logystera_detect_records_total{outcome="valid"}', 'logystera_detect_records_total{outcome="invalid"}'

    def counted() -> dict[str, float] | None:
        now = _scraped(port)
        return now if now.get(valid) == expected.valid and now.get(invalid) == len(expected.rejects) else None

    seen = wait_for(counted, "every record counted")  # process 0 counts what both processes read, each record once
    decisions = {key: count for key, count in seen.items() if key.startswith("logystera_detect_decisions_total{")}
    assert decisions == {f'logystera_detect_decisions_total{{decision="{reason}",rule="{rule}"}}': float(count)
                         for (rule, reason), count in expected.decisions.items()}
    assert seen["logystera_detect_late_records_total"] == len(expected.late_lines)
    running.process.send_signal(signal.SIGTERM)
    assert running.finish() == 0, running.lines
    counts = f"{expected.valid} signals, {len(expected.rejects)} invalid, {len(expected.late_lines)} late"
    assert running.lines[-1] == f"detect stopped: {counts}"


def _scraped(port: int) -> dict[str, float]:
    try:
        return scrape(port)
    except OSError:  # not serving yet
        return {}


def test_detect_metrics_name_every_count_of_the_totals() -> None:
    totals = LiveTotals(valid=7, invalid=2, late=1)
    totals.decisions.update({("auth.bruteforce", "fired"): 3, ("auth.bruteforce", "suppressed"): 5, ("cron.missed", "resolved"): 1})
    text = DetectMetrics(totals).exposition().decode()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert samples == {
        'logystera_detect_records_total{outcome="valid"}': "7.0", 'logystera_detect_records_total{outcome="invalid"}': "2.0",
        "logystera_detect_late_records_total": "1.0",
        'logystera_detect_decisions_total{decision="fired",rule="auth.bruteforce"}': "3.0",
        'logystera_detect_decisions_total{decision="suppressed",rule="auth.bruteforce"}': "5.0",
        'logystera_detect_decisions_total{decision="resolved",rule="cron.missed"}': "1.0",
    }


@pytest.mark.broker
@pytest.mark.process
@pytest.mark.parametrize("partitioner", ["murmur2_random", "consistent_random"])
def test_a_detect_cluster_writes_replays_notifications_whichever_partition_a_site_is_in(
    broker: Broker, tmp_path: Path, partitioner: str,
) -> None:
    # murmur2 (the gateway's partitioner): each site's state is on the worker that reads its partition, nothing crosses.
    # CRC32 (librdkafka's default): most sites are in another partition than murmur2 names: their records cross.
    signals, alerts, lines, expected = live_case(broker, tmp_path, partitions=4, signals=3000, seed=47)
    assert len(expected.alerts) > 20 and expected.rejects
    positions = produce_lines(broker.producer(partitioner=partitioner), signals, lines)
    at_home = [partition == kafka_partition(key_of(line), 4) for (partition, _), line in zip(positions, lines, strict=True)]
    assert all(at_home) if partitioner == "murmur2_random" else not all(at_home)
    returncode, detect = run_detect(broker, "--topic", signals, "--alerts-topic", alerts, "--processes", "2", "--exit-at-end")
    assert returncode == 0, "\n".join(detect.lines)
    got = [record.value.decode() for record in notifications(broker, alerts) if record.value is not None]
    assert sorted(got) == sorted(expected.alerts)
    for site in {json.loads(alert)["site"] for alert in expected.alerts}:  # and each site's in replay's order
        assert [alert for alert in got if json.loads(alert)["site"] == site] == [
            alert for alert in expected.alerts if json.loads(alert)["site"] == site]
    assert detect.rejects() == expected_rejects(expected, positions)


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus that takes a replay seconds (560k lines), with invalid lines from its first chunk on."""
    path = tmp_path_factory.mktemp("long") / "signals.jsonl"
    write_corpus(path, 200_000, 1_000, seed=5, duration_s=3600)
    return path


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_replay_stopped_while_it_runs_says_interrupted_in_one_line(
    long_corpus: Path, tmp_path: Path, processes: str, stop: signal.Signals,
) -> None:
    # Every process turns the signal into Bytewax's own stop, between two steps. A process that died of it instead left
    # its peers' connections without a goodbye: their receiving threads panicked (a traceback, or an abort).
    assert LOGYSTERA is not None
    output = tmp_path / "notifications.jsonl"
    with output.open("wb") as out:
        run = subprocess.Popen([LOGYSTERA, "replay", str(long_corpus), "--rules", str(RULES_DIR), "--processes", processes],
                               stdout=out, stderr=subprocess.PIPE)
    assert run.stderr is not None
    first = run.stderr.readline()
    assert first.startswith(b"line "), first  # a rejected line of the first chunk, reported by the running flow
    run.send_signal(stop)
    err = (first + run.stderr.read()).decode()  # through the same reader: readline may have read ahead
    assert run.wait(60) == 130, err[-2000:]
    assert [line for line in err.splitlines() if not line.startswith("line ")] == ["logystera: interrupted"], err[-2000:]
    assert output.read_bytes() == b""  # stopped: no notifications printed, as for any stop before the end
