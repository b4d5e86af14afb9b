"""Fixtures of the gateway tests: one Tansu broker shared by the module's tests (a fresh topic per test), gateways on it."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.gateway.support import RunningGateway, Sender, start_gateway
from tests.support.kafka_broker import Broker, start_broker, unique_topic


@pytest.fixture(scope="module")
def shared_broker() -> Iterator[Broker]:
    """A broker for tests that do not stop or pause it (those take the function-scoped ``broker``)."""
    with start_broker() as running:
        yield running


@pytest.fixture
def topic(shared_broker: Broker) -> str:
    name = unique_topic("signals")
    shared_broker.create_topics([name], partitions=3)
    return name


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways (``start_gateway`` arguments); all are stopped after the test."""
    running: list[RunningGateway] = []

    def make(bootstrap: str, topic: str, **options: Any) -> RunningGateway:
        gateway = start_gateway(bootstrap, topic, **options)
        running.append(gateway)
        return gateway

    yield make
    for gateway in running:
        gateway.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway], shared_broker: Broker, topic: str) -> RunningGateway:
    return make_gateway(shared_broker.bootstrap, topic)


@pytest.fixture
def sender(gateway: RunningGateway) -> Iterator[Sender]:
    client = Sender(gateway.url, gateway.gateway.clock)
    yield client
    client.client.close()


@pytest.fixture
def paused(broker: Broker) -> Iterator[Callable[[bool], None]]:
    """``paused(True)`` stops the (function-scoped) broker's process, ``paused(False)`` continues it; always continued afterwards."""

    def pause(stop: bool) -> None:
        os.kill(broker.process.pid, signal.SIGSTOP if stop else signal.SIGCONT)

    yield pause
    pause(False)
