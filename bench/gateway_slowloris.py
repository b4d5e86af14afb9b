"""Slow clients against the gateway: its memory, when it closes them, and how long a real batch waits meanwhile.

Run from the repository root::

    .venv/bin/python bench/gateway_slowloris.py [--stalled 300] [--body-bytes 1048576] [--half-heads 50] [--wait 60]
                                               [--gateway-arg=--body-timeout=10s ...]

What is measured, in one run:

- a Tansu broker and ``logystera gateway`` (no ticker, its default limits
  unless ``--gateway-arg`` says otherwise) run as their own processes;
- ``--stalled`` connections each send a complete, well-formed request head
  for a registered site (the worst case: nothing about it can be refused
  before the body) and all but the last byte of a ``--body-bytes`` body,
  then stop; ``--half-heads`` more send half a request head and stop;
- meanwhile one real signed batch is posted every 200 ms on a fresh
  connection; each must be answered ``200``;
- the gateway's resident memory (``VmRSS`` of ``/proc/<pid>/status``) before
  the slow clients connect, its peak while they are held (sampled every
  20 ms), and after they are gone; when each slow connection was closed by
  the gateway, counted from the moment all of them had sent what they send;
  the latency of every real batch.

Against a gateway without limits, the slow connections stay open; the run
then reports how many were still open after ``--wait`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
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

from bench.children import wait_healthy  # noqa: E402
from dispatcher import new_id, sign_batch  # noqa: E402
from protocol.wire import encode_batch  # noqa: E402
from schemas.factory import make_signal, signal_line  # noqa: E402
from schemas.timestamps import format_ts  # noqa: E402
from tests.support.kafka_broker import start_broker  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

TOPIC = "signals"
SITE, SECRET = "shop-eu", "bench-secret"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _legit_batch() -> tuple[bytes, dict[str, str]]:
    now = int(time.time())
    batch_id = new_id()
    lines = [signal_line(make_signal(SITE, "mail", now * 1000, f"mail-{batch_id}-{n}", outcome="sent", transport="smtp"))
             for n in range(50)]
    body = encode_batch(SITE, batch_id, format_ts(now * 1000), lines)
    return body, {"content-type": "application/json", "webhook-id": batch_id, "webhook-timestamp": str(now),
                  "webhook-signature": sign_batch(SECRET, batch_id, now, body)}


def _stalled_request(body_bytes: int) -> bytes:
    """A head that passes every check made before the body, and all but the last byte of a body starting with its site."""
    head = (f"POST /v1/batches HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {body_bytes}\r\n"
            f"webhook-id: {new_id()}\r\nwebhook-timestamp: {int(time.time())}\r\nwebhook-signature: v1,AAAA\r\n\r\n").encode()
    start = f'{{"site":"{SITE}","batch_id":"x","sent_at":"2026-11-28T10:00:00.000Z","signals":['.encode()
    return head + start + b" " * (body_bytes - 1 - len(start))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=300, help="connections that send all but the last byte of a body")
    parser.add_argument("--body-bytes", type=int, default=1 << 20, help="the content-length they declare")
    parser.add_argument("--half-heads", type=int, default=50, help="connections that send half a request head")
    parser.add_argument("--wait", type=float, default=60.0, help="give up waiting for the gateway to close them after this")
    parser.add_argument("--gateway-arg", action="append", default=[], help="extra logystera gateway option (repeatable)")
    args = parser.parse_args(argv)
    print(f"Slow clients against logystera gateway: {args.stalled} stalled bodies of {args.body_bytes:,} bytes, "
          f"{args.half_heads} half-sent heads, gateway options {args.gateway_arg or '(defaults)'}, {os.cpu_count()} CPUs")

    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="bench-slowloris-") as work:
        broker.create_topics([TOPIC], partitions=1)
        registry = Path(work) / "sites.yaml"
        registry.write_text(f"sites:\n  - id: {SITE}\n    secret_env: BENCH_SECRET\n")
        port, log_path = free_port(), Path(work) / "gateway.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
        gateway = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "gateway", "--registry", str(registry), "--bootstrap", broker.bootstrap, "--topic", TOPIC,
             "--port", str(port), "--no-ticker", "--log-level", "error", *args.gateway_arg],
            cwd=REPO, env={**os.environ, "BENCH_SECRET": SECRET}, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/v1/batches"
        try:
            wait_healthy(port, gateway, log_path)
            for _ in range(5):  # warm-up: the producer's id and connection, every code path of a batch
                body, headers = _legit_batch()
                httpx.post(url, content=body, headers=headers, timeout=30).raise_for_status()
            time.sleep(0.5)
            rss_before = _rss_mb(gateway.pid)

            peak = [rss_before]
            legit: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], _rss_mb(gateway.pid))
                    time.sleep(0.02)

            def post_legit() -> None:
                while not stop.is_set():
                    body, headers = _legit_batch()
                    started = time.perf_counter()
                    try:
                        status = httpx.post(url, content=body, headers=headers, timeout=30).status_code
                    except httpx.HTTPError:
                        status = 0
                    legit.append((time.perf_counter() - started, status))
                    stop.wait(0.2)

            threads = [threading.Thread(target=sample), threading.Thread(target=post_legit)]
            for thread in threads:
                thread.start()
            slow: list[socket.socket] = []
            request = _stalled_request(args.body_bytes)
            for _ in range(args.stalled):
                sock = socket.create_connection(("127.0.0.1", port))
                slow.append(sock)
                with contextlib.suppress(OSError):  # already answered and closed (the budget dropped it): counted as closed below
                    sock.sendall(request)
            for _ in range(args.half_heads):
                sock = socket.create_connection(("127.0.0.1", port))
                slow.append(sock)
                sock.sendall(b"POST /v1/batches HTTP/1.1\r\nhost: gateway\r\nwebhook-id: ")
            sent_at = time.monotonic()
            selector = selectors.DefaultSelector()
            for sock in slow:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            closed_after: list[float] = []
            while selector.get_map() and time.monotonic() - sent_at < args.wait:
                for key, _ in selector.select(timeout=0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        closed_after.append(time.monotonic() - sent_at)
                        selector.unregister(sock)
                        sock.close()
            still_open = len(selector.get_map())
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join()
            rss_after = _rss_mb(gateway.pid)
        finally:
            gateway.terminate()
            gateway.wait(30)
            log.close()

    latencies = sorted(took for took, _ in legit)
    answered = sum(1 for _, status in legit if status == 200)
    print()
    print(f"gateway RSS          before {rss_before:.0f} MB, peak while held {peak[0]:.0f} MB (+{peak[0] - rss_before:.0f} MB), "
          f"after {rss_after:.0f} MB")
    if closed_after:
        print(f"slow connections     {len(closed_after)} closed by the gateway: median {statistics.median(closed_after):.1f} s, "
              f"last {max(closed_after):.1f} s after they had all sent; {still_open} still open after {args.wait:g} s")
    else:
        print(f"slow connections     none closed; {still_open} still open after {args.wait:g} s")
    print(f"real batches         {answered} of {len(legit)} answered 200 meanwhile; latency p50 "
          f"{latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    return 0 if still_open == 0 and answered == len(legit) else 1


if __name__ == "__main__":
    raise SystemExit(main())
