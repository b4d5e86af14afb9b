"""``logystera demo --web`` (what ``make demo`` runs): the day, two alert links, the console until Ctrl-C.

A real process, as a newcomer runs it: its two printed links open the alert pages in Chromium, and SIGINT
(Ctrl-C) ends it cleanly with status 0 and the port closed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import LOGYSTERA

pytestmark = [pytest.mark.process, pytest.mark.slow]

LINK = re.compile(r"^  (http://127\.0\.0\.1:\d+/alerts/[0-9a-f]{32})  (\w+) +(\S+) +(.+)$")


def test_demo_web_prints_two_alert_links_that_open_and_stops_cleanly_on_ctrl_c(tmp_path: Path, page: Page) -> None:
    assert LOGYSTERA is not None
    port = free_port()
    demo = subprocess.Popen(
        [LOGYSTERA, "demo", "--web", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "demo"), "--store", f"chdb://{tmp_path / 'store'}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
        env={**os.environ, "COLUMNS": "160"},
    )
    lines: list[str] = []

    def read() -> None:
        assert demo.stdout is not None
        lines.extend(line.rstrip("\n") for line in demo.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: "Press Ctrl-C to stop." in lines or demo.poll() is not None, "the demo's console", timeout=240)
        assert demo.poll() is None, "\n".join(lines)
        assert f"Web console: http://127.0.0.1:{port}/alerts — two of the alerts:" in lines
        links = [match for match in map(LINK.match, lines) if match]
        assert len(links) == 2 and links[0][3] != links[1][3], "\n".join(lines)
        for link in links:
            page.goto(link[1])
            assert page.locator("h1#rule-title").text_content() == link[4]
            assert page.locator("#severity").text_content() == link[2]
            assert page.locator("#site").text_content() == link[3]
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0, "\n".join(lines)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(30)
        reader.join(30)
    assert "Traceback" not in "\n".join(lines)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
