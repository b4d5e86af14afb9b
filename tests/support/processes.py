"""The live path as a user runs it, for the end-to-end tests and ``bench/live.py``.

``logystera gateway`` and ``logystera detect`` run as child processes of the
console script in this interpreter's environment, on loopback, against a Tansu
broker (``tests/support/kafka_broker.py``); sites are real :class:`dispatcher.Dispatcher`
instances in the calling process. Nothing here sleeps to synchronise: every
wait polls a condition against a deadline.

- :class:`SiteRegistry` writes a registry file whose secrets come from
  environment variables, and the environment that holds them.
- :class:`Gateway` / :func:`start_gateway`: a gateway process on a port it
  picks itself (``--port 0``; the port is read from uvicorn's start line), or
  on a given one, to come back where its sites expect it after a stop.
- :class:`Detect`: a detect process.
- :func:`make_dispatcher`: a dispatcher tuned for tests (short backoff and
  cooldown, no heartbeats) that the caller starts and stops.
- :func:`topic_lines`: what a topic holds, checked to be keyed by site.
- :class:`LivePath`: all of it for one test (topics, registry, gateway, and the
  detect processes and dispatchers the test adds), stopped at the end.

Children run under ``setpriv --pdeathsig KILL`` where it exists, as the broker
does: they die with the thread that started them even if the test process is
killed outright, so start them from the main thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dispatcher import Dispatcher
from tests.support.kafka_broker import Broker, unique_topic
from tests.support.polling import wait_for

T = TypeVar("T")

LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or shutil.which("logystera")
_SETPRIV = shutil.which("setpriv")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"logystera.gateway: listening on http://127\.0\.0\.1:(\d+)$")


class LogysteraProcess:
    """A ``logystera`` child process; its stderr is read line by line by a thread (a full pipe would stall it)."""

    def __init__(self, args: Iterable[str], env: Mapping[str, str] | None = None) -> None:
        assert LOGYSTERA is not None, "the logystera console script is not installed"
        self.args = [LOGYSTERA, *args]
        command = [_SETPRIV, "--pdeathsig", "KILL", "--", *self.args] if _SETPRIV else self.args
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"stderr of logystera {self.args[1]}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.process.poll() is None

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def output(self) -> str:
        """Everything it wrote to stderr so far, for assertion messages."""
        return "\n".join(self.lines)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` (if it still runs), wait for the exit and the last of its stderr; the exit status."""
        if self.running:
            self.process.send_signal(signum)
        returncode = self.process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)
        return returncode


@dataclass(frozen=True)
class SiteRegistry:
    """The gateway's registry file, every secret in an environment variable (the file itself holds none)."""

    path: Path
    secrets: dict[str, str]

    @classmethod
    def write(cls, path: Path, sites: Iterable[str]) -> SiteRegistry:
        """Register ``sites`` (in this order: the ticker writes in file order) with a secret each."""
        secrets = {site: f"e2e-secret-of-{site}" for site in sites}
        entries = "".join(f"  - id: {site}\n    secret_env: {cls.variable(site)}\n" for site in secrets)
        path.write_text(f"sites:\n{entries}", encoding="utf-8")
        return cls(path, secrets)

    @staticmethod
    def variable(site: str) -> str:
        """The environment variable holding ``site``'s secret."""
        return "LOGYSTERA_E2E_SECRET_" + re.sub(r"[^A-Z0-9]", "_", site.upper())

    @property
    def env(self) -> dict[str, str]:
        """The environment a gateway needs to resolve every secret."""
        return {self.variable(site): secret for site, secret in self.secrets.items()}


class Gateway(LogysteraProcess):
    """A running ``logystera gateway``; ``url`` is where sites post."""

    def __init__(self, args: Iterable[str], env: Mapping[str, str]) -> None:
        super().__init__(args, env)
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL sites are configured with."""
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self) -> Gateway:
        """Wait for uvicorn's start line and take the port from it (the process may have picked it)."""

        def listening() -> re.Match[str] | None:
            assert self.running, f"the gateway exited with status {self.process.returncode}:\n{self.output()}"
            return next((m for m in map(_LISTENING.search, list(self.lines)) if m), None)

        self.port = int(wait_for(listening, "gateway listening", START_TIMEOUT_S)[1])
        return self


def start_gateway(broker: Broker, topic: str, registry: SiteRegistry, workdir: Path, *, port: int = 0,
                  tick_interval: str = "1s", options: Iterable[str] = ()) -> Gateway:
    """A gateway writing ``topic`` (``port`` 0: any free port); ticks every ``tick_interval`` under a lease in ``workdir``."""
    args = ["gateway", "--registry", str(registry.path), "--bootstrap", broker.bootstrap, "--topic", topic, "--port", str(port),
            "--tick-interval", tick_interval, "--ticker-lock", str(workdir / "ticker.lock"), "--log-level", "info", *options]
    gateway = Gateway(args, registry.env)
    try:
        return gateway.wait_listening()
    except BaseException:
        gateway.stop(signal.SIGKILL)
        raise


class Detect(LogysteraProcess):
    """A running ``logystera detect`` from ``topic`` to ``alerts_topic`` with the rules of ``rules``."""

    def __init__(self, broker: Broker, topic: str, alerts_topic: str, rules: Path, *options: str) -> None:
        super().__init__(["detect", "--bootstrap", broker.bootstrap, "--topic", topic, "--alerts-topic", alerts_topic,
                          "--rules", str(rules), *options])


def make_dispatcher(site: str, registry: SiteRegistry, url: str, workdir: Path, **overrides: Any) -> Dispatcher:
    """A dispatcher for ``site`` with test pacing: retries within a second, breaker probes after 0.5 s, no heartbeats."""
    settings: dict[str, Any] = {
        "buffer_path": workdir / f"{site}.sqlite3", "poll_interval": 0.05, "backoff_base": 0.05, "backoff_cap": 0.5,
        "breaker_cooldown": 0.5, "heartbeat_every": 3600.0, "timeout": 10.0, **overrides,
    }
    return Dispatcher(site, registry.secrets[site], url, **settings)


def topic_lines(broker: Broker, topic: str) -> list[str]:
    """Every record of ``topic`` as text, partition by partition in offset order; each must be keyed by the site it names."""
    found = []
    for record in broker.read_all(topic):
        assert record.value is not None
        text = record.value.decode("utf-8")
        assert record.key == json.loads(text)["site"].encode(), f"record {record.partition}/{record.offset} is not keyed by its site"
        found.append(text)
    return found


class LivePath:
    """The path from sites to alerts on one broker: ``signals`` and ``alerts`` topics, a registry, a gateway in front.

    Detect processes and dispatchers are added by the test; :meth:`close` (or
    leaving the ``with`` block) stops everything this object started, whatever
    state the test left.
    """

    def __init__(self, broker: Broker, workdir: Path, sites: Iterable[str], partitions: int = 3, tick_interval: str = "1s",
                 gateway_options: Iterable[str] = ()) -> None:
        self.broker = broker
        self.workdir = workdir
        self.signals_topic, self.alerts_topic = unique_topic("signals"), unique_topic("alerts")
        broker.create_topics([self.signals_topic, self.alerts_topic], partitions=partitions)
        self.registry = SiteRegistry.write(workdir / "sites.yaml", sites)
        self.tick_interval = tick_interval
        self.gateway_options = list(gateway_options)
        self._processes: list[LogysteraProcess] = []
        self._dispatchers: list[Dispatcher] = []
        self.gateway = self.start_gateway()

    def start_gateway(self, port: int = 0) -> Gateway:
        """A gateway in front of the signals topic (``port`` 0: a free one); it becomes :attr:`gateway`."""
        self.gateway = start_gateway(self.broker, self.signals_topic, self.registry, self.workdir, port=port,
                                     tick_interval=self.tick_interval, options=self.gateway_options)
        self._processes.append(self.gateway)
        return self.gateway

    def detect(self, rules: Path, *options: str) -> Detect:
        """A detect process from the signals topic to the alerts topic."""
        detect = Detect(self.broker, self.signals_topic, self.alerts_topic, rules, *options)
        self._processes.append(detect)
        return detect

    def dispatcher(self, site: str, **overrides: Any) -> Dispatcher:
        """A started dispatcher for ``site``, posting to the current gateway (see :func:`make_dispatcher`)."""
        dispatcher = make_dispatcher(site, self.registry, self.gateway.url, self.workdir, **overrides)
        self._dispatchers.append(dispatcher)
        dispatcher.start()
        return dispatcher

    def signal_lines(self) -> list[str]:
        """Every record of the signals topic as written, partition by partition in offset order."""
        return topic_lines(self.broker, self.signals_topic)

    def alerts(self) -> list[str]:
        """Every notification record on the alerts topic, as written."""
        return topic_lines(self.broker, self.alerts_topic)

    def __enter__(self) -> LivePath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every dispatcher (without waiting for delivery) and stop every process still running."""
        for dispatcher in self._dispatchers:
            dispatcher.close(timeout=0)
        for process in self._processes:
            if process.running:
                process.stop(signal.SIGKILL)
