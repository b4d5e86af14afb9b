"""Gateway benchmark: signals/s per core through ``POST /v1/batches`` into a real (Tansu) broker.

Run from the repository root::

    .venv/bin/python bench/gateway.py [--batches 1500] [--batch-size 200] [--sites 100] [--concurrency 8] [--partitions 6]

What is measured, in one run:

- a Tansu broker (memory storage) and ``logystera gateway`` (no ticker) are
  started as their own processes; the gateway is exactly what the CLI runs;
- ``--batches`` batches of ``--batch-size`` valid signals (mail, auth,
  request and cron signals of ``--sites`` sites, about 230 bytes each) are
  encoded and signed beforehand, so the load generator (this process, one
  keep-alive connection per thread) does little but send;
- after a warm-up (the producer's id, connections), the batches are sent by
  ``--concurrency`` threads; each answer must be ``200`` with every signal
  accepted;
- **gateway CPU time** is user + system time of the gateway process (every
  thread: uvicorn's event loop, the producer's enqueue and poll threads and
  librdkafka's own) read from ``/proc/<pid>/stat`` before and after the
  load; signals per CPU-second is the "signals/s per core" figure, since
  one core fully used gives one CPU-second per second. Wall-clock throughput
  is printed too, but on a machine with few cores the load generator and
  the broker compete with the gateway for them, so it understates what a
  gateway on its own core does;
- at the end every record is read back from the topic and counted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.children import cpu_seconds, wait_healthy  # noqa: E402
from dispatcher import new_id, sign_batch  # noqa: E402
from protocol.wire import encode_batch  # noqa: E402
from schemas.factory import identity_hash, make_signal, signal_line  # noqa: E402
from schemas.timestamps import format_ts  # noqa: E402
from tests.support.kafka_broker import start_broker  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

GOAL_PER_CORE = 20_000
TOPIC = "signals"


def _signal(site: str, n: int, ts: int) -> dict[str, object]:
    kind = n % 4
    id_ = f"{site[:20]}-{n:08d}-{new_id()[-8:]}"
    if kind == 0:
        return make_signal(site, "mail", ts, id_, outcome="sent", transport="smtp", error_class=None)
    if kind == 1:
        return make_signal(site, "auth", ts, id_, outcome="failure", method="password", user_hash=identity_hash(f"user{n % 50}", site),
                           user_len=8, source="203.0.113.0/24")
    if kind == 2:
        return make_signal(site, "request", ts, id_, method="GET", path="/shop/product/[id]", route_group="shop", status=200,
                           duration_ms=37, ua_family="Firefox")
    return make_signal(site, "cron", ts, id_, job="wp_scheduled_delete", event="finished", duration_ms=1200)


def _batches(sites: list[str], secrets: dict[str, str], count: int, size: int) -> list[tuple[bytes, dict[str, str]]]:
    now = int(time.time())
    out = []
    for b in range(count):
        site = sites[b % len(sites)]
        batch_id = new_id()
        lines = [signal_line(_signal(site, b * size + i, now * 1000 + i)) for i in range(size)]
        body = encode_batch(site, batch_id, format_ts(now * 1000), lines)
        headers = {"content-type": "application/json", "webhook-id": batch_id, "webhook-timestamp": str(now),
                   "webhook-signature": sign_batch(secrets[site], batch_id, now, body)}
        out.append((body, headers))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args(argv)

    sites = [f"site-{i:04d}" for i in range(args.sites)]
    secrets = {site: f"secret-of-{site}" for site in sites}
    warmup = _batches(sites, secrets, 20, args.batch_size)
    load = _batches(sites, secrets, args.batches, args.batch_size)
    signals = args.batches * args.batch_size
    mean_bytes = statistics.mean(len(body) for body, _ in load) / args.batch_size
    print(f"Logystera gateway benchmark: {args.batches} batches × {args.batch_size} signals ({signals:,} signals, "
          f"~{mean_bytes:.0f} bytes each), {args.sites} sites, {args.concurrency} connections, {os.cpu_count()} CPUs")

    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="bench-gateway-") as work:
        broker.create_topics([TOPIC], partitions=args.partitions)
        registry = Path(work) / "sites.yaml"
        registry.write_text("sites:\n" + "".join(f"  - id: {site}\n    secret_env: BENCH_SECRET_{i}\n" for i, site in enumerate(sites)))
        env = {**os.environ, **{f"BENCH_SECRET_{i}": secrets[site] for i, site in enumerate(sites)}}
        port = free_port()
        log = open(Path(work) / "gateway.log", "wb")  # noqa: SIM115 - closed in finally
        gateway = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "gateway", "--registry", str(registry), "--bootstrap", broker.bootstrap, "--topic", TOPIC,
             "--port", str(port), "--no-ticker", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/v1/batches"
        local = threading.local()

        def post(item: tuple[bytes, dict[str, str]]) -> float:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(timeout=60)
            started = time.perf_counter()
            response = client.post(url, content=item[0], headers=item[1])
            took = time.perf_counter() - started
            if response.status_code != 200 or response.json()["accepted"] != args.batch_size:
                raise SystemExit(f"unexpected answer {response.status_code}: {response.text[:300]}")
            return took

        try:
            wait_healthy(port, gateway, Path(work) / "gateway.log")
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(post, warmup))
                cpu_before, wall_before = cpu_seconds(gateway.pid), time.perf_counter()
                latencies = list(pool.map(post, load))
                wall = time.perf_counter() - wall_before
                cpu = cpu_seconds(gateway.pid) - cpu_before
        finally:
            gateway.terminate()
            gateway.wait(30)
            log.close()
        written = len(broker.read_all(TOPIC, timeout=120))

    latencies.sort()
    per_core = signals / cpu
    print()
    print(f"wall time            {wall:8.2f} s   {signals / wall:>10,.0f} signals/s  ({args.batches / wall:,.0f} batches/s)")
    print(f"gateway CPU time     {cpu:8.2f} s   {per_core:>10,.0f} signals per CPU-second = signals/s per core "
          f"(goal ≥ {GOAL_PER_CORE:,}: {'met' if per_core >= GOAL_PER_CORE else 'NOT met'})")
    print(f"gateway CPU / wall   {cpu / wall:8.2f}     (cores the gateway kept busy)")
    print(f"batch latency        p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms (request sent → 200 after the broker's acks)")
    print(f"records in topic     {written:,} (warm-up {len(warmup) * args.batch_size:,} + measured {signals:,})")
    return 0 if written == (len(warmup) + args.batches) * args.batch_size else 1


if __name__ == "__main__":
    raise SystemExit(main())
