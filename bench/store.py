"""Store benchmark: rows/s into the embedded store through the sink, and replay with the store.

Run from the repository root::

    .venv/bin/python bench/store.py [--signals 200000] [--sites 1000] [--duration 3600] [--batches 10000,50000,100000,200000]

Every number printed is measured in the same run, on a corpus generated into
a temporary directory by :mod:`simulate.corpus` (site signals plus a gateway tick
per site every 10 s):

(a) rows/s into chDB for the ``signals`` table through the sink: the corpus is
    parsed (``parse_lines``, 10k-line chunks as the flow reads them) and turned
    into rows by ``signal_columns``, one ``("signals", rows)`` item per chunk as
    the flow emits them (and, at the default batch size, by ``signal_rows``,
    a tuple per row, for comparison); a Bytewax flow then hands those items to
    :class:`sinks.clickhouse.StoreSink` (``batch_rows`` as stated,
    ``max_delay`` default), which writes them with ``Store.insert``. The time
    is the flow's run, final flush included; row building is timed on its own.
(b) ``flows.replay.replay`` of the corpus with the default rule pack, one
    worker, without a store and with ``Store.open('chdb:///fresh dir')``
    (metrics of the rule pack included, as ``logystera replay --store`` does),
    and the ratio of their throughputs; peak RSS is the replay process's
    ``ru_maxrss`` (with the store it includes the chDB engine, ~330 MB once
    imported and opened). A third replay hands every row to a store that
    keeps nothing (chDB not loaded), which splits the store's cost into the
    Python side (metric buckets, rows, sink), the sink's writer threads
    (``Store.insert``: clickhouse-connect's encoding and chDB's work in the
    calling thread, timed there by ``time.thread_time``) and chDB's own
    threads: where the time goes.

chDB is one engine per process and one directory per engine, so every
measurement runs in a child process of its own with a fresh directory; that
also keeps each child's peak RSS and CPU time its own.

Wall time is what a user waits. CPU time (``time.process_time``) counts every
thread of the process: with the store that includes the sink's writer thread
and chDB's own threads (insert pipeline, background merges of the parts each
insert creates), which run on another core while the Python worker thread
carries on, so with the store CPU time can exceed wall time and the CPU
ratio is the stricter one. The worker thread's own CPU time (Bytewax's
worker thread, read from ``/proc``: :class:`bench.children.WorkerThreadsClock`)
is shown separately; process minus worker thread is the writer and chDB's
threads (and the main thread's wait).

Best-of-N compares each configuration's luckiest run. This machine's speed
drifts by tens of percent within a minute (the same ``json.loads`` loop
measured 0.54–0.90 s of CPU, one second apart, on an idle machine), so the
ratio of the two replays of each round, run back to back, is printed as well.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.children import WorkerThreadsClock, child_generate, run_script
from flows.sources import DEFAULT_CHUNK_LINES
from schemas.rule_loader import load_rules
from sinks.clickhouse import StoreAddress

TARGET_ROWS_PER_S, TARGET_RATIO = 300_000, 0.8
STORE_TABLES = ("signals", "alerts", "evidence", "metrics", "rejected")


# -- children ------------------------------------------------------------------------------------------
def _times() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float], workers: WorkerThreadsClock | None = None) -> dict[str, float]:
    """Wall and process CPU seconds since ``start``; with ``workers``, the flow's worker threads' CPU as ``thread``."""
    wall, cpu = _times()
    return {"wall": wall - start[0], "cpu": cpu - start[1], "thread": (workers.seconds or 0.0) if workers else 0.0}


def child_sink(path: str, directory: str, batch_rows: int, form: str) -> dict[str, Any]:
    """Signals rows of the whole corpus through a StoreSink into a fresh chDB directory.

    ``form`` is how the items carry the rows: ``columns`` (``signal_columns``, what the flow emits) or
    ``rows`` (``signal_rows``: a tuple per row).
    """
    from bytewax.dataflow import Dataflow
    from bytewax.operators import input as op_input
    from bytewax.operators import output as op_output
    from bytewax.testing import TestingSource

    from flows.cluster import ClusterShape, run_on
    from schemas.records import parse_lines
    from schemas.store import signal_columns, signal_rows
    from sinks.clickhouse import Store, StoreSink

    raws = Path(path).read_bytes().splitlines()
    chunks = [list(enumerate(raws[start:start + DEFAULT_CHUNK_LINES], start=start + 1))
              for start in range(0, len(raws), DEFAULT_CHUNK_LINES)]
    parsed = [parse_lines(chunk)[0] for chunk in chunks]
    del raws, chunks
    gc.collect()
    started = _times()
    build = signal_columns if form == "columns" else signal_rows
    items: list[tuple[str, Any]] = [("signals", build(records)) for records in parsed]
    building = _since(started)
    rows = sum(len(batch) for _, batch in items)

    store = Store.open(f"chdb://{directory}")
    inserts: list[int] = []
    insert = store.insert

    def counted(table: str, columns: Any, data: Any) -> int:
        written = insert(table, columns, data)
        inserts.append(written)
        return written

    store.insert = counted  # type: ignore[method-assign]
    flow = Dataflow("bench_store_sink")
    op_output("store", op_input("rows", flow, TestingSource(items)), StoreSink(store, batch_rows=batch_rows))
    del parsed
    gc.collect()
    started = _times()
    with WorkerThreadsClock() as workers:
        run_on(flow, ClusterShape())
    sinking = _since(started, workers)
    stored = store.query("SELECT count(), uniqExact(id) FROM signals").result_rows[0]
    return {
        "rows": rows, "build": building, "sink": sinking, "inserts": len(inserts), "stored": stored[0], "ids": stored[1],
    }


class NullStore:
    """A store that takes every insert and keeps nothing (chDB never loaded): a replay with it builds, buffers and hands
    over every row, so its time minus a replay without a store is what the rows cost in Python."""

    address = StoreAddress(kind="null")

    def insert(self, table: str, columns: Any, data: Any) -> int:
        return len(data[0])


def child_replay(path: str, rules_dir: str, directory: str) -> dict[str, Any]:
    """One replay in this (fresh) process: with a store in ``directory``, without one for ``-``, or with a
    :class:`NullStore` for ``null``. With a store, the CPU time of the sink's writer thread inside ``Store.insert``
    (clickhouse-connect's encoding, chDB's work in the calling thread) is counted as ``inserts``: process CPU would
    count the worker too, which goes on meanwhile."""
    from flows.replay import replay
    from sinks.clickhouse import Store

    ruleset = load_rules(rules_dir)
    store: Any = None
    inserts = [0.0]
    if directory == "null":
        store = NullStore()
    elif directory != "-":
        store = Store.open(f"chdb://{directory}")
        insert = store.insert

        def timed(table: str, columns: Any, data: Any) -> int:
            began = time.thread_time()  # the writer thread's
            written = insert(table, columns, data)
            inserts[0] += time.thread_time() - began
            return written

        store.insert = timed
    gc.collect()
    started = _times()
    with WorkerThreadsClock() as workers:
        result = replay(path, ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    measured = _since(started, workers)
    stored = {}
    if isinstance(store, Store):
        stored = {table: store.query(f"SELECT count() FROM {table}").result_rows[0][0] for table in STORE_TABLES}
    return {
        **measured, "inserts": inserts[0], "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "valid": result.valid, "invalid": len(result.rejects), "late": len(result.late_lines), "alerts": len(result.alerts),
        "digest": hashlib.sha256("\n".join(result.alerts).encode()).hexdigest(), "stored": stored,
    }




# -- parent --------------------------------------------------------------------------------------------
def run_child(*args: str) -> dict[str, Any]:
    """Run this script in a fresh interpreter and return the JSON it prints."""
    return run_script(__file__, *args)


def best(runs: list[dict[str, Any]], key: str) -> float:
    return min(float(run[key]) for run in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=200_000, help="site signal lines (ticks come on top)")
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=3600, help="seconds of event time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rules", default="rules", help="rules directory (default: the default pack in rules/)")
    parser.add_argument("--batches", default="10000,50000,100000,200000", help="StoreSink batch_rows values for (a)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is shown")
    parser.add_argument("--child-generate", nargs=5, metavar=("PATH", "SIGNALS", "SITES", "SEED", "DURATION"), help=argparse.SUPPRESS)
    parser.add_argument("--child-sink", nargs=4, metavar=("PATH", "DIR", "BATCH", "FORM"), help=argparse.SUPPRESS)
    parser.add_argument("--child-replay", nargs=3, metavar=("PATH", "RULES", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_generate:
        path, *numbers = args.child_generate
        print(json.dumps(child_generate(path, *map(int, numbers))))
        return 0
    if args.child_sink:
        path, directory, batch, form = args.child_sink
        print(json.dumps(child_sink(path, directory, int(batch), form)))
        return 0
    if args.child_replay:
        print(json.dumps(child_replay(*args.child_replay)))
        return 0

    from sinks.clickhouse import StoreSink

    default_batch = StoreSink.__init__.__defaults__[0]  # type: ignore[index]
    batches = [int(size) for size in args.batches.split(",")]
    if default_batch not in batches:
        batches.append(default_batch)
    rules = load_rules(args.rules)
    print(f"Logystera store benchmark: {args.signals:,} signals, {args.sites:,} sites, {args.duration:,} s of event time, "
          f"seed {args.seed}; embedded chDB; best of {args.repeat} runs, each in a fresh child process and directory")
    print(f"rules: {len(rules.enabled_rules)} enabled and {len(rules.metrics)} metrics from {args.rules}/")

    with tempfile.TemporaryDirectory(prefix="logystera-bench-store-") as tmp:
        rules_dir = str(Path(tmp) / "rules")
        shutil.copytree(args.rules, rules_dir)
        path = Path(tmp) / "corpus.jsonl"
        made = run_child("--child-generate", str(path), str(args.signals), str(args.sites), str(args.seed), str(args.duration))
        lines = made["lines"]
        ticks = lines - args.signals
        print(f"corpus: {lines:,} lines ({ticks:,} ticks = {ticks / lines:.0%}, {args.signals:,} signal lines), "
              f"{path.stat().st_size / 2**20:,.1f} MiB, generated in {made['seconds']:.1f} s")

        fresh = iter(range(1_000_000))
        load_before = os.getloadavg()[0]
        # Columns (what the flow emits) at every batch size; a tuple per row at the default one, for comparison.
        sinks = [(batch, "columns") for batch in batches] + [(default_batch, "rows")]
        sink_runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
        replay_runs: dict[str, list[dict[str, Any]]] = {"without store": [], "rows, no insert": [], "with store": []}
        for attempt in range(args.repeat):
            for batch, form in sinks:
                run = run_child("--child-sink", str(path), str(Path(tmp) / f"db{next(fresh)}"), str(batch), form)
                sink_runs.setdefault((batch, form), []).append(run)
                print(f"  [{attempt + 1}/{args.repeat}] sink batch_rows={batch} {form}: {run['sink']['wall']:.2f} s",
                      file=sys.stderr, flush=True)
            fresh_dir = str(Path(tmp) / f"db{next(fresh)}")
            for label, directory in (("without store", "-"), ("rows, no insert", "null"), ("with store", fresh_dir)):
                run = run_child("--child-replay", str(path), rules_dir, directory)
                replay_runs[label].append(run)
                print(f"  [{attempt + 1}/{args.repeat}] replay {label}: {run['wall']:.2f} s", file=sys.stderr, flush=True)
            for leftover in Path(tmp).glob("db*"):
                shutil.rmtree(leftover, ignore_errors=True)

    # (a)
    print()
    print("(a) signals rows into chDB through StoreSink → Store.insert, rows prebuilt from the parsed records, one item per 10k-line chunk")
    head = (f"    {'batch_rows':>10} {'items':<21} {'rows':>9} {'inserts':>7} {'wall s':>7} {'cpu s':>7} {'worker s':>8} "
            f"{'rows/s wall':>12} {'rows/s cpu':>11}  stored")
    print(head)
    print("    " + "-" * (len(head) - 4))
    rates: dict[int, float] = {}
    for (batch, form), runs in sink_runs.items():
        first = runs[0]
        wall = min(run["sink"]["wall"] for run in runs)
        cpu = min(run["sink"]["cpu"] for run in runs)
        thread = min(run["sink"]["thread"] for run in runs)
        rows = first["rows"]
        if form == "columns":
            rates[batch] = rows / wall
        ok = all(run["stored"] == rows and run["ids"] == rows for run in runs)
        mark = " (default)" if batch == default_batch else ""
        items = "signal_columns" if form == "columns" else "signal_rows (tuples)"
        print(f"    {batch:>10,} {items:<21} {rows:>9,} {first['inserts']:>7} {wall:>7.2f} {cpu:>7.2f} {thread:>8.2f} "
              f"{rows / wall:>12,.0f} {rows / cpu:>11,.0f}  "
              f"{'all rows, ids unique' if ok else 'MISMATCH'}{mark}")
    print("    worker s = CPU of the thread running the flow (buffering); "
          "cpu s − worker s ≈ the sink's writer thread (clickhouse-connect's encoding) and chDB's insert threads")
    rows = next(iter(sink_runs.values()))[0]["rows"]
    for form, name in (("columns", "signal_columns"), ("rows", "signal_rows")):
        build = min(run["build"]["cpu"] for (_, made), runs in sink_runs.items() if made == form for run in runs)
        print(f"    row building alone ({name} over the parsed records, not in the times above): {build:.2f} s cpu = "
              f"{rows / build:,.0f} rows/s")

    # (b)
    print()
    print("(b) replay, default rule pack, 1 worker: without a store vs with Store.open('chdb:///fresh'), metrics included")
    head = (f"    {'replay':<15} {'wall s':>7} {'cpu s':>7} {'worker s':>8} {'chDB thr s':>10} {'lines/s wall':>13} "
            f"{'lines/s cpu':>12} {'peak RSS':>9}")
    print(head)
    print("    " + "-" * (len(head) - 4))
    for label, runs in replay_runs.items():
        wall, cpu, thread = best(runs, "wall"), best(runs, "cpu"), best(runs, "thread")
        other = max(0.0, min(run["cpu"] - run["thread"] for run in runs))
        print(f"    {label:<15} {wall:>7.2f} {cpu:>7.2f} {thread:>8.2f} {other:>10.2f} {lines / wall:>13,.0f} {lines / cpu:>12,.0f} "
              f"{max(run['maxrss_kb'] for run in runs) / 1024:>7.0f}MB")
    without, null, with_store = replay_runs["without store"], replay_runs["rows, no insert"], replay_runs["with store"]
    ratio_wall = best(without, "wall") / best(with_store, "wall")
    ratio_cpu = best(without, "cpu") / best(with_store, "cpu")
    ratio_thread = best(without, "thread") / best(with_store, "thread")
    print(f"    with/without throughput: {ratio_wall:.2f}× by wall time, {ratio_cpu:.2f}× by process CPU time, "
          f"{ratio_thread:.2f}× by worker-thread CPU time")
    paired = [plain["wall"] / stored["wall"] for plain, stored in zip(without, with_store, strict=True)]
    print(f"    by wall time round by round (the two replays of a round run back to back): "
          f"{', '.join(f'{ratio:.2f}×' for ratio in paired)}; median {statistics.median(paired):.2f}×")
    chdb = max(0.0, min(run["cpu"] - run["thread"] for run in with_store))
    print(f"    process CPU includes the sink's writer thread and chDB's own threads ({chdb:.2f} s: encoding, insert pipeline, "
          "merges of the parts inserts create); the worker waits for them only when batches pile up and at the end of the run")
    # Where the time goes: each part is a difference of best-of-N process CPU times, or (inserts) measured in the writer.
    base, rows_cpu, full = best(without, "cpu"), best(null, "cpu"), best(with_store, "cpu")
    inserts = min(run["inserts"] for run in with_store)
    parts = (
        ("replay without a store", base),
        ("metric buckets, store rows, sink buffering (Python)", rows_cpu - base),
        ("inserts, in the writer thread: clickhouse-connect's encoding, chDB", inserts),
        ("the rest: chDB's own threads (insert pipeline, merges), noise", full - rows_cpu - inserts),
    )
    print("    where the CPU time of the replay with the store goes (best of each):")
    for name, seconds in parts:
        print(f"      {name:<66} {seconds:>6.2f} s  {seconds / full:>4.0%}")
    first = with_store[0]
    digests = {run["digest"] for run in without + null + with_store}
    print(f"    totals: {first['valid']:,} valid, {first['invalid']:,} invalid, {first['late']:,} late, {first['alerts']:,} notifications; "
          f"same notifications with and without the store: {'yes' if len(digests) == 1 else 'NO'}")
    counts = Counter(first["stored"])
    print("    stored: " + ", ".join(f"{table} {counts[table]:,}" for table in STORE_TABLES))

    print(f"load average (1 min) at the start / end of the measurements: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    rate = rates[default_batch]
    best_batch = max(rates, key=lambda batch: rates[batch])
    print()
    print(f"acceptance: signals into chDB through the sink ≥ {TARGET_ROWS_PER_S:,} rows/s at the default batch_rows={default_batch:,}: "
          f"{'PASS' if rate >= TARGET_ROWS_PER_S else 'FAIL'} ({rate:,.0f} rows/s by wall time, signal_columns items; "
          f"fastest batch_rows={best_batch:,}: {rates[best_batch]:,.0f} rows/s)")
    print(f"acceptance: replay with the store ≥ {TARGET_RATIO}× replay without: {'PASS' if ratio_wall >= TARGET_RATIO else 'FAIL'} "
          f"by wall time ({ratio_wall:.2f}×); {'PASS' if ratio_cpu >= TARGET_RATIO else 'FAIL'} by process CPU time ({ratio_cpu:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
