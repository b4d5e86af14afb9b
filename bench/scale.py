"""Scale-out benchmark: replay and detect with 1 and 2 processes on one corpus (docs/scaling.md).

Prints, for one generated corpus (default 500k signals over 1,000 sites,
ticks included), in each of ``--rounds`` rounds (default 3) run one after
the other so that each round's numbers are measured close together:

- the ``json.loads`` floor: every line of the file through ``json.loads``
  in one process — what no parser can beat in Python — and the same in two
  processes at once, each over the whole file: how much faster two busy
  processes get through the work than one on this machine *with no
  coordination at all*. That is the machine's own ceiling for any
  2-process speed-up (on a virtual machine two "cores" may share a physical
  core or its caches; measured here it varies between ×1.5 and ×2.0);
- ``logystera replay`` with ``--processes 1`` and ``2``: signals/s, wall and
  CPU (user + system of every process of the cluster);
- ``logystera detect --exit-at-end`` with ``--processes 1`` and ``2`` from a
  topic pre-filled with the corpus (``--partitions``, default 4, keyed by
  site as the gateway keys it), on a Tansu broker started here: signals/s
  from start to exit — the exit comes after the last notification batch is
  acknowledged by the broker — and the CPU the broker used meanwhile (it shares the cores);
- at the end, the median of the rounds for each speed-up (each round's
  ratio of its own 2-process and 1-process runs), its range, and the share
  of the machine's ceiling it reaches;
- the load average before and after: on a shared machine the numbers are
  only as good as it was quiet.

Usage: ``python bench/scale.py [--signals N] [--sites N] [--partitions N] [--rounds N] [--only replay|detect]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Producer

from bench.children import cpu_seconds
from simulate.corpus import write_corpus
from sinks.kafka_client import producer_config
from tests.support.kafka_broker import Broker, start_broker, unique_topic

LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or "logystera"
RULES = Path(__file__).resolve().parents[1] / "rules"
FLOOR = """
import json, sys
for line in open(sys.argv[1], "rb"):
    try:
        json.loads(line)
    except ValueError:
        pass
"""
"""The ``json.loads`` floor, run as a child process so that one or two copies are measured alike."""


def timed(commands: list[list[str]]) -> tuple[float, float, str]:
    """Run commands at once to completion: wall seconds, CPU seconds of them and their children, the first one's stderr's last line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    running = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for command in commands]
    errors = [process.communicate()[1] for process in running]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for command, process, error in zip(commands, running, errors, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{error[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, (errors[0].strip().splitlines() or [""])[-1]


class Rounds:
    """Every run's throughput by label, and each round's speed-ups, for the medians at the end."""

    def __init__(self) -> None:
        self.rates: dict[str, list[float]] = defaultdict(list)
        self.speedups: dict[str, list[float]] = defaultdict(list)

    def report(self, label: str, lines: int, wall: float, cpu: float, baseline: str | None = None) -> None:
        """Print one run; with ``baseline`` (the 1-process label of this round), its speed-up over it."""
        rate = lines / wall
        self.rates[label].append(rate)
        speedup = ""
        if baseline is not None:
            ratio = rate / self.rates[baseline][-1]
            self.speedups[label].append(ratio)
            speedup = f"  ×{ratio:.2f}"
        print(f"{label:<28} {rate:>10,.0f} lines/s  wall {wall:7.2f} s  cpu {cpu:7.2f} s{speedup}", flush=True)

    def summary(self) -> None:
        """The medians: each speed-up, its range over the rounds, and its share of the machine's ceiling."""
        rounds = len(self.rates[FLOOR_1])
        print(f"\nmedians of {rounds} round{'s' * (rounds > 1)}:", flush=True)
        for label, rates in self.rates.items():
            print(f"{label:<28} {statistics.median(rates):>10,.0f} lines/s", flush=True)
        ceiling = statistics.median(self.speedups[FLOOR_2])
        for label, ratios in self.speedups.items():
            share = "" if label == FLOOR_2 else f", {statistics.median(ratios) / ceiling:.0%} of the ceiling"
            print(f"  {label}: ×{statistics.median(ratios):.2f} (×{min(ratios):.2f}–×{max(ratios):.2f}{share})", flush=True)


FLOOR_1, FLOOR_2 = "json.loads floor, 1 process", "json.loads floor, 2 at once"


def measure_floor(rounds: Rounds, corpus: Path, total: int) -> None:
    """The floor in one process, then in two at once (each over the whole file: twice the lines)."""
    floor = [sys.executable, "-c", FLOOR, str(corpus)]
    wall, cpu, _ = timed([floor])
    rounds.report(FLOOR_1, total, wall, cpu)
    wall, cpu, _ = timed([floor, floor])
    rounds.report(FLOOR_2, 2 * total, wall, cpu, FLOOR_1)


def measure_replay(rounds: Rounds, corpus: Path, total: int) -> None:
    """Replay the corpus with 1 and 2 processes."""
    for processes in (1, 2):
        wall, cpu, last = timed([[LOGYSTERA, "replay", str(corpus), "--rules", str(RULES), "--processes", str(processes)]])
        rounds.report(f"replay --processes {processes}", total, wall, cpu, None if processes == 1 else "replay --processes 1")
    print(f"  ({last})", flush=True)


def fill_topic(broker: Broker, corpus: Path, partitions: int) -> str:
    """A topic of ``partitions`` partitions holding the corpus, keyed by site as the gateway keys it."""
    signals = unique_topic("signals")
    broker.create_topics([signals], partitions=partitions)
    producer = Producer(producer_config(broker.bootstrap, {"linger.ms": 50}))  # the gateway's: murmur2 by site
    with corpus.open("rb") as lines:
        for line in lines:
            try:
                key = str(json.loads(line)["site"]).encode()
            except (ValueError, KeyError, TypeError):
                key = b"unreadable"
            while True:
                try:
                    producer.produce(signals, line.rstrip(b"\n"), key)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
    producer.flush(120)
    return signals


def measure_detect(rounds: Rounds, broker: Broker, signals: str, total: int, partitions: int) -> None:
    """Detect the pre-filled topic with 1 and 2 processes, each into an alerts topic of its own."""
    for processes in (1, 2):
        alerts = unique_topic("alerts")
        broker.create_topics([alerts], partitions=partitions)
        broker_pid = broker.process.pid
        broker_before = cpu_seconds(broker_pid)
        wall, cpu, last = timed([[LOGYSTERA, "detect", "--bootstrap", broker.bootstrap, "--topic", signals,
                                  "--alerts-topic", alerts, "--rules", str(RULES), "--exit-at-end",
                                  "--processes", str(processes)]])
        rounds.report(f"detect --processes {processes}", total, wall, cpu, None if processes == 1 else "detect --processes 1")
        print(f"  (the broker meanwhile: {cpu_seconds(broker_pid) - broker_before:.2f} s CPU)", flush=True)
    print(f"  ({last})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=500_000)
    parser.add_argument("--sites", type=int, default=1_000)
    parser.add_argument("--duration", type=int, default=9_000, help="seconds of event time (ticks every 10 s per site)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement; medians at the end")
    parser.add_argument("--only", choices=("replay", "detect"), help="measure only replay or only detect (the floor is always measured)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    print(f"load before: {os.getloadavg()}  cores: {os.cpu_count()}", flush=True)
    rounds = Rounds()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work, contextlib.ExitStack() as stack:
        broker = stack.enter_context(start_broker()) if args.only != "replay" else None
        corpus = Path(work) / "signals.jsonl"
        total = write_corpus(corpus, args.signals, args.sites, seed=5, duration_s=args.duration)
        print(f"corpus: {args.signals:,} signals, {args.sites:,} sites, {total:,} lines with ticks, "
              f"{corpus.stat().st_size / 1e6:.0f} MB", flush=True)
        signals = fill_topic(broker, corpus, args.partitions) if broker is not None else ""
        for number in range(1, args.rounds + 1):
            print(f"\nround {number} (load {os.getloadavg()[0]:.2f})", flush=True)
            measure_floor(rounds, corpus, total)
            if args.only != "detect":
                measure_replay(rounds, corpus, total)
            if broker is not None:
                measure_detect(rounds, broker, signals, total, args.partitions)
    rounds.summary()
    print(f"load after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
