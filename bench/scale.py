"""Scale-out benchmark: replay and detect with 1 and 2 processes on one corpus (docs/scaling.md).

Prints, for one generated corpus (default 500k signals over 1,000 sites,
ticks included):

- the ``json.loads`` floor: every line of the file through ``json.loads``,
  one core — what no parser can beat in Python;
- ``logystera replay`` with ``--processes 1`` and ``2``: signals/s, wall and
  CPU (user + system of every process of the cluster);
- ``logystera detect --exit-at-end`` with ``--processes 1`` and ``2`` from a
  topic pre-filled with the corpus (``--partitions``, default 4, keyed by
  site as the gateway keys it), on a Tansu broker started here: signals/s
  from start to exit — the exit comes after the last notification batch is
  acknowledged by the broker — and the CPU the broker used meanwhile (it shares the cores);
- the load average before and after: on a shared machine the numbers are
  only as good as it was quiet.

Usage: ``python bench/scale.py [--signals N] [--sites N] [--partitions N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulate.corpus import write_corpus
from tests.support.kafka_broker import start_broker, unique_topic

LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or "logystera"
RULES = Path(__file__).resolve().parents[1] / "rules"


def timed(command: list[str]) -> tuple[float, float, str]:
    """Run a command to completion: wall seconds, CPU seconds of it and its children, its stderr's last line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stderr.strip().splitlines()[-1]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def json_floor(path: Path) -> tuple[float, int]:
    """Seconds to json.loads every line, and the line count."""
    start = time.perf_counter()
    count = 0
    with path.open("rb") as lines:
        for line in lines:
            with contextlib.suppress(ValueError):
                json.loads(line)
            count += 1
    return time.perf_counter() - start, count


def report(label: str, lines: int, wall: float, cpu: float, baseline: float | None) -> float:
    rate = lines / wall
    speedup = f"  ×{rate / baseline:.2f}" if baseline else ""
    print(f"{label:<28} {rate:>10,.0f} lines/s  wall {wall:7.2f} s  cpu {cpu:7.2f} s{speedup}", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=500_000)
    parser.add_argument("--sites", type=int, default=1_000)
    parser.add_argument("--duration", type=int, default=9_000, help="seconds of event time (ticks every 10 s per site)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--only", choices=("replay", "detect"), help="measure only replay or only detect (the floor is always measured)")
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()}  cores: {os.cpu_count()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work:
        corpus = Path(work) / "signals.jsonl"
        total = write_corpus(corpus, args.signals, args.sites, seed=5, duration_s=args.duration)
        print(f"corpus: {args.signals:,} signals, {args.sites:,} sites, {total:,} lines with ticks, "
              f"{corpus.stat().st_size / 1e6:.0f} MB", flush=True)
        floor, counted = json_floor(corpus)
        report("json.loads floor (1 core)", counted, floor, floor, None)

        if args.only != "detect":
            measure_replay(corpus, total)
        if args.only != "replay":
            measure_detect(corpus, total, args.partitions)
    print(f"load after: {os.getloadavg()}", flush=True)


def measure_replay(corpus: Path, total: int) -> None:
    """Replay the corpus with 1 and 2 processes."""
    baseline = None
    for processes in (1, 2):
        wall, cpu, last = timed([LOGYSTERA, "replay", str(corpus), "--rules", str(RULES), "--processes", str(processes)])
        rate = report(f"replay --processes {processes}", total, wall, cpu, baseline)
        baseline = baseline or rate
    print(f"  ({last})", flush=True)


def measure_detect(corpus: Path, total: int, partitions: int) -> None:
    """Fill a topic of ``partitions`` partitions with the corpus (keyed by site), then detect it with 1 and 2 processes."""
    with start_broker() as broker:
        signals = unique_topic("signals")
        broker.create_topics([signals], partitions=partitions)
        producer = broker.producer(linger_ms=50)
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
        baseline = None
        for processes in (1, 2):
            alerts = unique_topic("alerts")
            broker.create_topics([alerts], partitions=partitions)
            broker_before = process_cpu(broker.process.pid)
            wall, cpu, last = timed([LOGYSTERA, "detect", "--bootstrap", broker.bootstrap, "--topic", signals,
                                     "--alerts-topic", alerts, "--rules", str(RULES), "--exit-at-end",
                                     "--processes", str(processes)])
            rate = report(f"detect --processes {processes}", total, wall, cpu, baseline)
            print(f"  (the broker meanwhile: {process_cpu(broker.process.pid) - broker_before:.2f} s CPU)", flush=True)
            baseline = baseline or rate
        print(f"  ({last})", flush=True)


if __name__ == "__main__":
    main()
