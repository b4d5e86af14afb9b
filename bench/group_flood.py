"""Group-flood benchmark: new group values past ``max_groups`` against the same signals under a high cap.

Run from the repository root::

    .venv/bin/python bench/group_flood.py [--values 40000] [--caps 1000,100000] [--repeat 3]

A botnet failing logins from thousands of network prefixes: one site gets
``cap + values`` failed-login signals (the first cap of the lowest ``--caps`` fills
the rules' groups, the ``values`` after it are new group values past that cap),
each from a new ``source``, 50 ms apart (so the oldest groups of the 10-minute
rules are forgotten while the flood goes on), with a gateway tick every second.
They run through the default rule pack (every enabled rule, ``max_groups`` set
to each cap in turn: ``credential-stuffing`` and ``auth-behaviour-shifted`` group
by ``source``) in two ways:

(a) the engine alone: :class:`operators.site.SiteDetector` over the parsed records;
(b) the real replay path: ``flows.replay.replay`` over the lines in a file, one worker.

Printed per cap: the best wall and CPU seconds of ``--repeat`` runs, signals
per CPU second, the notifications, and the groups the two source rules hold
at the end; then each cap's CPU time relative to the highest cap's. The
acceptance of issue 9 item 4: the lowest cap within ~3× the highest.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import tempfile
import time
from pathlib import Path

from flows.replay import replay
from operators.notification import Notification
from operators.routing import RoutingTable
from operators.site import SiteDetector
from schemas.factory import identity_hash, make_signal, make_tick, signal_line
from schemas.records import Record, parse_record
from schemas.rule_loader import load_rules
from schemas.rules import Rule

START_MS = 1_795_824_000_000
SPACING_MS = 50
SITE = "flooded.example"
SOURCE_RULES = ("credential-stuffing", "auth-behaviour-shifted")
TARGET_RATIO = 3.0


def flood_lines(signals: int) -> list[bytes]:
    """``signals`` failed logins, each from a new ``/32`` source, with a tick at every second boundary."""
    lines: list[bytes] = []
    next_tick = START_MS
    for number in range(signals):
        ts = START_MS + number * SPACING_MS
        while next_tick <= ts:
            lines.append(signal_line(make_tick(SITE, next_tick)).encode())
            next_tick += 1000
        source = f"10.{number // 65536}.{number // 256 % 256}.{number % 256}/32"
        envelope = make_signal(SITE, "auth", ts, f"flood-{number:08d}", outcome="failure", method="xmlrpc",
                               user_hash=identity_hash(f"user{number % 500}", "bench"), user_len=8, source=source)
        lines.append(signal_line(envelope).encode())
    return lines


def capped(rules: list[Rule], cap: int) -> list[Rule]:
    """The rules with ``max_groups`` set to ``cap`` (within the 1–100000 the schema allows)."""
    assert 1 <= cap <= 100_000, cap
    return [rule.model_copy(update={"max_groups": cap}) for rule in rules]


def run_engine(rules: list[Rule], records: list[Record]) -> tuple[float, float, list[Notification], dict[str, int]]:
    """Wall and CPU seconds of one SiteDetector over the records; its notifications; groups held per source rule."""
    detector = SiteDetector(RoutingTable(rules), SITE)
    out: list[Notification] = []
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    detector.process_all(records, out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    held = {runner.rule.id: len(runner.fps) for runner in detector.runners if runner.rule.id in SOURCE_RULES}
    return wall, cpu, out, held


def run_replay(rules: list[Rule], path: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of the replay path over the file; a digest of its output."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = replay(path, rules, workers=1)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, hashlib.sha256("\n".join(result.alerts).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=40_000, help="new group values past the lowest cap")
    parser.add_argument("--caps", default="1000,100000", help="max_groups values to compare (comma separated)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cap and path; the best is shown")
    parser.add_argument("--rules", default="rules", help="rules directory (default: the default pack in rules/)")
    parser.add_argument("--no-replay", action="store_true", help="measure the engine only, not the replay path")
    args = parser.parse_args(argv)

    caps = sorted(int(cap) for cap in args.caps.split(","))
    pack = load_rules(args.rules).enabled_rules
    signals = caps[0] + args.values
    lines = flood_lines(signals)
    records = [parse_record(raw, number) for number, raw in enumerate(lines, start=1)]
    assert all(isinstance(record, Record) for record in records)
    parsed: list[Record] = records  # type: ignore[assignment]  # checked just above
    print(f"Logystera group-flood benchmark: {signals:,} failed logins from as many sources "
          f"({caps[0]:,} + {args.values:,} new values), {SPACING_MS} ms apart, {len(lines) - signals:,} ticks, "
          f"{len(pack)} rules from {args.rules}/; best of {args.repeat}")

    with tempfile.TemporaryDirectory(prefix="logystera-flood-") as tmp:
        path = Path(tmp) / "flood.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        head = f"{'path':<8} {'max_groups':>10} {'wall s':>8} {'cpu s':>8} {'signals/s cpu':>14} {'notifications':>13}  groups held"
        print()
        print(head)
        print("-" * len(head))
        engine_cpu: dict[int, float] = {}
        replay_cpu: dict[int, float] = {}
        for cap in caps:
            rules = capped(pack, cap)
            best = min((run_engine(rules, parsed) for _ in range(args.repeat)), key=lambda run: run[1])
            wall, cpu, out, held = best
            engine_cpu[cap] = cpu
            groups = ", ".join(f"{rule_id} {count:,}" for rule_id, count in sorted(held.items()))
            print(f"{'engine':<8} {cap:>10,} {wall:>8.2f} {cpu:>8.2f} {signals / cpu:>14,.0f} {len(out):>13,}  {groups}")
            if not args.no_replay:
                runs = [run_replay(rules, str(path)) for _ in range(args.repeat)]
                wall, cpu, digest = min(runs, key=lambda run: run[1])
                replay_cpu[cap] = cpu
                print(f"{'replay':<8} {cap:>10,} {wall:>8.2f} {cpu:>8.2f} {signals / cpu:>14,.0f} {'':>13}  output {digest}")

    top = caps[-1]
    print()
    for cap in caps[:-1]:
        ratio = engine_cpu[cap] / engine_cpu[top]
        line = f"max_groups {cap:,} vs {top:,}: engine {ratio:.2f}× the CPU time"
        if replay_cpu:
            line += f", replay {replay_cpu[cap] / replay_cpu[top]:.2f}×"
        print(line)
    ratio = engine_cpu[caps[0]] / engine_cpu[top]
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"acceptance: {args.values:,} new values past max_groups {caps[0]:,} within {TARGET_RATIO:.0f}× "
          f"the time under {top:,} (engine, CPU): {verdict} ({ratio:.2f}×)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
