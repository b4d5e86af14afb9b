"""The live path's store sink (sinks/clickhouse.py ``EpochStoreSink``) on a real chDB store.

Two promises: rows are written once they are ``max_delay`` old even when no
further item arrives (a thread checks, since a quiet live stream calls
nothing), and every buffered row is written when Bytewax ends an epoch
(``snapshot``), so an epoch recovery counts as done is in the store. chDB
opens one data directory per process, so the sink runs in a child process
with a directory of its own and reports what it saw; its clock is a
hand-moved one, and every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, threading, time
from simulate.corpus import generate_corpus
from schemas.records import parse_lines
from schemas.store import rejected_row, signal_rows
from sinks.clickhouse import EpochStoreSink, Store, StoreSink


class HandClock:
    # The sink's clock: moved by hand; counts how often the periodic flusher has looked at it.
    def __init__(self):
        self.now, self.reads, self.changed = 0.0, 0, threading.Condition()

    def __call__(self):
        with self.changed:
            self.reads += 1
            self.changed.notify_all()
            return self.now

    def wait_reads(self, more):
        with self.changed:
            target = self.reads + more
            assert self.changed.wait_for(lambda: self.reads >= target, timeout=30), "the flusher stopped reading the clock"


def count(store, table):
    return store.query(f"SELECT count() FROM {store.database}.{table}").result_rows[0][0]


def poll(what, condition):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within 30 s"
        time.sleep(0.02)


store = Store.open("chdb://" + sys.argv[1])
clock = HandClock()
sink = EpochStoreSink(StoreSink(store, batch_rows=1000, max_delay=2.0, clock=clock), flush_every=0.01)
seen = {"parts": sink.list_parts(), "routes": {table: sink.list_parts()[sink.part_fn(table)] for table in ("signals", "rejected")}}

rejected = sink.build_part("store", "rejected", None)
rejected.write_batch([[rejected_row("kafka:signals", 7, "shop-a", "not a JSON object", 1795824000000)],
                      [rejected_row("kafka:signals", 10**12 + 3, "", "not valid JSON", 1795824000000)]])
clock.wait_reads(5)  # the flusher looked five times: the rows are only 0 s old
seen["rejected_before_max_delay"] = count(store, "rejected")
clock.now = 2.0  # no more items: only the flusher can write them now
poll("periodic flush", lambda: count(store, "rejected") == 2)
seen["rejected_after_max_delay"] = count(store, "rejected")

records = parse_lines([(n, line.encode()) for n, line in enumerate(generate_corpus(1000, 2, seed=3, duration_s=600), 1)])[0]
rows = signal_rows(records)
signals = sink.build_part("store", "signals", None)
signals.write_batch([rows])
clock.wait_reads(5)
seen["signals_rows"] = len(rows)
seen["signals_before_epoch_end"] = count(store, "signals")
signals.snapshot()  # Bytewax ends the epoch
seen["signals_at_epoch_end"] = count(store, "signals")
rejected.close()
signals.close()
print(json.dumps(seen))
"""


@pytest.mark.process
def test_rows_are_written_when_max_delay_old_without_new_items_and_all_at_each_epochs_end(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "store")], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["parts"] == ["alerts", "deliveries", "evidence", "metrics", "rejected", "signals"]
    assert seen["routes"] == {"signals": "signals", "rejected": "rejected"}  # one partition, one writer, per table
    assert (seen["rejected_before_max_delay"], seen["rejected_after_max_delay"]) == (0, 2)
    assert seen["signals_rows"] > 100
    assert (seen["signals_before_epoch_end"], seen["signals_at_epoch_end"]) == (0, seen["signals_rows"])
