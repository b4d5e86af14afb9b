"""The ticker: aligned, deterministic ticks per site in the site's partition; one leader; takeover; never backwards.

In-process tests drive :meth:`Ticker.step` on a clock they set; the last test
runs two real ``logystera gateway`` processes against one lock file and kills
the leader with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.kafka import DeliveryHandle, KafkaWriter
from gateway.metrics import GatewayMetrics
from gateway.ticker import Lease, Ticker
from schemas.factory import make_tick, signal_line
from schemas.timestamps import parse_ts
from tests.gateway.support import SECRETS, RunningGateway, Sender, mail, metric_value
from tests.support.kafka_broker import Broker, unique_topic
from tests.support.polling import wait_for
from tests.support.ports import free_port

pytestmark = pytest.mark.broker

SITES = list(SECRETS)
T0 = 1_795_860_000.0  # 2026-11-28T10:00:00Z, a multiple of 10 s
REPO = Path(__file__).resolve().parents[2]
LEADER = "logystera_gateway_ticker_leader"


def sample(metrics: GatewayMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


class SetClock:
    """A clock that says what the test last set."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_ticker(tmp_path: Path) -> Iterator[Callable[..., tuple[Ticker, SetClock, GatewayMetrics]]]:
    made: list[tuple[Ticker, KafkaWriter]] = []

    def make(bootstrap: str, topic: str, now: float, lock: Path = tmp_path / "ticker.lock",
             interval_ms: int = 10_000) -> tuple[Ticker, SetClock, GatewayMetrics]:
        writer = KafkaWriter(bootstrap, topic)
        writer.start()
        clock, metrics = SetClock(now), GatewayMetrics()
        ticker = Ticker(SITES, interval_ms, writer, Lease(lock), metrics, clock)
        made.append((ticker, writer))
        return ticker, clock, metrics

    yield make
    for ticker, writer in made:
        ticker.stop()
        writer.close(1.0)


def written(handle: DeliveryHandle | None) -> DeliveryHandle:
    assert handle is not None, "the ticker wrote no round"
    handle.future.result(15)
    assert handle.all_written, handle.error
    return handle


def ticks_by_site(broker: Broker, topic: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in broker.read_all(topic):
        value = json.loads(record.value or b"null")
        assert record.key == value["site"].encode()
        if value["type"] == "tick":
            out[value["site"]].append(value)
    return dict(out)


def test_ticks_are_aligned_deterministic_and_in_each_sites_partition(
    shared_broker: Broker, topic: str, make_ticker: Callable[..., tuple[Ticker, SetClock, GatewayMetrics]],
    make_gateway: Callable[..., RunningGateway]
) -> None:
    ticker, clock, metrics = make_ticker(shared_broker.bootstrap, topic, T0 + 7.345)
    written(ticker.step())
    assert ticker.step() is None  # same slot: nothing new
    clock.now = T0 + 10.0
    written(ticker.step())
    clock.now = T0 + 45.9  # a late wake-up: the slots in between are not made up for
    written(ticker.step())

    slots = [int(T0 * 1000), int(T0 * 1000) + 10_000, int(T0 * 1000) + 40_000]
    ticks = ticks_by_site(shared_broker, topic)
    for site in SITES:
        assert [json.dumps(t, separators=(",", ":")) for t in ticks[site]] == [signal_line(make_tick(site, s)) for s in slots]
    assert ticks["shop-eu"][0] == {"v": 1, "id": "tick-1795860000-" + ticks["shop-eu"][0]["id"][-8:], "site": "shop-eu",
                                   "type": "tick", "ts": "2026-11-28T10:00:00.000Z"}
    assert sample(metrics, "logystera_gateway_ticks_written_total") == 9

    # Signals posted through a gateway (its own producer) land in the partition of their site's ticks.
    Sender(make_gateway(shared_broker.bootstrap, topic).url).post("shop-eu", [mail(1)])
    Sender(make_gateway(shared_broker.bootstrap, topic).url).post("blog", [mail(2, site="blog")])
    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    for record in shared_broker.read_all(topic):
        partitions[record.key].add(record.partition)
    assert all(len(parts) == 1 for parts in partitions.values()), partitions


def test_one_leader_per_lock_and_the_standby_takes_over_after_the_last_slot(
    shared_broker: Broker, topic: str, make_ticker: Callable[..., tuple[Ticker, SetClock, GatewayMetrics]]
) -> None:
    first, first_clock, first_metrics = make_ticker(shared_broker.bootstrap, topic, T0 + 20.5)
    second, second_clock, second_metrics = make_ticker(shared_broker.bootstrap, topic, T0 + 20.5)
    written(first.step())
    assert second.step() is None
    assert (first.leader, second.leader) == (True, False)
    assert (sample(first_metrics, LEADER), sample(second_metrics, LEADER)) == (1, 0)
    first_clock.now = second_clock.now = T0 + 30.1
    written(first.step())
    assert second.step() is None

    first.stop()  # hands the lease over
    assert sample(first_metrics, LEADER) == 0
    # The standby's clock runs behind the old leader's: it must not write slot 20 or 30 again, or anything older.
    second_clock.now = T0 + 25.0
    assert second.step() is None and second.leader
    second_clock.now = T0 + 39.99
    assert second.step() is None
    second_clock.now = T0 + 40.0
    written(second.step())
    # Nor after its own clock steps back.
    second_clock.now = T0 + 12.0
    assert second.step() is None

    for site, ticks in ticks_by_site(shared_broker, topic).items():
        assert [parse_ts(t["ts"]) for t in ticks] == [int(T0 * 1000) + s for s in (20_000, 30_000, 40_000)], site


def test_a_slot_is_recorded_before_its_ticks_so_a_leader_dying_mid_round_leaves_a_gap_never_a_repeat(
    shared_broker: Broker, topic: str, tmp_path: Path, make_ticker: Callable[..., tuple[Ticker, SetClock, GatewayMetrics]]
) -> None:
    dying = Lease(tmp_path / "ticker.lock")
    assert dying.acquire()
    dying.record(int(T0 * 1000) + 50_000)  # recorded, then the process died before writing a tick
    dying.release()
    ticker, clock, _ = make_ticker(shared_broker.bootstrap, topic, T0 + 55.0)
    assert ticker.step() is None
    clock.now = T0 + 60.0
    written(ticker.step())
    assert (tmp_path / "ticker.lock").read_text() == f"{int(T0 * 1000) + 60_000}\n"
    assert {site: [t["ts"] for t in ticks] for site, ticks in ticks_by_site(shared_broker, topic).items()} == {
        site: ["2026-11-28T10:01:00.000Z"] for site in SITES
    }


def test_rounds_are_skipped_not_queued_while_the_broker_does_not_confirm(
    broker: Broker, paused: Callable[[bool], None], make_ticker: Callable[..., tuple[Ticker, SetClock, GatewayMetrics]]
) -> None:
    topic = unique_topic("signals")
    broker.create_topics([topic], partitions=3)
    ticker, clock, metrics = make_ticker(broker.bootstrap, topic, T0 + 1.0)
    written(ticker.step())  # connected, producer id acquired
    paused(True)
    clock.now = T0 + 10.0
    stuck = ticker.step()
    assert stuck is not None and not stuck.future.done()
    for later in (20.0, 30.0):
        clock.now = T0 + later
        assert ticker.step() is None
    assert sample(metrics, "logystera_gateway_tick_rounds_skipped_total") == 2
    paused(False)
    written(stuck)
    clock.now = T0 + 40.0
    written(ticker.step())
    assert {site: [t["ts"][11:19] for t in ticks] for site, ticks in ticks_by_site(broker, topic).items()} == {
        site: ["10:00:00", "10:00:10", "10:00:40"] for site in SITES
    }


# -- two real gateway processes -------------------------------------------------------------------------------------


class GatewayProcess:
    """``logystera gateway`` as a child process, its output kept in a file."""

    def __init__(self, tmp_path: Path, name: str, bootstrap: str, topic: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"{name}.log"
        env = {**os.environ, **{f"SECRET_{site.replace('-', '_').upper()}": secret for site, secret in SECRETS.items()}}
        command = [sys.executable, "-m", "cli.main", "gateway", "--registry", str(tmp_path / "sites.yaml"), "--bootstrap", bootstrap,
                   "--topic", topic, "--port", str(self.port), "--tick-interval", "1s", "--ticker-lock", str(tmp_path / "ticker.lock")]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def health(self) -> dict[str, Any] | None:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).json()  # type: ignore[no-any-return]
        except httpx.HTTPError:
            return None

    def ticks_written(self) -> float:
        return metric_value(httpx.get(f"{self.url}/metrics", timeout=5).text, "logystera_gateway_ticks_written_total")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.mark.slow
@pytest.mark.process
def test_two_gateway_processes_write_one_tick_stream_and_the_second_takes_over_when_the_first_is_killed(
    shared_broker: Broker, topic: str, tmp_path: Path
) -> None:
    (tmp_path / "sites.yaml").write_text("sites:\n" + "".join(
        f"  - id: {site}\n    secret_env: SECRET_{site.replace('-', '_').upper()}\n" for site in SECRETS))
    first = GatewayProcess(tmp_path, "first", shared_broker.bootstrap, topic)
    second: GatewayProcess | None = None
    try:
        wait_for(lambda: (first.health() or {}).get("ticker") == "leader", f"lead by the first gateway:\n{first.log.read_text()}", 30)
        second = GatewayProcess(tmp_path, "second", shared_broker.bootstrap, topic)
        wait_for(lambda: (second.health() or {}).get("ticker") == "standby", f"standby second gateway:\n{second.log.read_text()}", 30)
        wait_for(lambda: first.ticks_written() >= 3 * len(SITES), "three rounds from the leader", 15)
        assert second.ticks_written() == 0
        before = ticks_by_site(shared_broker, topic)

        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        wait_for(lambda: (second.health() or {}).get("ticker") == "leader", "takeover", 10)
        wait_for(lambda: second.ticks_written() >= 3 * len(SITES), "three rounds from the new leader", 15)
    finally:
        first.stop()
        if second is not None:
            second.stop()

    assert "this gateway now writes the ticks" in second.log.read_text()
    for process in (first, second):  # logs at info level: never a secret
        assert not any(secret in process.log.read_text() for secret in SECRETS.values())
    ticks = ticks_by_site(shared_broker, topic)
    assert set(ticks) == set(SITES)
    for site, stream in ticks.items():
        times = [parse_ts(t["ts"]) for t in stream]
        assert all(t % 1000 == 0 for t in times), site
        assert times == sorted(set(times)), f"{site}: ticks repeat or go backwards: {times}"
        assert [t["id"] for t in stream] == [make_tick(site, t)["id"] for t in times]
        assert len(stream) > len(before[site]) + 2, site  # the second process continued the same stream
