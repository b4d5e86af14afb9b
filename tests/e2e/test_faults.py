"""Faults on the live path, each on real processes over loopback, each checked for loss and duplicates.

- the gateway stopped while sites send, and started again later on the same
  port: the sites buffer, then every signal is on ``signals`` exactly once, in
  emit order per site (what the detection flow reads is that topic);
- a site with a tiny buffer while the gateway is down: the oldest signals are
  dropped and counted, the count arrives as an ``integration`` ``dropped``
  signal, and the default rule pack's ``integration-dropped-events`` puts a
  notification on ``alerts``;
- the broker paused (SIGSTOP; Tansu keeps its data in memory, a restart would
  lose it): the gateway answers 503, the sites retry, and after SIGCONT every
  signal is on the topic exactly once, in order.

Detect with recovery, killed mid-stream on the full path, is the second case
of ``test_end_to_end.py``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.kafka_broker import Broker
from tests.support.processes import LivePath, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.process, pytest.mark.slow]

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "rules"
IDENTITY_KEY = "e2e-identity-key"
SITES = ("shop-a", "shop-b", "shop-c")


class Traffic:
    """Sites sending through their dispatchers; remembers every signal id it emitted, per site, in emit order."""

    def __init__(self, live: LivePath, sites: tuple[str, ...], **dispatcher_options: Any) -> None:
        self.dispatchers = {site: live.dispatcher(site, **dispatcher_options) for site in sites}
        self.emitted: dict[str, list[str]] = {site: [] for site in sites}

    def send(self, per_site: int) -> None:
        """Emit ``per_site`` signals on every site, the sites taking turns."""
        builders = {site: dispatcher.signals(IDENTITY_KEY) for site, dispatcher in self.dispatchers.items()}
        for n in range(per_site):
            for site, dispatcher in self.dispatchers.items():
                signal_ = builders[site].mail("sent", "smtp", error_class=f"n{n}")
                assert dispatcher.emit(signal_)
                self.emitted[site].append(signal_["id"])

    def failures(self, reason: str) -> int:
        """Attempts that failed for ``reason`` (``connection``, ``unavailable``, …) at the site that saw fewest."""
        return min(dispatcher.stats().failures_total.get(reason, 0) for dispatcher in self.dispatchers.values())

    def stop(self) -> None:
        """Deliver everything (``integration`` ``stopped`` included) and stop every site's sender."""
        assert all(dispatcher.stop(30) for dispatcher in self.dispatchers.values())

    def check_each_once_in_emit_order(self, lines: list[str]) -> None:
        """Per site, the records on ``signals`` other than ticks: unique ids, ours complete and in order, the rest its own."""
        records = [json.loads(line) for line in lines]
        for site, emitted in self.emitted.items():
            sent = [r for r in records if r["site"] == site and r["type"] != "tick"]
            ids = [r["id"] for r in sent]
            assert len(ids) == len(set(ids)), f"{site}: a signal is on the topic twice"
            ours = set(emitted)
            assert [id_ for id_ in ids if id_ in ours] == emitted, f"{site}: signals missing or out of order"
            others = [r for r in sent if r["id"] not in ours]
            assert {r["type"] for r in others} == {"integration"}, f"{site}: a signal nobody emitted"
            events = [r["data"]["event"] for r in others]
            assert events[0] == "started" and events[-1] == "stopped"


def test_the_gateway_down_for_a_while_its_sites_buffer_then_deliver_everything_once_in_order(broker: Broker, tmp_path: Path) -> None:
    with LivePath(broker, tmp_path, SITES) as live:
        traffic = Traffic(live, SITES)
        traffic.send(50)
        wait_for(lambda: all(d.stats().delivered_total > 50 for d in traffic.dispatchers.values()), "the first signals delivered")
        port = live.gateway.port
        traffic.send(400)  # two batches in flight or waiting per site while the gateway goes down
        live.gateway.stop()
        traffic.send(100)
        # Down long enough for every site's circuit breaker to open (5 failures in a row).
        wait_for(lambda: traffic.failures("connection") >= 5, "every site failing to connect five times")
        assert all(d.stats().buffered > 0 for d in traffic.dispatchers.values())
        traffic.send(100)
        live.start_gateway(port)
        traffic.send(50)
        traffic.stop()
        lines = live.signal_lines()
    traffic.check_each_once_in_emit_order(lines)


def test_a_full_buffer_drops_the_oldest_counts_them_and_the_default_pack_alerts_on_the_report(broker: Broker, tmp_path: Path) -> None:
    with LivePath(broker, tmp_path, ["shop-a"]) as live:
        detect = live.detect(DEFAULT_RULES, "--epoch-interval", "1s")
        site = live.dispatcher("shop-a", max_buffered=20)
        assert site.flush(30)  # `started` is delivered: the buffer is empty when the gateway goes down
        port = live.gateway.port
        live.gateway.stop()
        builder = site.signals(IDENTITY_KEY)
        emitted = [builder.mail("sent", "smtp") for _ in range(100)]
        assert all(site.emit(signal_) for signal_ in emitted)
        assert site.stats().overflow_dropped_total == 80 and site.stats().buffered == 20
        live.start_gateway(port)
        assert site.flush(30)
        [alert] = wait_for(live.alerts, "a notification")
        assert detect.stop() == 0, detect.output()
        lines = live.signal_lines()

    records = [json.loads(line) for line in lines if '"type":"tick"' not in line]
    # A batch formed while the emits were still overflowing carries the count so far, the next one the rest.
    reports = [r for r in records if r["type"] == "integration" and r["data"]["event"] == "dropped"]
    assert reports and sum(r["data"]["dropped"] for r in reports) == 80
    assert [r for r in records if r["type"] == "mail"] == emitted[-20:]  # the newest 20 survived, in order
    body = json.loads(alert)
    assert (body["rule"]["id"], body["site"], body["status"], body["seq"], body["group"]) == ("integration-dropped-events", "shop-a",
                                                                                           "firing", 1, {})
    assert body["evidence"] == reports[:1] and body["value"] == {"count": 1}  # later reports fall in its suppression (1h)


def test_a_paused_broker_makes_the_gateway_answer_503_the_sites_retry_and_nothing_is_lost(broker: Broker, tmp_path: Path) -> None:
    with LivePath(broker, tmp_path, SITES, gateway_options=["--produce-timeout", "1s"]) as live:
        # The gateway asks for 5 s (Retry-After); the sites cap that at 1 s to keep the test short.
        traffic = Traffic(live, SITES, max_retry_after=1.0)
        traffic.send(50)
        wait_for(lambda: all(d.stats().delivered_total > 50 for d in traffic.dispatchers.values()), "the first signals delivered")
        os.kill(broker.process.pid, signal.SIGSTOP)
        try:
            traffic.send(300)
            wait_for(lambda: traffic.failures("unavailable") >= 2, "every site answered 503 twice")
            traffic.send(100)
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
        traffic.send(50)
        traffic.stop()
        lines = live.signal_lines()
    traffic.check_each_once_in_emit_order(lines)
