"""``logystera gateway``: its options, and running the gateway under uvicorn until SIGINT or SIGTERM.

Imported by ``cli/main.py`` when the parser is built, so this module imports
nothing heavy at the top; Starlette, uvicorn and Kafka load only when the
command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
from pathlib import Path

from schemas.durations import parse_duration


class ConfigProblems(Exception):
    """The gateway cannot start as configured; ``problems`` holds one line each (exit 2)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0])
        self.problems = problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``logystera gateway`` (docs/gateway.md)."""
    parser.add_argument("--registry", required=True, metavar="FILE", help="site registry (YAML)")
    parser.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="signals", help="topic for signals and ticks (default: signals)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8088, help="port to listen on (default: 8088)")
    parser.add_argument("--tick-interval", default="10s", metavar="DURATION", help="one tick per site this often (default: 10s)")
    parser.add_argument("--ticker-lock", default=".logystera/ticker.lock", metavar="PATH",
                        help="lease file shared by the gateways of this host: its holder writes the ticks")
    parser.add_argument("--no-ticker", action="store_true", help="never write ticks from this process")
    parser.add_argument("--dedup-window", default="10m", metavar="DURATION", help="remember taken batch ids this long (default: 10m)")
    parser.add_argument("--produce-timeout", default="5s", metavar="DURATION",
                        help="wait this long for the broker before answering 503 (default: 5s)")
    parser.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka producer setting (repeatable), e.g. security.protocol=SSL")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _duration_ms(option: str, value: str, problems: list[str]) -> int:
    try:
        ms = parse_duration(value)
    except ValueError as error:
        problems.append(f"logystera: error: {option}: {error}")
        return 0
    if ms <= 0:
        problems.append(f"logystera: error: {option}: must be more than 0")
    return ms


def _kafka_options(values: list[str], problems: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            problems.append(f"logystera: error: --kafka-option: {name.strip() or item!r} is not KEY=VALUE")
            continue
        options[name.strip()] = value
    return options


def run_gateway(args: argparse.Namespace) -> int:
    """Validate everything, then serve until stopped; :class:`ConfigProblems` for anything a user must fix."""
    import uvicorn

    from gateway.app import Gateway, GatewayConfig, create_app
    from gateway.kafka import BrokerUnavailable, KafkaWriter
    from gateway.registry import RegistryError, load_registry

    problems: list[str] = []
    tick_ms = _duration_ms("--tick-interval", args.tick_interval, problems)
    if tick_ms and (tick_ms < 1000 or tick_ms % 1000):
        problems.append("logystera: error: --tick-interval: must be a whole number of seconds, at least 1s")
    dedup_ms = _duration_ms("--dedup-window", args.dedup_window, problems)
    produce_ms = _duration_ms("--produce-timeout", args.produce_timeout, problems)
    kafka_options = _kafka_options(args.kafka_option, problems)
    if not 0 <= args.port <= 65535:
        problems.append("logystera: error: --port: must be 0–65535")
    try:
        registry = load_registry(args.registry)
    except RegistryError as error:
        problems.extend(error.problems)
    if problems:
        raise ConfigProblems(problems)
    try:
        writer = KafkaWriter(args.bootstrap, args.topic, kafka_options)
    except ValueError as error:
        raise ConfigProblems([f"logystera: error: --kafka-option: {error}"]) from None
    # Bind before anything starts, so that a port in use is a one-line usage error (uvicorn would log it and exit 3).
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listener = socket.create_server((args.host, args.port), family=family)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigProblems([f"logystera: error: --host/--port {args.host}:{args.port}: {reason}"]) from None

    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("logystera.gateway")
    try:
        partitions = writer.partitions(5.0)
        if partitions:
            log.info("topic %r has %d partitions", args.topic, partitions)
        else:
            log.warning("topic %r does not exist yet: create it (GET /healthz answers 503 until then)", args.topic)
    except BrokerUnavailable as error:
        log.warning("broker %s not reachable yet (%s); batches get 503 until it is", args.bootstrap, error)

    config = GatewayConfig(
        tick_interval_ms=tick_ms,
        ticker_lock=None if args.no_ticker else Path(args.ticker_lock),
        dedup_window_s=dedup_ms / 1000,
        produce_timeout_s=produce_ms / 1000,
    )
    gateway = Gateway(registry, writer, config)
    log.info("%d sites registered; %s", len(registry.ids), "no ticker" if args.no_ticker else f"ticker lease {args.ticker_lock}")
    server = uvicorn.Server(
        uvicorn.Config(create_app(gateway), host=args.host, port=args.port, log_config=None, log_level=level,
                       access_log=False, server_header=False, lifespan="on")
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to whatever handler was there
    # before it; a no-op handler makes that graceful stop an ordinary exit 0, as `logystera detect` does.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    host, port = listener.getsockname()[:2]
    log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    server.run(sockets=[listener])
    return 0
