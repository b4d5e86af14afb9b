"""The ``logystera`` console script (cli.md).

User mistakes (bad paths, bad rules, bad options) end in one clear line on
stderr and a documented exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gateway.command import add_arguments as add_gateway_arguments
from schemas.durations import duration_option
from schemas.errors import EXIT_USAGE, LogysteraError, UsageError

DEFAULT_STORE = "chdb://.logystera/store"


class _Parser(argparse.ArgumentParser):
    """argparse, with its mistakes reported like every other usage error (one line, exit 2) by :func:`main`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _load_ruleset(directory: str):  # type: ignore[no-untyped-def]
    """The rule set, or :class:`schemas.rule_loader.RuleLoadError` with every problem (printed one per line, exit 2)."""
    from schemas.rule_loader import load_rules

    return load_rules(directory)


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Load every rule, metric and channel; report every problem."""
    ruleset = _load_ruleset(args.directory)
    enabled = len(ruleset.enabled_rules)
    print(
        f"{args.directory}: {len(ruleset.rules)} rules ({enabled} enabled), "
        f"{len(ruleset.metrics)} metrics, {len(ruleset.channels)} channels: ok"
    )
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    """Run rule unit-test files and print a diff for each failing case."""
    from cli.rule_tests import RuleTestError, run_test_file

    paths: list[Path] = []
    for name in args.files:
        path = Path(name)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml")))
        elif path.exists():
            paths.append(path)
        else:
            raise UsageError(f"{name}: no such file or directory")
    if not paths:
        raise UsageError("no rule test files found")
    passed = failed = 0
    broken: list[str] = []
    for path in paths:
        try:
            results = run_test_file(path)
        except RuleTestError as error:
            broken.append(str(error))
            print(f"ERROR {error}", file=sys.stderr)
            continue
        for result in results:
            if result.passed:
                passed += 1
                if args.verbose:
                    print(f"PASS {result.file}: {result.name}")
            else:
                failed += 1
                print(f"FAIL {result.file}: {result.name}")
                print("\n".join(result.diff))
    print(f"rule tests: {passed} passed, {failed} failed" + (f", {len(broken)} file errors" if broken else ""))
    if broken:
        return EXIT_USAGE
    return 1 if failed else 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a JSON Lines file through the detection flow."""
    from flows.replay import replay

    if args.signals != "-" and not Path(args.signals).is_file():
        raise UsageError(f"{args.signals}: no such file")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    link_base = _link_base(args.link_base)
    ruleset = _load_ruleset(args.rules)
    store = None if args.store in (None, "none") else _open_store(args.store)
    out = sys.stdout if args.out in (None, "-") else _open_output(args.out)

    def report(rejects: list[tuple[int, str]]) -> None:
        sys.stderr.write("".join(f"line {line}: {reason}\n" for line, reason in rejects))
        sys.stderr.flush()

    result = replay(args.signals, ruleset.enabled_rules, workers=args.workers, lateness=args.allowed_lateness,
                    link_base=link_base, store=store, metrics=ruleset.metrics, on_rejects=report)
    with out:
        for alert in result.alerts:
            out.write(alert)
            out.write("\n")
    print(result.totals_line, file=sys.stderr)
    return 0


def _link_base(text: str) -> str:
    """``--link-base`` as the base of a valid URI (IDNA host, percent-encoded path), or a usage error saying why not."""
    from schemas.alerts import link_base

    try:
        return link_base(text)
    except ValueError as error:  # the value itself is not echoed: it may hold the control character at fault
        raise UsageError(f"--link-base: {error}") from None


def cmd_detect(args: argparse.Namespace) -> int:
    """Run the detection flow on Kafka until SIGINT/SIGTERM (docs/live.md)."""
    from flows.live import DetectSettings, run_detect

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.epoch_interval < 1000 or args.delivery_timeout < 1000:
        raise UsageError("--epoch-interval and --delivery-timeout must be at least 1s")
    link_base = _link_base(args.link_base)
    ruleset = _load_ruleset(args.rules)
    store = None if args.store in (None, "none") else _open_store(args.store)
    settings = DetectSettings(
        bootstrap=args.bootstrap, topic=args.topic, alerts_topic=args.alerts_topic,
        recovery_dir=Path(args.recovery_dir) if args.recovery_dir else None, workers=args.workers,
        lateness=args.allowed_lateness, link_base=link_base, epoch_interval=args.epoch_interval / 1000,
        delivery_timeout=args.delivery_timeout / 1000, exit_at_end=args.exit_at_end,
        kafka_options=_kafka_options(args.kafka_option),
    )
    totals = run_detect(settings, ruleset.enabled_rules, ruleset.metrics, store)
    print(totals.decisions_line, file=sys.stderr)
    print(totals.line, file=sys.stderr)
    return 0


def _add_kafka_option(parser: argparse.ArgumentParser) -> None:
    """``--kafka-option`` of detect and deliver (the gateway's producer-only one is in gateway/command.py)."""
    parser.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                        help="librdkafka setting for every Kafka client (repeatable), e.g. security.protocol=SSL; "
                             "default fetch.wait.max.ms=20")


def _kafka_options(values: list[str]) -> dict[str, str]:
    """The ``--kafka-option`` items, checked now: one line and exit 2 for a malformed, reserved or unknown setting."""
    from sinks.kafka_client import client_options

    return client_options(values)


def default_store() -> str:
    """The store ``db``, ``sql`` and ``demo`` use unless told otherwise: ``$LOGYSTERA_STORE`` or the embedded one."""
    return os.environ.get("LOGYSTERA_STORE") or DEFAULT_STORE


def _open_store(dsn: str, **options: Any):  # type: ignore[no-untyped-def]
    from sinks.clickhouse import Store, StoreConfigError

    try:
        return Store.open(dsn, **options)
    except StoreConfigError as error:
        raise UsageError(f"--store: {error}") from None


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the store's schema (idempotent)."""
    from sinks.clickhouse import Store, StoreConfigError, parse_dsn

    try:
        store = Store(parse_dsn(args.store))
    except StoreConfigError as error:
        raise UsageError(f"--store: {error}") from None
    applied = store.migrate()
    done = f"applied migration(s) {', '.join(map(str, applied))}" if applied else "schema already up to date"
    print(f"{store.address}: {done}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Run one SQL query against the store and print the result."""
    from cli.sql import run_sql
    from sinks.clickhouse import RetryPolicy

    # A person is waiting: a query the store rejects fails at once instead of being retried.
    return run_sql(_open_store(args.store, retry=RetryPolicy(give_up_after=0)), args.query, args.format, sys.stdout)


def _open_output(path: str):  # type: ignore[no-untyped-def]
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--out {path}: {error.strerror}") from None


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of signals, rule files or notification records."""
    schema: dict[str, Any]
    if args.what == "signals":
        from schemas.signals import signals_json_schema

        schema = signals_json_schema()
    elif args.what == "rules":
        from schemas.rules import Rule, RuleFileDocument

        schema = {
            "title": "Logystera rules file",
            "anyOf": [
                {"$ref": "#/$defs/Rule"},
                {"type": "array", "items": {"$ref": "#/$defs/Rule"}},
                {"$ref": "#/$defs/RuleFileDocument"},
            ],
            "$defs": {},
        }
        document = RuleFileDocument.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        definitions = {**document.pop("$defs", {}), "RuleFileDocument": document}
        definitions.setdefault("Rule", Rule.model_json_schema(by_alias=True))
        schema["$defs"] = definitions
    else:
        from schemas.alerts import NotificationRecord

        schema = NotificationRecord.model_json_schema()
    print(json.dumps(schema, indent=2, ensure_ascii=False))
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run the ingest gateway until SIGINT or SIGTERM (docs/gateway.md)."""
    from gateway.command import run_gateway

    return run_gateway(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the bundled scenario and show the alerts as they fire."""
    from cli.demo import run_demo

    return run_demo(Path(args.data_dir), workers=args.workers, store=args.store)


def cmd_deliver(args: argparse.Namespace) -> int:
    """Deliver notification records (a file, or Kafka with --bootstrap) to their channels, recording every attempt."""
    from delivery.command import open_deliver, run_deliver

    if (args.alerts is None) == (args.bootstrap is None):
        raise UsageError("give either a file of notification records or --bootstrap HOST:PORT")
    if args.alerts not in (None, "-") and not Path(args.alerts).is_file():
        raise UsageError(f"{args.alerts}: no such file")
    for name in ("max_attempts", "concurrency"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.kafka_option and args.bootstrap is None:
        raise UsageError("--kafka-option needs --bootstrap")
    ruleset = _load_ruleset(args.rules)
    return run_deliver(open_deliver(args, ruleset.channels, os.environ, _kafka_options(args.kafka_option)))


def _add_detection_options(parser: argparse.ArgumentParser) -> None:
    """The options replay and detect share: the rules, the workers, the store and the two deployment knobs."""
    parser.add_argument("--rules", default="rules", metavar="DIR")
    parser.add_argument("--workers", type=int, default=1, metavar="N")
    parser.add_argument("--store", metavar="DSN", help="ClickHouse DSN, or none (the default)")
    parser.add_argument("--allowed-lateness", type=duration_option, default="60s", metavar="DURATION")
    parser.add_argument("--link-base", default="http://localhost:8080", metavar="URL",
                        help="public base URL of alert links (http/https; a non-ASCII host or path is encoded)")


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar of cli.md."""
    parser = _Parser(prog="logystera", description="Behavioral monitoring: signals in, alerts with evidence out.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    rules = commands.add_parser("rules", help="check or test rule definitions")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, parser_class=_Parser)
    check = rules_commands.add_parser("check", help="load and validate every rule, metric and channel")
    check.add_argument("directory", nargs="?", default="rules")
    check.set_defaults(handler=cmd_rules_check)
    test = rules_commands.add_parser("test", help="run YAML rule unit tests")
    test.add_argument("files", nargs="+", metavar="FILE")
    test.add_argument("-v", "--verbose", action="store_true", help="also list passing cases")
    test.set_defaults(handler=cmd_rules_test)

    replay = commands.add_parser("replay", help="run the detection flow over a JSON Lines file")
    replay.add_argument("signals", metavar="SIGNALS", help="JSON Lines file of signals, or - for stdin")
    replay.add_argument("--out", metavar="FILE", help="notification records (default: stdout)")
    _add_detection_options(replay)
    replay.set_defaults(handler=cmd_replay)

    detect = commands.add_parser("detect", help="run the detection flow on Kafka: signals in, notifications out, crash-safe")
    detect.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    detect.add_argument("--topic", default="signals", help="where signals and ticks are read")
    detect.add_argument("--alerts-topic", default="alerts", help="where notification records are written, keyed by site")
    _add_detection_options(detect)
    detect.add_argument("--recovery-dir", metavar="DIR", help="Bytewax recovery state: a restart resumes where it stopped")
    detect.add_argument("--epoch-interval", type=duration_option, default="10s", metavar="DURATION", help="how often state is snapshotted")
    detect.add_argument("--delivery-timeout", type=duration_option, default="30s", metavar="DURATION",
                        help="wait this long for the broker to acknowledge notifications, then stop")
    detect.add_argument("--exit-at-end", action="store_true", help="stop at the end of the topic instead of waiting for more")
    _add_kafka_option(detect)
    detect.set_defaults(handler=cmd_detect)

    schema = commands.add_parser("schema", help="print a JSON Schema")
    schema.add_argument("what", choices=["signals", "rules", "alerts"])
    schema.set_defaults(handler=cmd_schema)

    demo = commands.add_parser("demo", help="replay a realistic scenario and show the alerts")
    demo.add_argument("--data-dir", default=".logystera/demo", metavar="DIR")
    demo.add_argument("--workers", type=int, default=1, metavar="N")
    demo.add_argument("--store", default=default_store(), metavar="DSN", help="where to store everything (none: nowhere)")
    demo.set_defaults(handler=cmd_demo)

    gateway = commands.add_parser("gateway", help="run the ingest gateway: signed batches in, signals and ticks to Kafka")
    add_gateway_arguments(gateway)
    gateway.set_defaults(handler=cmd_gateway)

    deliver = commands.add_parser("deliver", help="deliver notification records to the channels, every attempt recorded")
    deliver.add_argument("alerts", nargs="?", metavar="FILE", help="JSON Lines of notification records (- = stdin)")
    deliver.add_argument("--bootstrap", metavar="HOST:PORT", help="read the Kafka topic instead (live mode)")
    deliver.add_argument("--topic", default="alerts")
    deliver.add_argument("--group", default="logystera-deliver", metavar="NAME", help="whose committed offsets to use")
    deliver.add_argument("--rules", default="rules", metavar="DIR", help="the channels are defined here")
    deliver.add_argument("--store", default=default_store(), metavar="DSN", help="where every attempt is recorded")
    deliver.add_argument("--max-attempts", type=int, default=10, metavar="N", help="calls per notification and channel")
    deliver.add_argument("--backoff", type=duration_option, default="1s", metavar="DURATION", help="longest wait before the first retry")
    deliver.add_argument("--backoff-cap", type=duration_option, default="60s", metavar="DURATION", help="longest wait before any retry")
    deliver.add_argument("--timeout", type=duration_option, default="10s", metavar="DURATION", help="per attempt")
    deliver.add_argument("--concurrency", type=int, default=4, metavar="N", help="calls in flight per channel")
    deliver.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on /metrics")
    deliver.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST")
    _add_kafka_option(deliver)
    deliver.set_defaults(handler=cmd_deliver)

    db = commands.add_parser("db", help="manage the ClickHouse store")
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    migrate = db_commands.add_parser("migrate", help="create or upgrade the schema")
    migrate.add_argument("--store", default=default_store(), metavar="DSN")
    migrate.set_defaults(handler=cmd_db_migrate)

    sql = commands.add_parser("sql", help="query the store (chDB has no server to point clickhouse-client at)")
    sql.add_argument("query", metavar="QUERY")
    sql.add_argument("--store", default=default_store(), metavar="DSN")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.set_defaults(handler=cmd_sql)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: every :class:`LogysteraError` of every command is reported here, once."""
    # clickhouse-connect logs each failed HTTP call; the store retries them and reports the outcome in one line.
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)
    try:
        args = build_parser().parse_args(argv)
        return int(args.handler(args))
    except LogysteraError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
