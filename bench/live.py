"""Live-path benchmark: sites → gateway → broker → detect → alerts at a fixed rate, with incidents at known times.

Run from the repository root::

    .venv/bin/python bench/live.py [--rates 2000,10000] [--seconds 20] [--sites 1000] [--batch-size 200] [--posters 8]
        [--detect-processes 2] [--detect-workers 1] [--kafka-option fetch.wait.max.ms=500]

What runs: a Tansu broker (memory storage), ``logystera gateway`` (ticks
every 10 s for every site) and ``logystera detect`` (the default rule pack,
recovery on, 10-s epochs) as processes of their own, exactly as the CLI runs
them (``tests/support/processes.py`` starts them for the end-to-end tests too).

**The sites are a driver, not 1,000 ``Dispatcher`` instances**: this process
forms batches of ``--batch-size`` signals of one site at a time (sites in
turn, ``ts`` = now), encodes and signs each with the dispatcher's own wire
module (``protocol/wire.py``: the same body, headers and signature a
dispatcher sends) and posts it from ``--posters`` threads, paced so that the
signals leave at the given rate. The signals are benign (requests, logins,
mail sent, cron runs, slow queries: nothing in the default pack fires on
them), except the **incident**: every ``--incident-every`` seconds the next
batch carries one sensitive ``config_change`` with an option never used
before, on which the default pack's ``sensitive-config-changed`` (a match
rule, no bundle) fires at once. Its notification shows up on ``alerts``,
which a consumer in this process reads as it is written.

Printed per rate, over ``--seconds`` after ``--warmup`` seconds at that rate:

- signals accepted (``200`` answers) per second;
- **gateway signals/s per core**: signals accepted per CPU-second of the
  gateway process (user + system time of all its threads, from
  ``/proc/<pid>/stat``), ticks and idle overhead included; and detect's CPU;
- **latency to the notification on ``alerts``** (p50, p99, max) of the
  incidents posted in the window, measured twice: from the moment the batch
  holding the incident was posted, and from its ``200``. The gateway accepts
  a signal somewhere between the two (the ``200`` comes after the broker's
  acknowledgement, and detect may already be reading the record), so
  "acceptance → notification" lies between the two figures. Match rules fire
  on the signal itself: no window or ``for`` is in these numbers;
- the load average: the driver, broker, gateway and detect share this
  machine's cores with whatever else runs, so compare runs with that in mind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dispatcher import new_id  # noqa: E402 - after the path is set
from protocol.wire import ENDPOINT, encode_batch, headers, secret_bytes, sign  # noqa: E402
from schemas.timestamps import format_ts  # noqa: E402
from tests.support.kafka_broker import Broker, start_broker, unique_topic  # noqa: E402
from tests.support.processes import Detect, SiteRegistry, start_gateway, wait_for  # noqa: E402

RULES = ROOT / "rules"
INCIDENT_RULE = "sensitive-config-changed"
GOAL_PER_CORE, GOAL_P99_S = 20_000, 1.0
USER_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
BENIGN = (
    ("request", '{"method":"GET","path":"/shop/product/[id]","route_group":"shop","status":200,"duration_ms":37,"ua_family":"Firefox"}'),
    ("request", '{"method":"POST","path":"/cart","route_group":"shop","status":302,"duration_ms":81}'),
    ("auth", f'{{"outcome":"success","method":"password","user_hash":"{USER_HASH}","user_len":5,"source":"203.0.113.0/24"}}'),
    ("mail", '{"outcome":"sent","transport":"smtp"}'),
    ("cron", '{"job":"wp_scheduled_delete","event":"finished","duration_ms":1200}'),
    ("db_event", '{"kind":"slow_query","table":"wp_posts","duration_ms":1500}'),
)
"""(type, data as compact JSON) of the background signals: valid, and quiet for the default pack."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included (``/proc/<pid>/stat`` fields 14 and 15)."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def signal_line(site: str, type_: str, data: str, ms: int) -> str:
    """One envelope as compact JSON, written directly (the driver makes thousands a second)."""
    return f'{{"v":1,"id":"{new_id(ms)}","site":"{site}","type":"{type_}","ts":"{format_ts(ms)}","data":{data}}}'


@dataclass
class Batch:
    """One signed-to-be request; ``incident`` is the id of the incident signal it carries, if any."""

    site: str
    batch_id: str
    body: bytes
    incident: str | None = None


@dataclass
class Window:
    """What one phase measured."""

    accepted: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    posted: dict[str, tuple[float, float]] = field(default_factory=dict)
    """incident id → (monotonic time the batch was posted, time its 200 came back)."""


class Driver:
    """Forms batches at a fixed signal rate and posts them from a pool of threads; records incidents and answers."""

    def __init__(self, registry: SiteRegistry, url: str, batch_size: int, posters: int, incident_every: float) -> None:
        self.sites = list(registry.secrets)
        self.keys = {site: secret_bytes(secret) for site, secret in registry.secrets.items()}
        self.endpoint = url + ENDPOINT
        self.batch_size = batch_size
        self.incident_every = incident_every
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=posters * 2)
        self.window = Window()
        self.measuring = False
        self._lock = threading.Lock()
        self._made = 0
        self._incidents = 0
        self._threads = [threading.Thread(target=self._post_all, daemon=True) for _ in range(posters)]
        for thread in self._threads:
            thread.start()

    def _batch(self, incident: bool) -> Batch:
        site = self.sites[self._made % len(self.sites)]
        ms = int(time.time() * 1000)
        lines = [signal_line(site, *BENIGN[(self._made + i) % len(BENIGN)], ms) for i in range(self.batch_size)]
        incident_id = None
        if incident:
            self._incidents += 1
            data = f'{{"option":"bench_option_{self._incidents}","before_hash":"{USER_HASH}","after_hash":"{USER_HASH}","sensitive":true}}'
            lines[-1] = signal_line(site, "config_change", data, ms)
            incident_id = json.loads(lines[-1])["id"]
        self._made += 1
        batch_id = new_id(ms)
        return Batch(site, batch_id, encode_batch(site, batch_id, format_ts(ms), lines), incident_id)

    def run(self, rate: float, seconds: float) -> None:
        """Send ``rate`` signals/s for ``seconds``: batch *k* is formed at start + *k* × batch_size / rate."""
        interval = self.batch_size / rate
        start = time.monotonic()
        next_incident = start
        k = 0
        while (due := start + k * interval) < start + seconds:
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            incident = time.monotonic() >= next_incident
            if incident:
                next_incident += self.incident_every
            self.queue.put(self._batch(incident))
            k += 1

    def _post_all(self) -> None:
        with httpx.Client(timeout=60) as client:
            while (batch := self.queue.get()) is not None:
                timestamp = int(time.time())
                signed = headers(batch.batch_id, timestamp, sign(self.keys[batch.site], batch.batch_id, timestamp, batch.body), "bench")
                posted = time.monotonic()
                response = client.post(self.endpoint, content=batch.body, headers=signed)
                answered = time.monotonic()
                accepted = response.json().get("accepted", 0) if response.status_code == 200 else 0
                with self._lock:
                    if self.measuring:
                        self.window.statuses[response.status_code] += 1
                        self.window.accepted += accepted
                        if batch.incident is not None and accepted:
                            self.window.posted[batch.incident] = (posted, answered)

    def measure(self) -> Window:
        """Start counting answers from now on into a fresh window, and return the previous one."""
        with self._lock:
            previous, self.window, self.measuring = self.window, Window(), True
        return previous

    def close(self) -> None:
        """Let the posters finish what is queued, then stop them."""
        for _ in self._threads:
            self.queue.put(None)
        for thread in self._threads:
            thread.join(120)


class Watcher:
    """Reads a topic as it is written (from its start, no consumer group) and notes when each incident's record arrived."""

    def __init__(self, broker: Broker, topic: str, partitions: int, incident_of: Callable[[bytes], str | None]) -> None:
        self.seen: dict[str, float] = {}
        self.records = 0
        self._incident_of = incident_of
        # A short fetch wait: this reader should add as little as it can to what it measures.
        self._consumer = Consumer(broker.config(group_id="bench-live", enable_auto_commit=False, fetch_wait_max_ms=5))
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            # poll() returns as soon as a record is there; consume(n, t) would wait all of t unless n records came,
            # making every arrival it notes up to t late. What came with the first is drained without waiting.
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            arrived = time.monotonic()
            for message in [first, *self._consumer.consume(1000, 0)]:
                value = message.value()
                if message.error() is not None or value is None:
                    continue
                self.records += 1
                incident = self._incident_of(value)
                if incident is not None:
                    self.seen[incident] = arrived

    def close(self) -> None:
        """Stop reading."""
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def incident_signal(value: bytes) -> str | None:
    """The id of an incident signal on ``signals`` (the driver writes no other config_change)."""
    return json.loads(value)["id"] if b'"type":"config_change"' in value else None


def incident_notification(value: bytes) -> str | None:
    """The id of the incident signal a notification on ``alerts`` is about, if it is one of the incident rule's."""
    body = json.loads(value)
    return body["evidence"][0]["id"] if body["rule"]["id"] == INCIDENT_RULE else None


def load_average() -> str:
    """The load average over 1, 5 and 15 minutes, and the CPUs it is shared by."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} CPUs"


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of ``values`` (sorted here)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def report(rate: float, seconds: float, window: Window, cpu: tuple[float, float], on_signals: Watcher, on_alerts: Watcher) -> bool:
    """Print one phase; whether every incident of it reached ``alerts``."""
    arrived = {i: times for i, times in window.posted.items() if i in on_alerts.seen and i in on_signals.seen}
    stages = {
        "post → alerts": [on_alerts.seen[i] - posted for i, (posted, _) in arrived.items()],
        "200 → alerts": [on_alerts.seen[i] - answered for i, (_, answered) in arrived.items()],
        "200 → signals": [on_signals.seen[i] - answered for i, (_, answered) in arrived.items()],
        "signals → alerts": [on_alerts.seen[i] - on_signals.seen[i] for i in arrived],
    }
    gateway_cpu, detect_cpu = cpu
    per_core = window.accepted / gateway_cpu if gateway_cpu else float("nan")
    answers = ", ".join(f"{count} × {status}" for status, count in sorted(window.statuses.items()))
    print(f"\nat {rate:,.0f} signals/s ({seconds:.0f} s measured):")
    print(f"  accepted           {window.accepted / seconds:>10,.0f} signals/s   ({window.accepted:,} signals; answers: {answers})")
    print(f"  gateway            {per_core:>10,.0f} signals/s per core (signals per CPU-second; {gateway_cpu / seconds:.2f} cores busy; "
          f"goal ≥ {GOAL_PER_CORE:,})")
    print(f"  detect             {detect_cpu / seconds:>10.2f} cores busy")
    print(f"  incidents          {len(arrived)} of {len(window.posted)} on alerts (goal: p99 acceptance → alerts < {GOAL_P99_S:g} s)")
    if arrived:
        for name, values in stages.items():
            ms = [value * 1000 for value in values]
            print(f"  {name:<18} p50 {percentile(ms, 0.5):7.0f} ms   p99 {percentile(ms, 0.99):7.0f} ms   "
                  f"max {max(ms):7.0f} ms   mean {statistics.mean(ms):7.0f} ms")
    print(f"  load average       {load_average()}")
    return len(arrived) == len(window.posted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="2000,10000", help="signals/s of each phase, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at each rate before measuring")
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--posters", type=int, default=8, help="threads posting batches")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the signals and alerts topics")
    parser.add_argument("--detect-workers", type=int, default=1, help="detect's --workers")
    parser.add_argument("--detect-processes", type=int, default=1, help="detect's --processes (a local cluster; CPU is process 0's)")
    parser.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to detect as --kafka-option (repeatable), e.g. fetch.wait.max.ms=500 for librdkafka's default")
    parser.add_argument("--incident-every", type=float, default=0.1, help="seconds between incidents")
    args = parser.parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",")]

    print(f"Logystera live-path benchmark: {args.sites:,} sites, batches of {args.batch_size}, {args.posters} posting threads, "
          f"{args.partitions} partitions; gateway ticks every 10 s; detect: default rule pack, {args.detect_processes} process(es) × "
          f"{args.detect_workers} worker(s), "
          f"recovery on, 10-s epochs, Kafka options {args.kafka_option or 'default'}")
    print("The sites are this process signing and posting with protocol/wire.py, not Dispatcher instances; "
          f"an incident ({INCIDENT_RULE}) every {args.incident_every:g} s")
    print(f"load average before: {load_average()}")
    complete = True
    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="bench-live-") as work:
        workdir = Path(work)
        signals, alerts = unique_topic("signals"), unique_topic("alerts")
        broker.create_topics([signals, alerts], partitions=args.partitions)
        registry = SiteRegistry.write(workdir / "sites.yaml", [f"site-{n:04d}" for n in range(args.sites)])
        gateway = start_gateway(broker, signals, registry, workdir, tick_interval="10s")
        detect = Detect(broker, signals, alerts, RULES, "--recovery-dir", str(workdir / "recovery"),
                        "--workers", str(args.detect_workers), *(f"--kafka-option={option}" for option in args.kafka_option),
                        *(["--processes", str(args.detect_processes)] if args.detect_processes > 1 else []))
        on_signals = Watcher(broker, signals, args.partitions, incident_signal)
        on_alerts = Watcher(broker, alerts, args.partitions, incident_notification)
        driver = Driver(registry, gateway.url, args.batch_size, args.posters, args.incident_every)
        try:
            driver.run(rates[0], 0.5)  # the first incident's notification says the whole path is up
            wait_for(lambda: on_alerts.seen, "notification of the first incident", timeout=60)
            for rate in rates:
                driver.run(rate, args.warmup)
                driver.measure()
                before = cpu_seconds(gateway.pid), cpu_seconds(detect.pid)
                driver.run(rate, args.seconds)
                window = driver.measure()
                used = cpu_seconds(gateway.pid) - before[0], cpu_seconds(detect.pid) - before[1]
                # The last incidents' notifications are still on their way: give them up to 30 s.
                posted = set(window.posted)
                with contextlib.suppress(AssertionError):  # a missing one is reported as "n of m on alerts"
                    wait_for(lambda: posted <= set(on_alerts.seen), "notifications", timeout=30)  # noqa: B023 - used at once
                complete &= report(rate, args.seconds, window, used, on_signals, on_alerts)
        finally:
            driver.close()
            on_signals.close()
            on_alerts.close()
            detect.stop()
            gateway.stop()
    print(f"\n{on_signals.records:,} records on signals (ticks included), {on_alerts.records:,} notifications on alerts")
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
