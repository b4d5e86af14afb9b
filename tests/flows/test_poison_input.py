"""No single input stops detection: poison lines through ``logystera replay`` and ``logystera detect``, as users run them.

A poison line is one that passed validation once and then broke a later step,
or broke validation itself: integers past what the store holds or a float sum
takes, nesting deeper than Python parses, timestamps past 2199 or in a wrong
shape, repeated keys, bytes that are not UTF-8. Each must be one rejected line
with its reason while everything around it is detected and stored exactly as
without it; the extremes the contract accepts (ts 2199-12-31T23:59:59.999Z,
seq 2^53 − 1) must be stored and stay stored.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from flows.replay import replay
from flows.sources import DEFAULT_CHUNK_LINES
from schemas.lines import MAX_SIGNAL_LINE_BYTES, overlong
from schemas.records import Record, parse_record
from schemas.rule_loader import load_rules
from schemas.signals import MAX_SAFE_INTEGER
from simulate.corpus import generate_corpus
from tests.flows.test_live_kafka import LOGYSTERA, expected_rejects, key_of, notifications, produce, run_detect
from tests.support.kafka_broker import Broker, unique_topic

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
TIMEOUT = 120
CORPUS = list(generate_corpus(3000, 4, seed=31, duration_s=1800))
MAX = MAX_SAFE_INTEGER


def first(type_: str) -> dict[str, Any]:
    """The first valid signal of ``type_`` in the corpus."""
    return json.loads(next(line for line in CORPUS if f'"type":"{type_}"' in line and isinstance(parse_record(line.encode(), 1), Record)))


def changed(signal: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = {**signal["data"], **changes.pop("data", {})}
    return {**signal, **changes, "data": data}


def text(signal: dict[str, Any]) -> str:
    return json.dumps(signal, separators=(",", ":"), ensure_ascii=False)


REQUEST, MAIL = first("request"), first("mail")
# (line, reason): each rejected with exactly this reason, wherever it is in the file.
POISON: list[tuple[bytes, str]] = [
    (text(changed(REQUEST, seq=2**64)).encode(), f"seq: input should be less than or equal to {MAX}"),
    (text(changed(REQUEST, id="poison-duration")).replace('"duration_ms":', '"duration_ms":' + "9" * 401, 1).encode(),
     f"data.duration_ms: input should be less than or equal to {MAX}"),
    (b"[" * 100_000, overlong(MAX_SIGNAL_LINE_BYTES)),  # rejected for its length, before any parse
    (b"[" * 1000, "not valid JSON: recursion limit exceeded at line 1 column 202"),
    (text(changed(MAIL, ts="2200-01-01T00:00:00.000Z")).encode(), "ts: year 2200 out of range 1970–2199"),
    (text(changed(MAIL, ts="9999-12-31T23:59:59.999Z")).encode(), "ts: year 9999 out of range 1970–2199"),
    (text(changed(MAIL, ts="2026-11-28T10:00:00.000+01:00")).encode(), "ts: offset +01:00 not allowed, use Z (UTC)"),
    (("{" + '"type":"mail",' + text(MAIL)[1:]).encode(), "type: key given more than once"),
    (text(MAIL).replace('"data":{', '"data":{"outcome":"sent",', 1).encode(), "data.outcome: key given more than once"),
    (text(MAIL).replace(MAIL["data"]["transport"], "\xff").encode("utf-8").replace(b"\xc3\xbf", b"\xff"),
     "not valid JSON: invalid unicode code point at line 1 column "),
]
# The extremes the contract accepts, on a site of their own (a 2199 clock would make the rest of a site's records
# late), then a line rejected on that site: its `rejected` row belongs to an hour past what a DateTime column holds.
EXTREMES = [
    text(changed(MAIL, site="far-future", id="far-future-0001", ts="2199-12-31T23:59:59.999Z", seq=MAX)),
    text(changed(MAIL, site="far-future", id="far-future-0002", ts="2150-06-01T00:00:00.000Z", seq=0)),
    text(changed(MAIL, site="epoch", id="epoch-000000001", ts="1970-01-01T00:00:00.000Z")),
]
LAST = (text(changed(MAIL, site="far-future", id="far-future-0003", ts="2199-12-31T23:59:59.999Z", data={"outcome": "lost"})),
        "data.outcome: input should be 'sent', 'failed', 'deferred' or 'bounced'")


def poisoned(every: int = 300) -> tuple[list[bytes], dict[int, str]]:
    """The corpus with a poison line after every ``every`` lines and the extremes at the end; reason per 1-based line."""
    lines: list[bytes] = []
    reasons: dict[int, str] = {}
    poison = iter(POISON)
    for index, line in enumerate(CORPUS):
        lines.append(line.encode())
        if index % every == every - 1:
            raw, reason = next(poison, (b"", ""))
            if raw:
                lines.append(raw)
                reasons[len(lines)] = reason
    assert len(reasons) == len(POISON)
    lines += [line.encode() for line in EXTREMES] + [LAST[0].encode()]
    reasons[len(lines)] = LAST[1]
    return lines, reasons


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def replay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert LOGYSTERA is not None
    return subprocess.run([LOGYSTERA, "replay", *args, "--rules", str(RULES)], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def check_rejects(stderr: str, reasons: dict[int, str]) -> list[tuple[int, str]]:
    """Every line a rejected line in line order, then the totals; every poison line there with its reason."""
    assert "Traceback" not in stderr and "panicked" not in stderr, stderr[-2000:]
    *rejected, totals = stderr.splitlines()
    found = [(int(line.split(":", 1)[0].removeprefix("line ")), line.split(": ", 1)[1]) for line in rejected]
    assert [line for line, _ in found] == sorted(line for line, _ in found)
    by_line = dict(found)
    for line, reason in reasons.items():
        assert by_line[line].startswith(reason), (line, by_line[line])
    assert totals.startswith("replayed ") and f", {len(found)} invalid, " in totals
    return found


# -- replay ---------------------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("workers", ["1", "3"])
def test_replay_rejects_each_poison_line_and_detects_the_rest_as_without_it(tmp_path: Path, workers: str) -> None:
    lines, reasons = poisoned()
    result = replay_cli(str(write(tmp_path / "poisoned.jsonl", lines)), "--workers", workers)
    assert result.returncode == 0, result.stderr[-2000:]
    check_rejects(result.stderr, reasons)
    clean = [line for number, line in enumerate(lines, 1) if number not in reasons]
    reference = replay_cli(str(write(tmp_path / "clean.jsonl", clean)))
    assert result.stdout == reference.stdout and result.stdout.count("\n") > 20


@pytest.mark.process
def test_replay_reports_a_rejected_line_while_the_input_is_still_coming() -> None:
    # One chunk's worth of lines (the first one bad) on stdin, which stays open: the reason must come before the end.
    assert LOGYSTERA is not None
    process = subprocess.Popen([LOGYSTERA, "replay", "-", "--rules", str(RULES)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stderr is not None
    try:
        chunk = (CORPUS * (DEFAULT_CHUNK_LINES // len(CORPUS) + 1))[:DEFAULT_CHUNK_LINES - 1]
        process.stdin.write(b"not json\n" + b"".join(line.encode() + b"\n" for line in chunk))
        process.stdin.flush()
        readable, _, _ = select.select([process.stderr], [], [], TIMEOUT)
        assert readable, "nothing on stderr while the input stays open"
        assert process.stderr.readline() == b"line 1: not valid JSON: expected ident at line 1 column 2\n"
        assert process.poll() is None  # still waiting for the rest of its input
    finally:
        process.stdin.close()
        process.wait(TIMEOUT)
        process.stderr.close()
    assert process.returncode == 0


STORE_CHILD = textwrap.dedent("""\
    import json, sys
    from sinks.clickhouse import Store

    store = Store.open("chdb://" + sys.argv[1])
    store.command("OPTIMIZE TABLE logystera.signals FINAL")  # a merge applies the retention (TTL)
    store.command("OPTIMIZE TABLE logystera.rejected FINAL")
    rows = lambda sql: [list(map(str, row)) for row in store.query(sql).result_rows]
    print(json.dumps({
        "signals": rows("SELECT count() FROM logystera.signals"),
        "extremes": rows("SELECT id, toString(ts), toString(seq) FROM logystera.signals "
                         "WHERE site = 'far-future' ORDER BY id"),
        "rejected": rows("SELECT line, reason, toString(hour) FROM logystera.rejected ORDER BY line"),
    }))
""")


def stored(directory: Path) -> dict[str, Any]:
    """What a chDB directory holds, read in a child process (chDB opens one directory per process)."""
    result = subprocess.run([sys.executable, "-c", STORE_CHILD, str(directory)], capture_output=True, text=True,
                            timeout=TIMEOUT, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.process
@pytest.mark.slow
def test_replay_with_the_store_stores_everything_but_the_poison_and_keeps_the_extremes(tmp_path: Path) -> None:
    lines, reasons = poisoned()
    store = tmp_path / "store"
    result = replay_cli(str(write(tmp_path / "poisoned.jsonl", lines)), "--store", f"chdb://{store}")
    assert result.returncode == 0, result.stderr[-2000:]
    rejected = check_rejects(result.stderr, reasons)
    valid = int(result.stderr.splitlines()[-1].split()[1])
    ticks = sum(1 for line in lines if b'"type":"tick"' in line)
    contents = stored(store)
    assert contents["signals"] == [[str(valid - ticks - 1)]]  # all but the 1970 one: 30 days' retention, as designed
    # Kept through a merge, which applies the retention: version 1's TTL wrapped 2150 round to 2013 and dropped it.
    assert contents["extremes"] == [["far-future-0001", "2199-12-31 23:59:59.999", str(MAX)],
                                    ["far-future-0002", "2150-06-01 00:00:00.000", "0"]]
    assert [int(line) for line, _, _ in contents["rejected"]] == [line for line, _ in rejected]
    assert contents["rejected"][-1][2] == "2106-02-07 06:00:00"  # 2199 is past DateTime: the last hour it holds


# -- detect on Kafka ------------------------------------------------------------------------------------


def site_key(line: bytes) -> bytes:
    """What a record is keyed by: its site (an unreadable line, nested arrays included, under a fixed key)."""
    try:
        return key_of(line.decode("utf-8"))
    except (UnicodeError, RecursionError):
        return b"unreadable"


def produce_raw(broker: Broker, topic: str, lines: list[bytes]) -> list[tuple[int, int]]:
    """Produce each line keyed by its site; their (partition, offset)."""
    return produce(broker.producer(), topic, [(site_key(line), line) for line in lines])


@pytest.mark.broker
@pytest.mark.process
@pytest.mark.slow
def test_detect_reports_poison_records_stores_the_rest_and_a_restart_goes_on(broker: Broker, tmp_path: Path) -> None:
    signals, alerts = unique_topic("signals"), unique_topic("alerts")
    broker.create_topics([signals, alerts], partitions=2)
    lines, reasons = poisoned()
    expected = replay(str(write(tmp_path / "all.jsonl", lines)), load_rules(RULES).enabled_rules)
    positions = produce_raw(broker, signals, lines)
    store, recovery = tmp_path / "store", tmp_path / "recovery"
    args = ("--topic", signals, "--alerts-topic", alerts, "--store", f"chdb://{store}", "--recovery-dir", str(recovery),
            "--epoch-interval", "1s", "--exit-at-end")

    returncode, detect = run_detect(broker, *args)
    assert returncode == 0, "\n".join(detect.lines[-20:])
    assert not any("Traceback" in line or "panicked" in line for line in detect.lines)
    found = detect.rejects()
    for line, reason in reasons.items():
        assert found[positions[line - 1]].startswith(reason), (positions[line - 1], found[positions[line - 1]])
    assert found.keys() == expected_rejects(expected, positions).keys()
    got = sorted(record.value.decode() for record in notifications(broker, alerts) if record.value)
    assert got == sorted(expected.alerts) and len(got) > 20
    ticks = sum(1 for line in lines if b'"type":"tick"' in line)
    contents = stored(store)
    assert contents["signals"] == [[str(expected.valid - ticks - 1)]]  # all but the 1970 one (retention)
    assert contents["extremes"][0] == ["far-future-0001", "2199-12-31 23:59:59.999", str(MAX)]
    assert len(contents["rejected"]) == len(found)

    # The same poison once more after a restart on the same recovery directory: reported, and the run goes on.
    again_lines = [raw for raw, _ in POISON] + [line.encode() for line in EXTREMES]
    again_positions = produce_raw(broker, signals, again_lines)
    returncode, again = run_detect(broker, *args)
    assert returncode == 0, "\n".join(again.lines[-20:])
    assert again.rejects().keys() == set(again_positions[: len(POISON)])
    # One late: the 2150 signal, behind its site's clock (2199) as in the first run.
    assert again.lines[-1] == f"detect reached the end of the topic: {len(EXTREMES)} signals, {len(POISON)} invalid, 1 late"
