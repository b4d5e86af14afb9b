"""``logystera deliver`` as a user runs it: a process of its own, its own chDB directory, a real receiver on loopback.

The attempt log is read back with ``logystera sql`` (a process can open one
chDB directory, and a directory one process at a time). The receiver runs in
this process; every test waits on it or on the process, with deadlines.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.support.factories import make_notification
from tests.support.kafka_broker import Broker, unique_topic
from tests.support.ports import free_port
from tests.support.prometheus import scrape
from tests.support.receivers import Hang, Received, Reply, WebhookReceiver

pytestmark = pytest.mark.process

LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or shutil.which("logystera")
SECRET = "whsec_" + base64.b64encode(b"delivery-test-secret-32-bytes!!!").decode()
TIMEOUT = 60.0
CHANNELS = """channels:
  - name: oncall
    type: webhook
    url_env: ONCALL_URL
    secret_env: ONCALL_SECRET
    rate_limit: {{per: 1s, max: {rate}}}
    send_resolved: {resolved}
"""


def alert(number: int) -> str:
    return f"{number:032x}"


def notification(number: int, seq: int = 1, **changes: Any) -> dict[str, Any]:
    return make_notification(alert_id=alert(number), seq=seq, link=f"http://localhost:8080/alerts/{alert(number)}", **changes)


def line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as receiver:
        yield receiver


def rules(tmp_path: Path, rate: int = 100, resolved: str = "true", more: str = "") -> Path:
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    (directory / "channels.yaml").write_text(CHANNELS.format(rate=rate, resolved=resolved) + more, encoding="utf-8")
    return directory


def environment(hook: WebhookReceiver | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "LOGYSTERA_STORE"}
    if hook is not None:
        env |= {"ONCALL_URL": hook.url, "ONCALL_SECRET": SECRET}
    return env


def logystera(*args: str, hook: WebhookReceiver | None = None) -> subprocess.CompletedProcess[str]:
    assert LOGYSTERA is not None
    return subprocess.run([LOGYSTERA, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env=environment(hook))


def start(tmp_path: Path, *args: str, hook: WebhookReceiver, name: str = "deliver") -> tuple[subprocess.Popen[bytes], Path]:
    """``logystera deliver ARGS`` in the background; its stderr goes to a file (returned)."""
    assert LOGYSTERA is not None
    err = tmp_path / f"{name}.err"
    with open(err, "wb") as stream:
        process = subprocess.Popen([LOGYSTERA, "deliver", *args], stdout=subprocess.DEVNULL, stderr=stream, env=environment(hook))
    return process, err


def sql(store: Path, query: str) -> list[dict[str, Any]]:
    result = logystera("sql", "--store", f"chdb://{store}", "--format", "json", query)
    assert result.returncode == 0, result.stderr
    return [json.loads(row) for row in result.stdout.splitlines()]


def attempts(store: Path) -> dict[tuple[str, int, int], tuple[str, Any, str]]:
    """(alert_id, seq, attempt) → (outcome, status, error) of channel oncall."""
    rows = sql(store, "SELECT alert_id, seq, attempt, outcome, status_code, error FROM deliveries_final WHERE channel = 'oncall'")
    return {(r["alert_id"], r["seq"], r["attempt"]): (r["outcome"], r["status_code"], r["error"]) for r in rows}


@pytest.mark.slow
def test_a_file_is_delivered_with_invalid_lines_reported_and_a_summary(tmp_path: Path, hook: WebhookReceiver) -> None:
    records = [notification(1), notification(2), notification(1, 2, status="resolved", ended_at="2026-11-28T10:44:00.000Z")]
    broken = ["{not json", line({**notification(3), "seq": "one"}), line({**notification(4), "extra": 1})]
    alerts = tmp_path / "alerts.jsonl"
    text = "\n".join([line(records[0]), broken[0], line(records[1]), broken[1], "", line(records[2]), broken[2]]) + "\n"
    # and a line that is not UTF-8, and one over the limit of a line (2 MiB of nesting: never read whole, never parsed)
    alerts.write_bytes(text.encode() + b"\xff\xfe{}\n" + b"[" * (2 << 20) + b"\n" + line(notification(5)).encode() + b"\n")
    store = tmp_path / "store"
    result = logystera("deliver", str(alerts), "--rules", str(rules(tmp_path, resolved="false")), "--store", f"chdb://{store}",
                       hook=hook)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "line 2: not valid JSON: key must be a string at line 1 column 2",
        "line 4: seq: input should be a valid integer",
        "line 7: extra: field not allowed",
        "line 8: not valid JSON: expected value at line 1 column 1",
        "line 9: line of 1048576 bytes or more, over the limit of a line",
        "channel oncall: 3 delivered, 0 collapsed, 0 gave up, 0 failed, 1 resolved not sent, 0 done before; 3 attempts",
        "delivery: 4 records, 5 invalid, 0 duplicate, 0 not done: "
        "3 delivered, 0 collapsed, 0 gave up, 0 failed, 1 resolved not sent, 0 done before; 3 attempts",
    ]
    assert sorted(r.headers["webhook-id"] for r in hook.received) == [f"{alert(n)}:1" for n in (1, 2, 5)] and not hook.problems
    assert attempts(store) == {(alert(n), 1, 1): ("delivered", 204, "") for n in (1, 2, 5)}


def test_records_beyond_the_contract_are_invalid_counted_and_never_sent(tmp_path: Path, hook: WebhookReceiver) -> None:
    rule = notification(2)["rule"]
    records = [
        notification(1),
        {**notification(2), "rule": {**rule, "id": "r" * 40_000}},  # made a 41 KB Teams body
        {**notification(3), "link": f"https://müller.example/konsole/alerts/{alert(3)}"},  # a raw host in a button URL
        {**notification(4), "summary": "s" * 5000},
    ]
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("".join(line(record) + "\n" for record in records), encoding="utf-8")
    result = logystera("deliver", str(alerts), "--rules", str(rules(tmp_path)), "--store", f"chdb://{tmp_path / 'store'}",
                       hook=hook)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[:3] == [
        "line 2: rule.id: string should match pattern '^[a-z0-9][a-z0-9-]{0,63}$'",
        "line 3: link: is not a valid http(s) URI (ASCII host, percent-encoded path)",
        "line 4: summary: string should have at most 2000 characters",
    ]
    assert result.stderr.splitlines()[-1].startswith("delivery: 1 records, 3 invalid, 0 duplicate, 0 not done: 1 delivered")
    assert [r.headers["webhook-id"] for r in hook.received] == [f"{alert(1)}:1"]


def test_the_totals_add_up_every_channel(tmp_path: Path, hook: WebhookReceiver) -> None:
    # oncall is defined; ops-mail and ops-slack are not, so their calls are `failed` rows.
    records = [{**notification(1), "deliver": ["oncall", "ops-mail", "ops-slack"]}, {**notification(2), "deliver": ["oncall", "ops-mail"]}]
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("".join(line(record) + "\n" for record in records), encoding="utf-8")
    store = tmp_path / "store"
    result = logystera("deliver", str(alerts), "--rules", str(rules(tmp_path)), "--store", f"chdb://{store}", hook=hook)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-4:] == [
        "channel oncall: 2 delivered, 0 collapsed, 0 gave up, 0 failed, 0 resolved not sent, 0 done before; 2 attempts",
        "channel ops-mail: 0 delivered, 0 collapsed, 0 gave up, 2 failed, 0 resolved not sent, 0 done before; 2 attempts",
        "channel ops-slack: 0 delivered, 0 collapsed, 0 gave up, 1 failed, 0 resolved not sent, 0 done before; 1 attempts",
        "delivery: 2 records, 0 invalid, 0 duplicate, 0 not done: "
        "2 delivered, 0 collapsed, 0 gave up, 3 failed, 0 resolved not sent, 0 done before; 5 attempts",
    ]


ONE_SOURCE = "logystera: error: give either a file of notification records or --bootstrap HOST:PORT"


@pytest.mark.parametrize(("args", "with_env", "message"), [
    ([], True, ONE_SOURCE),
    (["x.jsonl", "--bootstrap", "127.0.0.1:1"], True, ONE_SOURCE),
    (["missing.jsonl"], True, "logystera: error: missing.jsonl: no such file"),
    (["ALERTS"], False, "logystera: error: channel oncall: url_env: environment variable ONCALL_URL is not set"),
    (["ALERTS", "--backoff", "soon"], True, "logystera: error: argument --backoff: 'soon' is not a duration like 90s, 15m, 1h or 1d"),
    (["ALERTS", "--max-attempts", "0"], True, "logystera: error: --max-attempts must be at least 1"),
    (["ALERTS", "--store", "chdb://"], True, "logystera: error: --store: chdb DSN needs a directory, e.g. chdb:///var/lib/logystera"),
    (["ALERTS", "--inhibit-history", "-1"], True, "logystera: error: --inhibit-history must be at least 0"),
], ids=["no-source", "two-sources", "no-file", "no-env", "bad-duration", "no-attempts", "bad-store", "bad-history"])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path: Path, hook: WebhookReceiver, args: list[str], with_env: bool,
                                               message: str) -> None:
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(line(notification(1)) + "\n", encoding="utf-8")
    args = [str(alerts) if arg == "ALERTS" else arg for arg in args]
    result = logystera("deliver", *args, "--rules", str(rules(tmp_path)), hook=hook if with_env else None)
    assert (result.returncode, result.stderr) == (2, message + "\n")
    assert hook.received == []


@pytest.mark.slow
def test_a_store_directory_another_process_holds_fails_at_once(tmp_path: Path, hook: WebhookReceiver) -> None:
    store = tmp_path / "store"
    holder = subprocess.Popen(  # a process that opened the directory and keeps it
        [sys.executable, "-c", "import sys; from sinks.clickhouse import Store; kept = Store.open(sys.argv[1]); print('open', flush=True);"
         " sys.stdin.read()", f"chdb://{store}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        alerts = tmp_path / "alerts.jsonl"
        alerts.write_text(line(notification(1)) + "\n", encoding="utf-8")
        result = logystera("deliver", str(alerts), "--rules", str(rules(tmp_path)), "--store", f"chdb://{store}", hook=hook)
    finally:
        holder.communicate("", timeout=TIMEOUT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # Found before chDB is asked to open the directory: one line of ours, none of chDB's, no retry.
    assert result.stderr.splitlines() == [
        f"logystera: error: store chdb://{store}: {store} is in use by another process "
        "(a chDB directory is opened by one process at a time)"
    ]
    assert hook.received == []


@pytest.mark.slow
def test_killed_and_restarted_it_delivers_everything_without_resending_what_the_log_says_is_done(
    tmp_path: Path, hook: WebhookReceiver,
) -> None:
    count = 30
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("".join(line(notification(n)) + "\n" for n in range(count)), encoding="utf-8")
    store = tmp_path / "store"
    args = (str(alerts), "--rules", str(rules(tmp_path, rate=10)), "--store", f"chdb://{store}")  # ~2 s: 10 at once, then 10/s
    process, _ = start(tmp_path, *args, hook=hook)
    hook.wait_for(15, timeout=TIMEOUT)
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)
    before = attempts(store)
    held_before = {key[:2] for key, (outcome, *_) in before.items() if outcome == "rate_limited"}
    done_before = {key[:2] for key, (outcome, *_) in before.items() if outcome == "delivered"}
    assert held_before and done_before, "killed in the middle: some delivered, some held"

    again = logystera("deliver", *args, hook=hook)
    assert again.returncode == 0, again.stderr
    assert f"{len(done_before)} done before" in again.stderr.splitlines()[-1]
    after = attempts(store)
    assert {key: after[key] for key in before} == before, "earlier rows are kept: attempt numbers continued"
    received = Counter(r.headers["webhook-id"] for r in hook.received)
    assert not hook.problems  # every request signed, its webhook-id that of its body
    delivered = Counter(f"{alert_id}:{seq}" for (alert_id, seq, _), (outcome, *_) in after.items() if outcome == "delivered")
    assert set(received) == set(delivered) == {f"{alert(n)}:1" for n in range(count)}
    for webhook_id, times in received.items():
        # Sent twice only when the process died between the receiver's answer and the row reaching the store.
        assert times - delivered[webhook_id] in (0, 1) and delivered[webhook_id] <= 2, webhook_id
    for alert_id, seq in done_before:
        assert received[f"{alert_id}:{seq}"] == 1, "delivered and recorded before the kill: never sent again"
    for alert_id, seq in held_before - done_before:
        numbers = sorted(attempt for (a, s, attempt) in after if (a, s) == (alert_id, seq))
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 2


@pytest.mark.slow
def test_a_call_cut_off_by_a_kill_is_recorded_started_and_made_again_with_the_same_id_and_body(
    tmp_path: Path, hook: WebhookReceiver,
) -> None:
    hook.answer(Hang(TIMEOUT))  # the first call gets no answer while the process lives
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(line(notification(1)) + "\n", encoding="utf-8")
    store = tmp_path / "store"
    args = (str(alerts), "--rules", str(rules(tmp_path)), "--store", f"chdb://{store}")
    process, _ = start(tmp_path, *args, hook=hook)
    hook.wait_for(1, timeout=TIMEOUT)
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)
    hook.release()
    assert attempts(store) == {(alert(1), 1, 1): ("started", None, "")}, "the call in flight has its row"

    again = logystera("deliver", *args, hook=hook)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[-1].startswith("delivery: 1 records, 0 invalid, 0 duplicate, 0 not done: 1 delivered")
    # Maybe delivered: made again, as the same notification.
    assert attempts(store) == {(alert(1), 1, 1): ("started", None, ""), (alert(1), 1, 2): ("delivered", 204, "")}
    assert len(hook.received) == 2 and not hook.problems
    assert len({(r.headers["webhook-id"], r.body) for r in hook.received}) == 1


def carrier_answered(received: list[Received]) -> bool:
    return any(r.answered and "collapsed" in r.json for r in received)


@pytest.mark.slow
def test_a_kill_right_after_a_collapsed_notification_never_reorders_an_alert_nor_changes_a_body(
    tmp_path: Path, hook: WebhookReceiver,
) -> None:
    count = 30
    resolved = {"status": "resolved", "ended_at": "2026-11-28T10:44:00.000Z"}
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("".join(line(notification(n)) + "\n" + line(notification(n, 2, **resolved)) + "\n" for n in range(count)),
                      encoding="utf-8")
    store = tmp_path / "store"
    args = (str(alerts), "--rules", str(rules(tmp_path)), "--store", f"chdb://{store}")
    hook.answer(Reply(429, headers={"retry-after": "1"}))  # the channel is held for a second: backlogs collapse
    process, _ = start(tmp_path, *args, hook=hook)
    hook.wait_until(carrier_answered, "a collapsed notification answered", timeout=TIMEOUT)
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)

    again = logystera("deliver", *args, hook=hook)
    assert again.returncode == 0, again.stderr
    assert not hook.problems
    seen: dict[str, list[int]] = {}
    bodies: dict[str, set[bytes]] = {}
    for request in hook.received:
        seen.setdefault(request.json["alert_id"], []).append(request.json["seq"])
        bodies.setdefault(request.headers["webhook-id"], set()).add(request.body)
    for alert_id, seqs in seen.items():
        assert seqs == sorted(seqs), f"alert {alert_id}: the receiver saw seq {seqs} in this order"
    assert {webhook_id: len(distinct) for webhook_id, distinct in bodies.items() if len(distinct) > 1} == {}
    assert {alert_id for alert_id, seqs in seen.items() if seqs[-1] == 2} == {alert(n) for n in range(count)}


@pytest.mark.slow
def test_stopped_by_sigterm_before_the_end_it_exits_1_and_the_next_run_finishes(tmp_path: Path) -> None:
    down = WebhookReceiver(secret=SECRET)  # not started: refuses, so the notification keeps being retried
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(line(notification(1)) + "\n", encoding="utf-8")
    store, port = tmp_path / "store", free_port()
    args = (str(alerts), "--rules", str(rules(tmp_path)), "--store", f"chdb://{store}", "--backoff", "100ms",
            "--backoff-cap", "200ms", "--max-attempts", "1000")
    process, err = start(tmp_path, *args, "--metrics-port", str(port), hook=down)
    wait_for_metrics(port, process, lambda seen: seen.get(RETRYING_TOTAL, 0) >= 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 1
    summary = err.read_text().splitlines()[-1]
    assert summary.startswith("delivery: 1 records, 0 invalid, 0 duplicate, 1 not done: 0 delivered"), summary
    before = attempts(store)
    assert len(before) >= 2 and {outcome for outcome, *_ in before.values()} == {"retrying"}
    with down:
        again = logystera("deliver", *args, hook=down)
        assert again.returncode == 0, again.stderr
        assert len(down.received) == 1 and not down.problems
    after = attempts(store)
    assert {key: after[key] for key in before} == before
    assert after[(alert(1), 1, len(before) + 1)] == ("delivered", 204, "") and len(after) == len(before) + 1


def test_from_stdin_it_delivers_as_lines_arrive_and_a_stop_does_not_wait_for_the_end(tmp_path: Path, hook: WebhookReceiver) -> None:
    assert LOGYSTERA is not None
    err = tmp_path / "deliver.err"
    with open(err, "wb") as stream:
        process = subprocess.Popen(
            [LOGYSTERA, "deliver", "-", "--rules", str(rules(tmp_path)), "--store", f"chdb://{tmp_path / 'store'}"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stream, env=environment(hook))
    assert process.stdin is not None
    process.stdin.write((line(notification(1)) + "\n").encode())
    process.stdin.flush()
    hook.wait_for(1, timeout=TIMEOUT)  # delivered while the input is still open
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(TIMEOUT) == 1  # stopped before the input ended
    finally:
        process.stdin.close()
    assert err.read_text().splitlines()[-1].startswith("delivery: 1 records, 0 invalid, 0 duplicate, 0 not done: 1 delivered")


@pytest.mark.broker
def test_an_unknown_topic_is_one_line_and_exit_2(tmp_path: Path, hook: WebhookReceiver, broker: Broker) -> None:
    result = logystera("deliver", "--bootstrap", broker.bootstrap, "--topic", "no-such-topic", "--rules", str(rules(tmp_path)),
                       "--store", f"chdb://{tmp_path / 'store'}", hook=hook)
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        2, f"logystera: error: --topic no-such-topic: no such topic on {broker.bootstrap}")


PENDING = "logystera_delivery_pending_records"
RETRYING_TOTAL = 'logystera_delivery_attempts_total{channel="oncall",outcome="retrying"}'


def wait_for_metrics(port: int, process: subprocess.Popen[bytes], ready: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """Poll ``/metrics`` until ``ready`` says so (or fail after the deadline, or when the process stopped)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert process.poll() is None, "deliver stopped"
        try:
            seen = scrape(port)
        except OSError:
            seen = {}
        if ready(seen):
            return seen
        assert time.monotonic() < deadline, f"metrics never got there: {seen}"
        time.sleep(0.05)


def committed(broker: Broker, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(broker.partition_count(topic))], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in offsets}


@pytest.mark.slow
@pytest.mark.broker
def test_live_mode_reads_kafka_commits_what_is_done_and_resumes_after_a_kill(
    tmp_path: Path, hook: WebhookReceiver, broker: Broker,
) -> None:
    topic, group = unique_topic("alerts"), "deliver-test"
    broker.create_topics([topic], partitions=2)
    producer = broker.producer()
    first = [notification(n, site=f"site-{n % 3}") for n in range(6)]
    for record in first:
        producer.produce(topic, key=record["site"], value=line(record))
    producer.produce(topic, key="site-0", value=b"not a notification")
    producer.flush(TIMEOUT)
    port = free_port()
    store = tmp_path / "store"
    args = ("--bootstrap", broker.bootstrap, "--topic", topic, "--group", group, "--rules", str(rules(tmp_path)),
            "--store", f"chdb://{store}", "--metrics-port", str(port))

    process, err = start(tmp_path, *args, hook=hook, name="first")
    hook.wait_for(6, timeout=TIMEOUT)
    seen = wait_for_metrics(port, process, lambda seen: seen.get(PENDING) == 0)
    assert seen['logystera_delivery_notifications_total{channel="oncall",result="delivered"}'] == 6
    assert seen['logystera_delivery_records_total{kind="invalid"}'] == 1
    deadline = time.monotonic() + TIMEOUT
    while committed(broker, topic, group) != broker.end_offsets(topic):  # done, stored, then committed
        assert time.monotonic() < deadline, "offsets never committed"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)
    assert re.search(rf"^{topic}\[\d\]@\d+: not valid JSON", err.read_text(), flags=re.MULTILINE)

    later = [notification(100, site="site-1"), first[2]]  # a new one, and one re-emitted (detection is at least once)
    for record in later:
        producer.produce(topic, key=record["site"], value=line(record))
    producer.flush(TIMEOUT)
    process, err = start(tmp_path, *args, hook=hook, name="second")
    hook.wait_for(7, timeout=TIMEOUT)
    wait_for_metrics(port, process, lambda seen: seen.get('logystera_delivery_records_total{kind="valid"}') == 2
                     and seen.get(PENDING) == 0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 0, err.read_text()
    summary = err.read_text().splitlines()[-1]
    assert summary.startswith("delivery: 2 records, 0 invalid, 0 duplicate, 0 not done: 1 delivered") and "1 done before" in summary
    assert "inhibitions" not in err.read_text(), "no inhibit rule: nothing is read again to restore inhibitions"
    assert committed(broker, topic, group) == broker.end_offsets(topic)
    assert len(hook.received) == 7 and not hook.problems
    assert Counter(r.headers["webhook-id"] for r in hook.received) == Counter(
        f"{alert(n)}:1" for n in [*range(6), 100])


INHIBIT = """inhibit:
  - name: silent-integration-hides-absences
    source: [rule=integration-silent]
    target: [kind=absence, rule!=integration-silent]
    equal: [site]
"""
VALID_RECORDS = 'logystera_delivery_records_total{kind="valid"}'


def absence(number: int, rule: str, seq: int = 1, status: str = "firing", site: str = "shop-eu") -> dict[str, Any]:
    """A notification of an absence rule: the default pack's inhibit rule (INHIBIT) has them as sources and targets."""
    resolved = {"ended_at": "2026-11-28T10:44:00.000Z"} if status == "resolved" else {}
    return notification(number, seq, status=status, site=site, rule={"id": rule, "title": "t", "kind": "absence", "description": None},
                        value={"last_seen_at": "2026-11-28T10:01:00.000Z", "silent_for_s": 300.0}, group={},
                        subsystem="integration", **resolved)


SILENT = absence(1, "integration-silent")
OTHERS = [notification(n, site="blog-us") for n in (3, 4)]


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.parametrize(("history", "limit", "restored", "target"), [
    ([SILENT], [], "1 inhibitions active, restored from 2 records", "inhibited"),  # 2: with the invalid record
    ([SILENT, absence(1, "integration-silent", 2, "resolved")], [], "0 inhibitions active, restored from 3 records",
     "delivered"),
    ([SILENT, *OTHERS], ["--inhibit-history", "4"], "1 inhibitions active, restored from 4 records", "inhibited"),
    ([SILENT, *OTHERS], ["--inhibit-history", "3"], "0 inhibitions active, restored from 3 records", "delivered"),
], ids=["firing", "resolved", "within-the-bound", "past-the-bound"])
def test_live_mode_restores_the_inhibitions_whose_source_lies_before_the_committed_offsets(
    tmp_path: Path, hook: WebhookReceiver, broker: Broker, history: list[dict[str, Any]], limit: list[str], restored: str,
    target: str,
) -> None:
    # The source fired (and maybe resolved) and was delivered and committed by a first run; a target arrives after a
    # restart. The second run reads the records before the committed offsets again (at most --inhibit-history): a source
    # still firing there holds the target; one that resolved, or lies past the bound (forgotten: fail open), does not.
    topic, group = unique_topic("alerts"), "deliver-test"
    broker.create_topics([topic], partitions=1)
    producer = broker.producer()
    for value in [line(history[0]), "not a notification", *map(line, history[1:])]:
        producer.produce(topic, key="shop-eu", value=value)
    producer.flush(TIMEOUT)
    port = free_port()
    store = tmp_path / "store"
    args = ("--bootstrap", broker.bootstrap, "--topic", topic, "--group", group, "--rules", str(rules(tmp_path, more=INHIBIT)),
            "--store", f"chdb://{store}", "--metrics-port", str(port), *limit)

    process, err = start(tmp_path, *args, hook=hook, name="first")
    hook.wait_for(len(history), timeout=TIMEOUT)
    wait_for_metrics(port, process, lambda seen: seen.get(VALID_RECORDS) == len(history) and seen.get(PENDING) == 0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 0, err.read_text()
    assert committed(broker, topic, group) == broker.end_offsets(topic)
    assert "0 inhibitions active, restored from 0 records" in err.read_text()  # nothing committed before the first run

    cron = absence(2, "cron-job-stopped")
    producer.produce(topic, key="shop-eu", value=line(cron))
    producer.flush(TIMEOUT)
    process, err = start(tmp_path, *args, hook=hook, name="second")
    ended = f'logystera_delivery_notifications_total{{channel="oncall",result="{target}"}}'
    wait_for_metrics(port, process, lambda seen: seen.get(ended) == 1 and seen.get(PENDING) == 0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 0, err.read_text()
    lines = err.read_text().splitlines()
    cut = "; on 1 partitions older records were not read (--inhibit-history 3)" if limit[1:] == ["3"] else ""
    assert lines[0] == f"logystera: deliver: {restored} of {topic} before the committed offsets (1 invalid, skipped){cut}"
    assert lines[-1].startswith("delivery: 1 records, 0 invalid, 0 duplicate, 0 not done")
    rows = sql(store, "SELECT alert_id, seq, outcome, held_by FROM deliveries_final WHERE channel = 'oncall' ORDER BY alert_id, seq")
    held_by = alert(1) if target == "inhibited" else ""
    assert {"alert_id": alert(2), "seq": 1, "outcome": target, "held_by": held_by} in rows, (rows, lines)
    sent = sorted(r.headers["webhook-id"] for r in hook.received)
    assert sent == sorted([f"{r['alert_id']}:{r['seq']}" for r in history] + ([f"{alert(2)}:1"] if target == "delivered" else []))


def test_from_a_file_a_restart_reads_the_sources_again_so_the_inhibitions_outlive_it(tmp_path: Path, hook: WebhookReceiver) -> None:
    # A file run reads the whole file every time: the source delivered by the first run is seen again by the second
    # (done before, not sent) before the target appended since, which it holds. Nothing is read apart, nothing printed.
    alerts, store = tmp_path / "alerts.jsonl", tmp_path / "store"
    args = ("deliver", str(alerts), "--rules", str(rules(tmp_path, more=INHIBIT)), "--store", f"chdb://{store}")
    alerts.write_text(line(SILENT) + "\n", encoding="utf-8")
    assert logystera(*args, hook=hook).returncode == 0
    alerts.write_text(line(SILENT) + "\n" + line(absence(2, "cron-job-stopped")) + "\n", encoding="utf-8")
    second = logystera(*args, hook=hook)
    assert second.returncode == 0, second.stderr
    assert second.stderr.splitlines()[-1] == ("delivery: 2 records, 0 invalid, 0 duplicate, 0 not done: 0 delivered, 0 collapsed, "
                                              "0 gave up, 0 failed, 0 resolved not sent, 1 done before, "
                                              "1 held (0 silenced, 0 muted, 1 inhibited); 1 attempts")  # the held row
    assert [r.headers["webhook-id"] for r in hook.received] == [f"{alert(1)}:1"]
    rows = sql(store, f"SELECT outcome, held_by FROM deliveries_final WHERE alert_id = '{alert(2)}'")
    assert rows == [{"outcome": "inhibited", "held_by": alert(1)}]
