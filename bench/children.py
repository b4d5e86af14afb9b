"""What the benchmarks share: each measurement in a fresh interpreter, the corpus written by a child of its own, servers awaited.

A child keeps the parent small: on Linux a child's ``ru_maxrss`` starts from its
parent's peak at fork, which would otherwise hide a replay's own peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from simulate.corpus import write_corpus


class WorkerThreadsClock:
    """CPU seconds of this process's Bytewax worker threads (``timely:work-N``), read from ``/proc`` while they run.

    A flow's workers are threads Bytewax starts (every flow runs under
    ``cluster_main``, decision 150), so ``time.thread_time`` of the calling
    thread no longer sees them. A sampler reads each worker's
    ``/proc/self/task/TID/stat`` every ``interval`` seconds and keeps the last
    value; a worker's last ``interval`` of CPU before it ends may be missed.
    Linux only: elsewhere :attr:`seconds` stays None.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="bench-worker-clock", daemon=True)
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __enter__(self) -> WorkerThreadsClock:
        if Path("/proc/self/task").is_dir():
            self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join()

    @property
    def seconds(self) -> float | None:
        """The workers' CPU seconds seen (None where /proc cannot be read)."""
        return sum(self._cpu.values()) if self._sampler.ident is not None else None

    def _sample(self) -> None:
        workers: set[str] = set()
        others: set[str] = set()
        while True:
            stopping = self._stop.is_set()  # one last sample after the stop is asked
            for tid in os.listdir("/proc/self/task"):
                if tid in others:
                    continue
                try:
                    if tid not in workers:
                        comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                        (workers if comm.startswith("timely:work") else others).add(tid)
                        if tid in others:
                            continue
                    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
                except OSError:  # the thread ended
                    continue
                fields = stat[stat.rindex(")") + 2:].split()
                self._cpu[tid] = (int(fields[11]) + int(fields[12])) / self._ticks  # utime + stime
            if stopping:
                return
            self._stop.wait(self.interval)


def run_script(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter and return the JSON object its last stdout line holds."""
    done = subprocess.run([sys.executable, script, *args], check=False, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"child {args[0]} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_generate(path: str, signals: int, sites: int, seed: int, duration: int) -> dict[str, Any]:
    """Write the corpus; a child of its own so that the generator's memory stays out of the replays' peak RSS."""
    started = time.perf_counter()
    lines = write_corpus(path, signals, sites, seed, duration)
    return {"lines": lines, "seconds": time.perf_counter() - started}


def wait_healthy(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    """Block until the server on ``port`` answers ``/healthz``; exit with its log if it dies or takes over 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit(f"{Path(log).name}: the server on port {port} did not come up:\n{log.read_text()}")
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
