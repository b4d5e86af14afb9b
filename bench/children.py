"""What the benchmarks share: each measurement in a fresh interpreter, and the corpus written by a child of its own.

A child keeps the parent small: on Linux a child's ``ru_maxrss`` starts from its
parent's peak at fork, which would otherwise hide a replay's own peak.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

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
