"""Snapshot benchmark: bytes and CPU per site of the recovery snapshots ``logystera detect`` writes.

Run from the repository root::

    .venv/bin/python bench/snapshot.py [--signals 500000] [--sites 1000] [--duration 9000]

On a corpus from :mod:`simulate.corpus` (the replay benchmark's by default), one
:class:`SiteDetector` per site with the default rule pack and metrics is fed
the stream; at a few points every site is snapshotted with
:class:`operators.snapshot.SnapshotCodec` (what Bytewax stores per touched
site at each epoch's end) and restored. Printed per point: snapshot bytes per
site (mean, median, p99, max, total) and CPU µs per site to dump and to load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from operators.metrics import compile_metric
from operators.routing import RoutingTable
from operators.site import SiteDetector
from operators.snapshot import SnapshotCodec
from schemas.records import parse_lines
from schemas.rule_loader import load_rules
from simulate.corpus import generate_corpus

RULES_DIR = Path(__file__).resolve().parents[1] / "rules"
LATENESS = 60_000


def measure(codec: SnapshotCodec, detectors: dict[str, SiteDetector]) -> dict[str, Any]:
    started = time.process_time()
    blobs = [codec.dump(detector) for detector in detectors.values()]
    dumped = time.process_time() - started
    started = time.process_time()
    for blob in blobs:
        codec.load(blob)
    loaded = time.process_time() - started
    sizes = sorted(map(len, blobs))
    return {
        "sites": len(sizes), "mean": statistics.fmean(sizes), "median": sizes[len(sizes) // 2],
        "p99": sizes[int(len(sizes) * 0.99)], "max": sizes[-1], "total": sum(sizes),
        "dump_us": dumped / len(sizes) * 1e6, "load_us": loaded / len(sizes) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=500_000)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=9000, help="seconds of event time")
    args = parser.parse_args()
    ruleset = load_rules(RULES_DIR)
    table = RoutingTable(ruleset.enabled_rules)
    pairs = [(metric, compile_metric(metric)) for metric in ruleset.metrics]
    codec = SnapshotCodec(table, LATENESS, pairs)
    metrics = [compiled for _, compiled in pairs]
    lines = [(number, line.encode()) for number, line in enumerate(generate_corpus(args.signals, args.sites, 1, args.duration), 1)]
    records = parse_lines(lines)[0]
    print(f"corpus: {len(lines)} lines ({args.signals} signals + ticks), {args.sites} sites, {args.duration} s; "
          f"{len(table.rules)} rules, {len(metrics)} metrics")
    detectors: dict[str, SiteDetector] = {}
    out: list[Any] = []
    points: list[Any] = []
    done = 0
    for share in (0.25, 0.5, 1.0):
        upto = int(len(records) * share)
        for record in records[done:upto]:
            detector = detectors.get(record.site)
            if detector is None:
                detector = detectors[record.site] = SiteDetector(table, record.site, LATENESS, metrics)
            detector.process(record, out, points)
        done = upto
        found = measure(codec, detectors)
        print(f"after {share:4.0%} of the stream: {found['sites']} sites, bytes per site mean {found['mean']:.0f} "
              f"median {found['median']} p99 {found['p99']} max {found['max']}, all sites {found['total'] / 1e6:.1f} MB; "
              f"dump {found['dump_us']:.0f} µs/site, load {found['load_us']:.0f} µs/site (CPU)")


if __name__ == "__main__":
    main()
