"""Replay benchmark: the validation floor, the real flow, memory per fingerprint.

Run from the repository root::

    .venv/bin/python bench/replay.py [--signals 500000] [--sites 1000] [--duration 9000]

Every number printed is measured in the same run, on a corpus generated into
a temporary directory by :mod:`simulate.corpus`:

(a) the floor: lines/s of bare ``SIGNAL_ADAPTER.validate_json`` over every line,
    and of bare ``json.loads`` (the floor the per-core goal is stated against);
(b) the full replay (``flows.replay.replay``) with the default rule pack and
    one worker, and its ratio to the floors;
(c) peak RSS (``ru_maxrss``) of each replay, each run in a fresh child process
    so that the corpus generator and the floor do not count;
(d) memory per live fingerprint: ≥ 100k live fingerprints per kind in
    :class:`RuleRunner` objects, measured with ``tracemalloc``;
(e) the replay at a few chunk sizes (``chunk_lines``), and the fastest.

Two mixes of the same generator (``--mixes``): ``ticks``, the corpus of
``--sites`` sites, where a gateway tick per site every 10 s makes about two
thirds of the lines (ticks are the cheapest records, which flatters the
ratio), and ``mixed``, as many signals over fewer sites so that ticks are a
quarter of the lines (as in a deployment whose sites are busier). (a) and (b)
are measured for both; (c)–(e) for the first.

Wall time is what a user waits; CPU time (``time.process_time``) is also shown
because a shared machine can steal the CPU from a single-threaded run, and
ratios of CPU times are the steadier comparison.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import operators
from bench.children import child_generate, run_script
from flows.sources import DEFAULT_CHUNK_LINES
from operators.compiled import compile_rule
from operators.engine import RuleRunner
from operators.notification import Notification
from schemas.factory import identity_hash, make_signal, signal_line
from schemas.records import parse_record
from schemas.rule_loader import load_rules
from schemas.rules import Rule
from schemas.signals import SIGNAL_ADAPTER
from simulate.corpus import DEFAULT_DURATION_S

BENCH_DURATION_S = 9000  # 2.5 h of event time: long enough for every rule of the default pack to fire
TARGET_RATIO, GOAL_RATIO, TARGET_FP_BYTES = 0.3, 0.5, 2048


# -- children ------------------------------------------------------------------------------------------
def child_replay(path: str, rules_dir: str, chunk: int, workers: int) -> dict[str, Any]:
    """One replay in this (fresh) process: times, peak RSS, totals, and a digest of the output."""
    from flows.replay import replay

    rules = load_rules(rules_dir).enabled_rules
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = replay(path, rules, workers=workers, chunk_lines=chunk)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    by_rule = Counter(json.loads(line)["rule"]["id"] for line in result.alerts)
    digest = hashlib.sha256("\n".join(result.alerts).encode()).hexdigest()
    return {
        "wall": wall, "cpu": cpu, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "valid": result.valid, "invalid": len(result.rejects), "late": len(result.late_lines),
        "alerts": len(result.alerts), "by_rule": dict(by_rule), "digest": digest,
    }


def _rule(kind: str, **fields: Any) -> Rule:
    base = {"id": f"bench-{kind}", "title": f"bench {kind}", "severity": "low", "subsystem": "bench", "kind": kind,
            "max_groups": 100_000, "suppress": "1h"}
    return Rule.model_validate({**base, **fields})


# One rule per kind whose fingerprints stay live for the whole measurement (long windows, high counts).
FINGERPRINT_RULES: dict[str, tuple[Rule, str]] = {
    "threshold": (_rule("threshold", signal="request", group_by=["path"], threshold={"count": 1000, "window": "1h"}), "request"),
    "ratio": (_rule("ratio", signal="request", group_by=["path"], where={"status": {"gte": 500}},
                    ratio={"at_least": 0.9, "min_total": 1000, "window": "1h"}), "request"),
    "distinct": (_rule("distinct", signal="auth", group_by=["source"], where={"outcome": "failure"},
                       distinct={"field": "user_hash", "count": 1000, "window": "1h"}), "auth"),
    "absence": (_rule("absence", signal="cron", group_by=["job"], absence={"after": "2h"}), "cron"),
    "shift": (_rule("shift", signal="request", group_by=["path"],
                    shift={"window": "10m", "baseline": "1h", "factor": 3, "min_count": 1000}), "request"),
    "match": (_rule("match", signal="request", group_by=["path"]), "request"),
}


def _payload(signal_type: str, group: int, number: int) -> dict[str, Any]:
    if signal_type == "request":
        return {"method": "GET", "path": f"/p/{group}", "route_group": "frontend", "status": 503 if number % 2 else 200,
                "duration_ms": 40 + number % 100}
    if signal_type == "auth":
        return {"outcome": "failure", "method": "xmlrpc", "user_hash": identity_hash(f"u{number}", "bench"),
                "user_len": 8, "source": f"10.{group // 65536}.{group // 256 % 256}.{group % 256}/32"}
    return {"job": f"job/{group}", "event": "finished", "duration_ms": number % 1000}


def _lines(signal_type: str, groups: int, per_group: int) -> Iterator[bytes]:
    """``per_group`` signals for each of ``groups`` group values, 1 ms apart, built lazily."""
    start = 1_795_824_000_000
    number = 0
    for round_ in range(per_group):
        for group in range(groups):
            ts = start + number
            envelope = make_signal("bench", signal_type, ts, f"sig-{number:010d}", **_payload(signal_type, group, round_))
            yield signal_line(envelope).encode()
            number += 1


def child_fingerprints(groups: int, per_group: int, kinds: list[str]) -> dict[str, Any]:
    """Bytes per live fingerprint per kind: tracemalloc's current size over the live fingerprints."""
    results: dict[str, Any] = {}
    for kind in kinds:
        rule, signal_type = FINGERPRINT_RULES[kind]
        compiled = compile_rule(rule)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        runner = RuleRunner(compiled, "bench")
        out: list[Notification] = []
        for line, raw in enumerate(_lines(signal_type, groups, per_group), start=1):
            record = parse_record(raw, line)
            assert not isinstance(record, str), record
            runner.process(record, out)
            out.clear()  # notifications are output, not fingerprint state
        del record, raw
        gc.collect()
        current = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        live = len(runner.fps)
        results[kind] = {"live": live, "bytes": current, "per_fp": current / max(live, 1)}
        del runner
    return results


# -- parent --------------------------------------------------------------------------------------------
def run_child(*args: str) -> dict[str, Any]:
    """Run this script in a fresh interpreter and return the JSON it prints."""
    return run_script(__file__, *args)




def child_floor(path: str, repeat: int) -> dict[str, Any]:
    """Best wall and CPU seconds of bare validation, and of bare ``json.loads``, over every line (held in memory)."""
    validate = SIGNAL_ADAPTER.validate_json
    lines = Path(path).read_bytes().splitlines()
    result: dict[str, Any] = {"lines": len(lines)}
    for name, parse, errors in (("validate", validate, ValidationError), ("json", json.loads, ValueError)):
        best_wall = best_cpu = float("inf")
        for _ in range(repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            for raw in lines:
                if raw:
                    try:  # noqa: SIM105 - contextlib.suppress would add its own cost to the floor
                        parse(raw)
                    except errors:
                        pass
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        result[name] = {"wall": best_wall, "cpu": best_cpu}
    return result


def mixed_sites(signals: int, duration: int) -> int:
    """How many sites make ticks (one per site every 10 s) a quarter of the lines: ticks = signals / 3."""
    return max(1, round(signals / 3 / (duration / 10)))


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=500_000, help="site signal lines (ticks come on top)")
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=BENCH_DURATION_S,
                        help=f"seconds of event time (simulate.corpus default {DEFAULT_DURATION_S})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rules", default="rules", help="rules directory (default: the default pack in rules/)")
    parser.add_argument("--chunks", default=f"{DEFAULT_CHUNK_LINES},500,10000,50000", help="chunk sizes; the first is (b)")
    parser.add_argument("--fingerprints", type=int, default=100_000, help="live fingerprints per kind for (d)")
    parser.add_argument("--mixes", default="ticks,mixed",
                        help="corpora: ticks (--sites sites, ticks ~2/3 of the lines), mixed (ticks 1/4); the first gets (c)-(e)")
    parser.add_argument("--child-generate", nargs=5, metavar=("PATH", "SIGNALS", "SITES", "SEED", "DURATION"), help=argparse.SUPPRESS)
    parser.add_argument("--child-floor", nargs=2, metavar=("PATH", "REPEAT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-replay", nargs=4, metavar=("PATH", "RULES", "CHUNK", "WORKERS"), help=argparse.SUPPRESS)
    parser.add_argument("--child-fingerprints", nargs=3, metavar=("GROUPS", "PER_GROUP", "KINDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_generate:
        path, *numbers = args.child_generate
        print(json.dumps(child_generate(path, *map(int, numbers))))
        return 0
    if args.child_floor:
        print(json.dumps(child_floor(args.child_floor[0], int(args.child_floor[1]))))
        return 0
    if args.child_replay:
        path, rules_dir, chunk, workers = args.child_replay
        print(json.dumps(child_replay(path, rules_dir, int(chunk), int(workers))))
        return 0
    if args.child_fingerprints:
        groups, per_group, kinds = args.child_fingerprints
        print(json.dumps(child_fingerprints(int(groups), int(per_group), kinds.split(","))))
        return 0

    rules = load_rules(args.rules).enabled_rules
    if not rules:
        parser.error(f"{args.rules}: no enabled rules to replay")
    chunks = [int(size) for size in args.chunks.split(",")]
    kinds = Counter(rule.kind for rule in rules)
    print(f"Logystera replay benchmark: {args.signals:,} signals, {args.sites:,} sites, "
          f"{args.duration:,} s of event time, seed {args.seed}")
    print(f"rules: {len(rules)} enabled from {args.rules}/ ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); "
          f"engine {'compiled (mypyc)' if operators.NATIVE else 'pure Python'} (LOGYSTERA_PURE_PYTHON=1 forces pure Python)")

    mixes = args.mixes.split(",")
    if not mixes or any(mix not in ("ticks", "mixed") for mix in mixes):
        parser.error("--mixes: a comma-separated list of ticks and mixed")
    with tempfile.TemporaryDirectory(prefix="logystera-bench-") as tmp:
        # Children load the rules from a snapshot, so an edit of rules/ during the run cannot skew it.
        rules_dir = str(Path(tmp) / "rules")
        shutil.copytree(args.rules, rules_dir)
        measured: dict[str, tuple[int, dict[str, Any], list[tuple[int, dict[str, Any]]]]] = {}
        for position, mix in enumerate(mixes):
            sites = args.sites if mix == "ticks" else mixed_sites(args.signals, args.duration)
            path = Path(tmp) / f"corpus-{mix}.jsonl"
            # Every measurement runs in a child, and the parent stays small: on Linux a child's ru_maxrss
            # starts from its parent's peak at fork, which would otherwise hide the replay's own peak.
            made = run_child("--child-generate", str(path), str(args.signals), str(sites), str(args.seed), str(args.duration))
            lines, generated = made["lines"], made["seconds"]
            ticks = lines - args.signals
            print(f"corpus {mix!r}: {lines:,} lines ({ticks:,} ticks = {ticks / lines:.0%}, {args.signals:,} signal lines, "
                  f"{sites:,} sites), {path.stat().st_size / 2**20:,.1f} MiB, generated in {generated:.1f} s")
            print(f"running {mix}: floor, replays (one child process each) ...", file=sys.stderr, flush=True)
            floor = run_child("--child-floor", str(path), "2")
            runs: list[tuple[int, dict[str, Any]]] = []
            for chunk in chunks if position == 0 else chunks[:1]:
                run = run_child("--child-replay", str(path), rules_dir, str(chunk), "1")
                runs.append((chunk, run))
                print(f"  replay chunk_lines={chunk}: {run['wall']:.1f} s", file=sys.stderr, flush=True)
            measured[mix] = (lines, floor, runs)
            path.unlink()
        fingerprints = run_child("--child-fingerprints", str(args.fingerprints), "1", ",".join(FINGERPRINT_RULES))
        full_ring = run_child("--child-fingerprints", str(args.fingerprints // 10), "10", "threshold")

    head = (f"{'measurement':<52} {'wall s':>8} {'cpu s':>8} {'lines/s wall':>13} {'lines/s cpu':>12} "
            f"{'× valid. cpu':>12} {'× json cpu':>10} {'peak RSS':>9}")
    ratios: dict[str, float] = {}
    for mix, (count, floor, runs) in measured.items():
        validate_cpu_rate, json_cpu_rate = count / floor["validate"]["cpu"], count / floor["json"]["cpu"]
        print()
        print(f"corpus {mix!r}:")
        print(head)
        print("-" * len(head))
        for name, label in (("validate", "(a) floor: SIGNAL_ADAPTER.validate_json"), ("json", "(a) floor: json.loads")):
            wall, cpu = floor[name]["wall"], floor[name]["cpu"]
            print(f"{label:<52} {wall:>8.2f} {cpu:>8.2f} {fmt_int(count / wall):>13} {fmt_int(count / cpu):>12} "
                  f"{count / cpu / validate_cpu_rate:>12.2f} {count / cpu / json_cpu_rate:>10.2f} {'':>9}")
        for index, (chunk, run) in enumerate(runs):
            label = f"({'b' if index == 0 else 'e'}) replay, 1 worker, chunk_lines={chunk}"
            rate, cpu_rate = count / run["wall"], count / run["cpu"]
            print(f"{label:<52} {run['wall']:>8.2f} {run['cpu']:>8.2f} {fmt_int(rate):>13} {fmt_int(cpu_rate):>12} "
                  f"{cpu_rate / validate_cpu_rate:>12.2f} {cpu_rate / json_cpu_rate:>10.2f} {run['maxrss_kb'] / 1024:>7.0f}MB")
        ratios[mix] = count / runs[0][1]["cpu"] / json_cpu_rate
    count, floor, runs = measured[mixes[0]]
    floor_cpu_rate = count / floor["validate"]["cpu"]
    fastest_chunk, fastest = min(runs, key=lambda item: item[1]["cpu"])
    print(f"(e) fastest chunk size (by CPU time, corpus {mixes[0]!r}): chunk_lines={fastest_chunk} "
          f"({count / fastest['cpu']:,.0f} lines/s cpu, {count / fastest['cpu'] / floor_cpu_rate:.2f}× validation floor)")
    print(f"(c) peak RSS of the replay (ru_maxrss of its child process): {max(run['maxrss_kb'] for _, run in runs) / 1024:,.0f} MB max "
          f"over the chunk sizes; bench parent {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{load:.2f}' for load in os.getloadavg())} on {os.cpu_count()} CPUs")

    print()
    print(f"{'(d) memory per live fingerprint (tracemalloc)':<48} {'live fps':>10} {'bytes':>14} {'bytes/fp':>10}")
    for kind, data in fingerprints.items():
        print(f"    {kind + ' (1 signal per fingerprint)':<44} {data['live']:>10,} {data['bytes']:>14,} {data['per_fp']:>10,.0f}")
    ring = full_ring["threshold"]
    print(f"    {'threshold, full evidence ring (10 per fp)':<44} {ring['live']:>10,} {ring['bytes']:>14,} {ring['per_fp']:>10,.0f}")

    first = runs[0][1]
    differ = [chunk for chunk, run in runs if run["digest"] != first["digest"]]
    same = not differ
    print()
    print(f"replay totals: {first['valid']:,} valid, {first['invalid']:,} invalid, {first['late']:,} late; "
          f"{first['alerts']:,} notifications; identical output for every chunk size: "
          f"{'yes' if same else 'NO, differs for chunk_lines=' + ','.join(map(str, differ))}")
    fired = ", ".join(f"{rule_id} {n}" for rule_id, n in sorted(first["by_rule"].items()))
    silent = sorted(rule.id for rule in rules if rule.id not in first["by_rule"])
    print(f"notifications per rule: {fired}")
    if silent:
        print(f"rules that never fired: {', '.join(silent)}")

    best_ratio = max(count / run["cpu"] for _, run in runs) / floor_cpu_rate
    worst_fp = max(data["per_fp"] for data in fingerprints.values())
    verdict = "PASS" if best_ratio >= TARGET_RATIO else "FAIL"
    print()
    print(f"acceptance: replay ≥ {TARGET_RATIO}× validation floor: {verdict} (best {best_ratio:.2f}× by CPU time, corpus {mixes[0]!r})")
    for mix, ratio in ratios.items():
        print(f"goal: replay ≥ {GOAL_RATIO}× the json.loads floor by CPU time, corpus {mix!r}: "
              f"{'PASS' if ratio >= GOAL_RATIO else 'FAIL'} ({ratio:.2f}×)")
    print(f"acceptance: memory per live fingerprint ≤ {TARGET_FP_BYTES} B: {'PASS' if worst_fp <= TARGET_FP_BYTES else 'FAIL'} "
          f"(worst kind {worst_fp:,.0f} B with one signal per fingerprint; {ring['per_fp']:,.0f} B with a full 10-signal evidence ring)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
