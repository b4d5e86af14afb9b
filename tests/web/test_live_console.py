"""The console while ``logystera detect`` runs over an embedded store (``detect --web``, docs/web.md).

chDB lets one process open a data directory, so the console of a chDB store that detect is writing is
served by detect itself. A real detect process on a Tansu broker fires a match rule; the link of the
notification it wrote to the alerts topic opens in Chromium and shows that alert within seconds.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from tests.support.kafka_broker import Broker, unique_topic
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import LogysteraProcess

pytestmark = [pytest.mark.broker, pytest.mark.process, pytest.mark.slow]

RULE = """\
id: php-in-uploads
title: PHP file in the uploads folder
severity: critical
subsystem: security
signal: file_edit
where: {flags: {contains: php_in_uploads}}
kind: match
"""
SIGNAL = {"v": 1, "id": "01M8G1C8BRFWX8DE1K3FAJ2BE8", "site": "blog-us", "type": "file_edit", "ts": "2026-11-28T02:57:31.000Z",
          "seq": 1, "data": {"path": "wp-content/uploads/2026/11/wp-cache.php", "change": "created", "size_delta": 4817,
                             "flags": ["php_in_uploads", "obfuscated"]}}
SHOWN_WITHIN_S = 10.0
"""How soon the link must show the alert once the notification is on the alerts topic ("within a few seconds")."""


def test_the_link_of_a_notification_detect_just_wrote_opens_its_alert_from_the_console_detect_serves(
    broker: Broker, tmp_path: Path, page: Page
) -> None:
    signals, alerts = unique_topic("signals"), unique_topic("alerts")
    broker.create_topics([signals, alerts])
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "php-in-uploads.yaml").write_text(RULE, encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    detect = LogysteraProcess(["detect", "--bootstrap", broker.bootstrap, "--topic", signals, "--alerts-topic", alerts,
                               "--rules", str(rules), "--store", f"chdb://{tmp_path / 'store'}", "--epoch-interval", "1s",
                               "--web", f"127.0.0.1:{port}", "--link-base", base])
    try:
        wait_for(lambda: any(line == f"detect: web console on {base}/alerts" for line in detect.lines) or not detect.running,
                 "console line", timeout=60)
        assert detect.running, detect.output()
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}

        producer = broker.producer()
        producer.produce(signals, json.dumps(SIGNAL).encode(), SIGNAL["site"].encode())
        assert producer.flush(15) == 0
        [record] = wait_for(lambda: broker.read_all(alerts), "notification on the alerts topic", timeout=60)
        assert record.value is not None
        notification = json.loads(record.value)
        assert notification["link"] == f"{base}/alerts/{notification['alert_id']}"

        wait_for(lambda: httpx.get(notification["link"]).status_code == 200, "the alert page", timeout=SHOWN_WITHIN_S)
        page.goto(notification["link"])
        assert page.locator("h1#rule-title").text_content() == "PHP file in the uploads folder"
        assert page.locator("#site").text_content() == "blog-us"
        assert page.locator(f'#evidence [data-signal-id="{SIGNAL["id"]}"]').count() == 1
        assert detect.running, detect.output()
    finally:
        code = detect.stop(signal.SIGTERM)
    assert code == 0, detect.output()
    assert detect.lines[-1].startswith("detect stopped: 1 signals"), detect.output()
