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

from schemas.durations import duration_option
from schemas.errors import Problems


class ConfigProblems(Problems):
    """The gateway cannot start as configured; ``problems`` holds one whole line each (exit 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``logystera gateway`` (docs/gateway.md)."""
    parser.add_argument("--registry", required=True, metavar="FILE", help="site registry (YAML)")
    parser.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="signals", help="topic for signals and ticks (default: signals)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8088, help="port to listen on (default: 8088)")
    parser.add_argument("--tick-interval", type=duration_option, default="10s", metavar="DURATION",
                        help="one tick per site this often (default: 10s)")
    parser.add_argument("--ticker-lock", default=".logystera/ticker.lock", metavar="PATH",
                        help="lease file shared by the gateways of this host: its holder writes the ticks")
    parser.add_argument("--no-ticker", action="store_true", help="never write ticks from this process")
    parser.add_argument("--dedup-window", type=duration_option, default="10m", metavar="DURATION",
                        help="remember taken batch ids this long (default: 10m)")
    parser.add_argument("--produce-timeout", type=duration_option, default="5s", metavar="DURATION",
                        help="wait this long for the broker before answering 503 (default: 5s)")
    parser.add_argument("--max-future", type=duration_option, default="5m", metavar="DURATION",
                        help="refuse a signal whose ts is further ahead of this gateway's clock (default: 5m)")
    parser.add_argument("--header-timeout", type=duration_option, default="5s", metavar="DURATION",
                        help="close a connection whose request head is not complete this long after it opened or was answered "
                             "(default: 5s)")
    parser.add_argument("--body-timeout", type=duration_option, default="10s", metavar="DURATION",
                        help="answer 408 to a request whose body is not complete this long after its head (default: 10s)")
    parser.add_argument("--send-timeout", type=duration_option, default="10s", metavar="DURATION",
                        help="reset a connection whose client leaves over 64 KiB of an answer unread this long (default: 10s)")
    parser.add_argument("--max-connections", type=int, default=512, metavar="N",
                        help="answer 503 to and close connections beyond this many open ones (default: 512)")
    parser.add_argument("--max-pending-mib", type=int, default=64, metavar="N",
                        help="MiB of request bodies held before their signature is checked, all requests together (default: 64)")
    parser.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka producer setting (repeatable), e.g. security.protocol=SSL")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _positive(option: str, ms: int, problems: list[str]) -> int:
    """A duration option's milliseconds (argparse parsed them), after checking that they are more than 0."""
    if ms <= 0:
        problems.append(f"logystera: error: {option}: must be more than 0")
    return ms


def run_gateway(args: argparse.Namespace) -> int:
    """Validate everything, then serve until stopped; :class:`ConfigProblems` for anything a user must fix."""
    import uvicorn

    from gateway.app import Gateway, GatewayConfig, uvicorn_config
    from gateway.kafka import KafkaWriter
    from gateway.registry import RegistryError, load_registry
    from sinks.kafka_client import KafkaUnreachable, parse_kafka_options

    problems: list[str] = []
    tick_ms = args.tick_interval
    if tick_ms < 1000 or tick_ms % 1000:
        problems.append("logystera: error: --tick-interval: must be a whole number of seconds, at least 1s")
    dedup_ms = _positive("--dedup-window", args.dedup_window, problems)
    produce_ms = _positive("--produce-timeout", args.produce_timeout, problems)
    max_future_ms = _positive("--max-future", args.max_future, problems)
    if max_future_ms % 1000:
        problems.append("logystera: error: --max-future: must be a whole number of seconds")
    header_ms = _positive("--header-timeout", args.header_timeout, problems)
    body_ms = _positive("--body-timeout", args.body_timeout, problems)
    send_ms = _positive("--send-timeout", args.send_timeout, problems)
    if args.max_connections < 1:
        problems.append("logystera: error: --max-connections: must be at least 1")
    if args.max_pending_mib < 1:
        problems.append("logystera: error: --max-pending-mib: must be at least 1 (one batch body may be 1 MiB)")
    kafka_options = parse_kafka_options(args.kafka_option, problems)
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
    except KafkaUnreachable as error:
        log.warning("%s; batches get 503 until it answers", error)

    config = GatewayConfig(
        tick_interval_ms=tick_ms,
        ticker_lock=None if args.no_ticker else Path(args.ticker_lock),
        dedup_window_s=dedup_ms / 1000,
        produce_timeout_s=produce_ms / 1000,
        max_future_s=max_future_ms // 1000,
        header_timeout_s=header_ms / 1000,
        body_timeout_s=body_ms / 1000,
        send_timeout_s=send_ms / 1000,
        max_connections=args.max_connections,
        max_pending_bytes=args.max_pending_mib << 20,
    )
    gateway = Gateway(registry, writer, config)
    log.info("%d sites registered; %s", len(registry.ids), "no ticker" if args.no_ticker else f"ticker lease {args.ticker_lock}")
    server = uvicorn.Server(uvicorn_config(gateway, host=args.host, port=args.port, log_level=level))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to whatever handler was there
    # before it; a no-op handler makes that graceful stop an ordinary exit 0, as `logystera detect` does.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    host, port = listener.getsockname()[:2]
    log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    server.run(sockets=[listener])
    return 0
