"""Make the README's screenshot of an alert page from a real run: ``docs/img/alert-page.png``.

Runs ``logystera demo --web`` (the day of ``make demo``) into a temporary directory, opens the page of
one of its alerts in Debian's Chromium (headless, driven by Playwright, as the browser tests do), saves
the whole page as a PNG, and stops the demo with SIGINT, as Ctrl-C would.

    .venv/bin/python tools/screenshot.py                       # php-fatal-spike on shop-eu
    .venv/bin/python tools/screenshot.py --rule credential-stuffing --out /tmp/page.png

Needs ``/usr/bin/chromium`` (``tests/support/ensure_chromium.sh`` installs it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
READY = "Press Ctrl-C to stop."
DEMO_TIMEOUT_S = 600.0


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alert_link(alerts: Path, rule: str) -> str:
    """The link of the first episode of ``rule`` in the demo's notification records."""
    for line in alerts.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["rule"]["id"] == rule and record["seq"] == 1:
            return str(record["link"])
    raise SystemExit(f"screenshot: the demo day has no alert of rule {rule!r}")


def serve_demo(workdir: Path, port: int) -> subprocess.Popen[str]:
    """``logystera demo --web`` in ``workdir``, returned once it serves (its output goes to this stderr)."""
    logystera = shutil.which("logystera", path=str(Path(sys.executable).parent)) or "logystera"
    demo = subprocess.Popen(  # noqa: S603 - our own console script, arguments built here
        [logystera, "demo", "--web", f"127.0.0.1:{port}", "--data-dir", str(workdir / "demo"), "--store", f"chdb://{workdir / 'store'}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, encoding="utf-8",
    )
    ready = threading.Event()

    def relay() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            sys.stderr.write(line)
            if line.rstrip("\n") == READY:
                ready.set()

    threading.Thread(target=relay, daemon=True).start()
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while not ready.wait(0.2):
        if demo.poll() is not None or time.monotonic() > deadline:
            demo.kill()
            raise SystemExit(f"screenshot: the demo did not start serving (status {demo.poll()})")
    return demo


def screenshot(url: str, out: Path, width: int) -> None:
    """The whole page at ``url`` as a PNG, rendered by headless Chromium."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
            response = page.goto(url)
            if response is None or response.status != 200:
                raise SystemExit(f"screenshot: {url} answered {response.status if response else 'nothing'}")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main() -> int:
    """Run the demo, photograph one alert page, stop the demo; 0 once the PNG is written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="php-fatal-spike", help="whose first alert to show (default: php-fatal-spike)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "alert-page.png")
    parser.add_argument("--width", type=int, default=1200, help="viewport width in CSS pixels")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"screenshot: {CHROMIUM} is missing (tests/support/ensure_chromium.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="logystera-screenshot-") as scratch:
        workdir = Path(scratch)
        demo = serve_demo(workdir, free_port())
        try:
            url = alert_link(workdir / "demo" / "alerts.jsonl", args.rule)
            screenshot(url, args.out, args.width)
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(60)
    print(f"screenshot: {url} → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
