"""Delivery benchmark: notifications/s to a local webhook receiver, and a 5-second channel next to a healthy one.

Run from the repository root::

    .venv/bin/python bench/deliver.py [--notifications 3000] [--concurrency 1,4,16] [--slow 5] [--pairs 8]

What runs is the delivery service of ``logystera deliver``
(:class:`delivery.service.DeliveryService`: schedule, webhook sender,
attempt log) in this process, recording every attempt in a fresh embedded
store (chDB, temporary directory). Receivers are the test suite's real
webhook receiver (``tests/support/receivers.py``: ``http.server``, each
signature verified with ``standardwebhooks``), each in a child process of its
own so it does not compete with the service for this process's GIL.

(a) Throughput: N notifications of distinct alerts to one webhook channel
    whose rate limit is out of the way, for each ``--concurrency`` (calls in
    flight per channel). Time runs from the first submit until every record is
    done, i.e. delivered *and* its row stored.
(b) Isolation: ``--pairs`` notifications, each to a channel whose receiver
    answers every request after ``--slow`` seconds and to a healthy one (the
    same alerts, submitted together). For each channel: the latency of the
    calls (``latency_ms``) and end to end (submit → answer), from the stored
    rows; then the healthy channel alone, as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from delivery.attempt_log import AttemptLog  # noqa: E402
from delivery.channels import open_sender  # noqa: E402
from delivery.schedule import DeliveryPolicy  # noqa: E402
from delivery.service import DeliveryService  # noqa: E402
from schemas.alerts import ReceivedRecord, parse_notification  # noqa: E402
from schemas.records import compact_json  # noqa: E402
from schemas.rules import WebhookChannel  # noqa: E402 - after the path is set
from sinks.clickhouse import Store  # noqa: E402
from tests.support.factories import make_notification  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-32byte").decode()
RECEIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.support.receivers import Hang, WebhookReceiver
delay = float(sys.argv[3])
with WebhookReceiver(secret=sys.argv[2]) as hook:
    if delay:
        hook.answer(*[Hang(delay)] * 100_000)
    print(hook.url, flush=True)
    sys.stdin.read()
    print(len(hook.received), len(hook.problems), flush=True)
"""


@contextmanager
def receiver(delay: float = 0.0) -> Iterator[tuple[str, list[int]]]:
    """A webhook receiver in a child process; yields its URL and, after the block, [requests, problems]."""
    child = subprocess.Popen([sys.executable, "-c", RECEIVER, str(ROOT), SECRET, str(delay)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    counts: list[int] = []
    try:
        yield child.stdout.readline().strip(), counts
    finally:
        out, _ = child.communicate("", timeout=60)
        counts.extend(int(value) for value in out.split())


def channel(name: str, url: str) -> WebhookChannel:
    return WebhookChannel.model_validate({"name": name, "type": "webhook", "url": url, "secret_env": "BENCH_SECRET",
                                          "rate_limit": {"per": "1s", "max": 1_000_000}})


def notifications(count: int, deliver: list[str], offset: int = 0) -> list[ReceivedRecord]:
    """Records of distinct alerts, parsed from their JSON lines as ``logystera deliver`` parses them (not timed)."""
    template = make_notification(deliver=deliver)
    records = [{**template, "alert_id": f"{offset + n:032x}", "link": f"http://localhost:8080/alerts/{offset + n:032x}"}
               for n in range(count)]
    parsed = [parse_notification(compact_json(record)) for record in records]
    return [record for record in parsed if isinstance(record, ReceivedRecord)]


def run(store: Store, channels: list[WebhookChannel], records: list[ReceivedRecord], concurrency: int) -> float:
    """Submit everything at once, wait until every record is done; the wall time (s)."""

    async def main() -> float:
        senders = [open_sender(c, {"BENCH_SECRET": SECRET}, timeout=30.0) for c in channels]
        service = DeliveryService(senders, AttemptLog(store), DeliveryPolicy(concurrency=concurrency))
        service.start()
        started = time.perf_counter()
        try:
            await service.guarded(service.submit([(record, None) for record in records]))
            await service.guarded(service.drain())
            return time.perf_counter() - started
        finally:
            await service.stop(grace=30.0)

    return asyncio.run(main())


def rows(store: Store, names: list[str], alerts: set[str]) -> dict[str, list[tuple[int, int, str]]]:
    """Per channel: (attempted_at ms, latency ms, outcome) of the rows of these alerts."""
    listed = ", ".join(f"'{name}'" for name in names)
    result = store.query(f"SELECT channel, alert_id, toUnixTimestamp64Milli(attempted_at), latency_ms, outcome "
                         f"FROM deliveries_final WHERE channel IN ({listed})").result_rows
    found: dict[str, list[tuple[int, int, str]]] = {name: [] for name in names}
    for name, alert_id, at, latency, outcome in result:
        if alert_id in alerts:
            found[name].append((at, latency, outcome))
    return found


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):8.1f}  p95 {p95:8.1f}  max {ordered[-1]:8.1f}"


def throughput(store: Store, count: int, levels: list[int]) -> None:
    print(f"(a) {count} notifications to one webhook channel, rate limit out of the way, each attempt stored")
    print("    concurrency  seconds  notifications/s  received  signature problems")
    for index, level in enumerate(levels):
        with receiver() as (url, counts):
            records = notifications(count, ["hook"], offset=(index + 1) * 1_000_000)
            seconds = run(store, [channel("hook", url)], records, level)
        print(f"    {level:11d}  {seconds:7.2f}  {count / seconds:15.0f}  {counts[0]:8d}  {counts[1]:18d}")


def isolation(store: Store, pairs: int, slow_s: float) -> None:
    print(f"\n(b) {pairs} notifications to a channel answering in {slow_s:g} s and to a healthy one, submitted together")
    print("    channel          call latency (ms)                        submit → answer (ms)")
    for label, with_slow in (("both", True), ("healthy alone", False)):
        offset = 50_000_000 if with_slow else 60_000_000
        names = ["slow", "healthy"] if with_slow else ["healthy"]
        with receiver(slow_s) as (slow_url, _), receiver() as (healthy_url, _):
            records = notifications(pairs, names, offset=offset)
            submitted = time.time() * 1000
            channels = [channel("slow", slow_url), channel("healthy", healthy_url)] if with_slow else [channel("healthy", healthy_url)]
            run(store, channels, records, concurrency=4)
        found = rows(store, names, {notification.record.alert_id for notification in records})
        for name in names:
            calls = found[name]
            assert len(calls) == pairs and {outcome for *_, outcome in calls} == {"delivered"}, (name, calls)
            latency = spread([float(latency) for _, latency, _ in calls])
            end_to_end = spread([at + latency - submitted for at, latency, _ in calls])
            print(f"    {name + ' (' + label + ')':<24} {latency}   {end_to_end}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notifications", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,4,16", help="calls in flight per channel, comma-separated")
    parser.add_argument("--slow", type=float, default=5.0, help="seconds the slow receiver takes to answer")
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deliver-") as directory:
        store = Store.open(f"chdb://{directory}/store")
        throughput(store, args.notifications, [int(level) for level in args.concurrency.split(",")])
        isolation(store, args.pairs, args.slow)


if __name__ == "__main__":
    main()
