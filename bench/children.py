"""What the benchmarks share: each measurement in a fresh interpreter, the corpus written by a child of its own, servers awaited.

A child keeps the parent small: on Linux a child's ``ru_maxrss`` starts from its
parent's peak at fork, which would otherwise hide a replay's own peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from simulate.corpus import write_corpus


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
