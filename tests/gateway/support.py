"""Running a real gateway for tests: uvicorn in a thread on a free loopback port, and a client that signs like a site.

``RunningGateway`` serves :func:`gateway.app.create_app` exactly as
``logystera gateway`` does (same uvicorn, same lifespan); only the process
differs, so a test can read the gateway's state and metrics directly.
``Sender`` signs with the dispatcher's own functions, checked against the
independent ``standardwebhooks`` package in the dispatcher tests.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import uvicorn

from dispatcher import new_id, sign_batch
from gateway.app import Gateway, GatewayConfig, uvicorn_config
from gateway.kafka import KafkaWriter
from gateway.registry import Registry, Site
from protocol.wire import encode_batch, secret_bytes
from schemas.factory import make_signal, signal_line
from tests.support.polling import wait_for

SECRETS = {"shop-eu": "plain-secret-for-tests", "blog": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "quiet": "quiet-secret"}
"""One plain and one ``whsec_`` secret; ``quiet`` sends nothing (it only gets ticks)."""
DISABLED = {"blog": frozenset({"request"})}
SENT_AT = "2026-11-28T10:00:00.000Z"
START_TIMEOUT_S = 10.0


def registry(sites: Iterable[str] = tuple(SECRETS)) -> Registry:
    """The test sites, keys resolved the way the registry file resolves them."""
    return Registry({site: Site(site, secret_bytes(SECRETS[site]), DISABLED.get(site, frozenset())) for site in sites})


class Clock:
    """The gateway's clock in tests: real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def mail(n: int, site: str = "shop-eu", ts: str = SENT_AT) -> dict[str, Any]:
    """A valid mail signal whose id carries its number."""
    return make_signal(site, "mail", ts, f"mail-{n:06d}", outcome="failed", transport="smtp", error_class=f"e{n}")


class RunningGateway:
    """A :class:`Gateway` served by uvicorn in a thread; ``stop`` runs the lifespan shutdown as SIGTERM would."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP (proto 0 costs ~40 ms a response).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(gateway, timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, name="test-gateway", daemon=True)

    def start(self) -> RunningGateway:
        self._thread.start()
        wait_for(lambda: self.server.started or not self._thread.is_alive(), "uvicorn start", START_TIMEOUT_S)
        assert self._thread.is_alive(), "uvicorn exited during startup"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive(), "uvicorn did not stop"
        self._socket.close()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's metrics, as ``GET /metrics`` shows it (0 if absent)."""
        return metric_value(httpx.get(f"{self.url}/metrics", timeout=5).text, name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float:
    """A sample from a Prometheus text exposition (0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name and ",".join(sorted((match.group(2) or "").split(","))).strip(",") == wanted:
            return float(match.group(3))
    return 0.0


def start_gateway(bootstrap: str, topic: str, clock: Callable[[], float] = time.time, kafka_options: dict[str, str] | None = None,
                  **config: Any) -> RunningGateway:
    """A gateway on ``topic`` with the test sites; no ticker unless ``ticker_lock`` is given."""
    settings = replace(GatewayConfig(ticker_lock=None), **config)
    writer = KafkaWriter(bootstrap, topic, kafka_options)
    return RunningGateway(Gateway(registry(), writer, settings, clock)).start()


@dataclass
class Sender:
    """Signs and posts batches the way a site does, with knobs to get every part wrong."""

    url: str
    clock: Callable[[], float] = time.time
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def body(self, site: str, signals: list[Any], batch_id: str) -> bytes:
        return batch_body(site, signals, batch_id)

    def post(self, site: str, signals: list[Any], *, batch_id: str | None = None, body: bytes | None = None,
             secret: str | None = None, timestamp: int | None = None, headers: dict[str, str | bytes] | None = None,
             drop: Iterable[str] = ()) -> httpx.Response:
        """POST one batch: signed with the site's secret unless told otherwise; ``drop`` removes headers."""
        batch_id = batch_id or new_id()
        body = self.body(site, signals, batch_id) if body is None else body
        timestamp = int(self.clock()) if timestamp is None else timestamp
        signature = sign_batch(secret or SECRETS.get(site, "unregistered-secret"), batch_id, timestamp, body)
        sent: dict[str, str | bytes] = {"content-type": "application/json", "webhook-id": batch_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": signature}
        sent.update(headers or {})
        for name in drop:
            sent.pop(name, None)
        return self.client.post(f"{self.url}/v1/batches", content=body, headers=sent)


def batch_body(site: str, signals: list[Any], batch_id: str) -> bytes:
    """A request body as the dispatcher writes it (any JSON values as signals)."""
    return encode_batch(site, batch_id, SENT_AT, [json.dumps(s, separators=(",", ":"), ensure_ascii=False) for s in signals])


def values(records: Iterable[Any]) -> list[dict[str, Any]]:
    """The JSON values of broker records."""
    return [json.loads(record.value) for record in records]


def signal_lines(signals: Iterable[dict[str, Any]]) -> list[bytes]:
    """The compact bytes the gateway writes for valid signals."""
    return [signal_line(s).encode() for s in signals]


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the gateway sends until it closes the connection (fails if it does not within ``timeout``).

    Closing a socket with unread bytes in its buffer sends a reset (Linux): a reset is the server closing the
    connection, an allowed outcome; whatever it answered before that is returned and checked.
    """
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received

