"""Replay exchanges raw lines between workers: each is validated once, by the shard owning its site (flows/detect.py).

Lines the cheap routing look-up cannot settle (the site key spaced, escaped,
repeated, or inside ``data``), rejected lines with and without a ``ts``
of their own and lines over the limit of a line, in chunks of a few lines spread over three shards, must give
exactly what one worker reading one chunk gives: notifications, rejected
lines in line order, totals, and every store row — rejected lines attributed
to the latest valid ``ts`` before them in the file, whichever shard had it.
"""

from __future__ import annotations

import json
from pathlib import Path
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.detect import RejectRow, ValidTimes, finish_rejected
from flows.replay import ReplayResult, replay
from schemas.lines import MAX_SIGNAL_LINE_BYTES, overlong
from schemas.rule_loader import load_rules
from schemas.store import rejected_row
from simulate.corpus import generate_corpus
from sinks.clickhouse import Store
from tests.support.store import database_name

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules")


def tricky_corpus(path: Path) -> None:
    """A small corpus over two hours with, every 40 lines, the variants of a valid line that the routing look-up leaves
    to a parse, and lines without a ``ts`` just after valid lines early in an hour (attributed to it, not the one before)."""
    lines: list[str] = []
    for number, line in enumerate(generate_corpus(3000, 3, seed=21, duration_s=7200)):
        lines.append(line)
        try:
            signal = json.loads(line)
        except ValueError:
            continue
        if not isinstance(signal, dict):
            continue
        without_ts = json.dumps({key: value for key, value in signal.items() if key != "ts"})
        if str(signal.get("ts"))[14:16] == "00":  # early in an hour: attributed to it only if this line's ts is seen
            lines.append(without_ts)
        if number % 40 != 3:
            continue
        compact = json.dumps(signal, separators=(",", ":"))
        lines += [
            json.dumps(signal),  # valid, spaced: routed after a parse on the reader
            compact.replace('"site":', '"\\u0073ite":').replace(signal["id"], signal["id"][:-3] + "esc"),  # valid
            compact.replace('"site":', '"site":"zz","site":'),  # a repeated key: rejected
            compact.replace('"data":{', '"data":{"site":"elsewhere",'),  # routed by the look-up, rejected
            without_ts,  # attributed to the latest valid ts before it
            "",
            "{not json",
            compact + " " * MAX_SIGNAL_LINE_BYTES,  # valid but for its length: over the limit of a line, never read whole
        ]
    path.write_text("\n".join(lines) + "\n")


def run(path: Path, store: Store, workers: int, chunk_lines: int) -> tuple[ReplayResult, list[tuple[object, ...]]]:
    result = replay(str(path), RULES.rules, workers=workers, chunk_lines=chunk_lines, store=store,
                    metrics=RULES.metrics, source="tricky.jsonl")
    rows = [(table, *row) for table in ("signals", "rejected", "metrics", "alerts")
            for row in store.query(f"SELECT * FROM {store.database}.{table} ORDER BY ALL").result_rows]
    return result, rows


def test_three_shards_on_chunks_of_seven_lines_give_what_one_worker_gives(tmp_path: Path, chdb_dir: Path) -> None:
    path = tmp_path / "tricky.jsonl"
    tricky_corpus(path)
    one = Store.open(f"chdb://{chdb_dir}?database={database_name('lines_one')}")
    three = Store.open(f"chdb://{chdb_dir}?database={database_name('lines_three')}")
    expected, expected_rows = run(path, one, 1, 10_000)
    got, rows = run(path, three, 3, 7)
    assert (got.alerts, got.rejects, got.totals_line) == (expected.alerts, expected.rejects, expected.totals_line)
    assert rows == expected_rows
    reasons = [reason for _, reason in expected.rejects]
    assert any(reason.startswith("site: key given more than once") for reason in reasons), reasons
    assert any(reason.startswith("data.site") for reason in reasons), reasons
    too_long = sum(len(line) >= MAX_SIGNAL_LINE_BYTES for line in path.read_bytes().splitlines())
    assert too_long > 100 and reasons.count(overlong(MAX_SIGNAL_LINE_BYTES)) == too_long
    assert expected.valid > 3000 and len([row for row in rows if row[0] == "rejected"]) == expected.invalid


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["part 0", "part 1", "part 2", "rejected", "rejected with ts"]),
                          st.integers(0, 2**40)), max_size=60),
       st.integers(0, 2**40), st.randoms(use_true_random=False))
def test_a_rejected_line_without_a_ts_gets_the_latest_valid_ts_before_it_in_any_part(
    lines: list[tuple[str, int]], before_chunk: int, order: Random,
) -> None:
    """``finish_rejected`` against its definition: the latest valid ``ts`` on an earlier line, in whichever part it is."""
    times: list[ValidTimes] = [([], []), ([], []), ([], [])]
    rows: list[RejectRow] = []
    for number, (kind, ts) in enumerate(lines, 1):
        if kind.startswith("part"):
            part = times[int(kind[-1])]
            part[0].append(number)
            part[1].append(ts)
        else:
            rows.append((number, "shop", "invalid JSON", ts if kind == "rejected with ts" else None))
    order.shuffle(rows)  # the live flow's rows need not be in line order
    expected = []
    for number, _, reason, ts in rows:
        valid_before = [stamp for line, (kind, stamp) in enumerate(lines, 1) if kind.startswith("part") and line < number]
        at = ts if ts is not None else max([before_chunk, *valid_before])
        expected.append(rejected_row("in.jsonl", number, "shop", reason, at))
    assert finish_rejected("in.jsonl", rows, before_chunk, times) == expected
