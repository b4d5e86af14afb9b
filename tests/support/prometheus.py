"""Reading a process's ``/metrics`` (Prometheus text) the way a scraper does: over HTTP."""

from __future__ import annotations

import re
import urllib.request


def scrape(port: int) -> dict[str, float]:
    """Every sample on ``http://127.0.0.1:PORT/metrics``: ``name{labels}`` → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in re.findall(r"^(\S+) (\S+)$", text, flags=re.MULTILINE)}
