"""The ``logystera`` console script (cli.md).

User mistakes (bad paths, bad rules, bad options) end in one clear line on
stderr and a documented exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
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
from web.command import add_arguments as add_web_arguments

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
    """Replay a JSON Lines file through the detection flow (with ``--processes``, as a local cluster: docs/scaling.md)."""
    from flows.cluster import start_local_cluster

    _no_last_collection()
    if args.signals != "-" and not Path(args.signals).is_file():
        raise UsageError(f"{args.signals}: no such file")
    shape = _cluster_shape(args)

    def report(rejects: list[tuple[int, str]]) -> None:
        sys.stderr.write("".join(f"line {line}: {reason}\n" for line, reason in rejects))
        sys.stderr.flush()

    # The other processes of a local cluster start now and import while this one imports and checks the rest.
    with start_local_cluster(shape, args.argv) as cluster:
        from flows.replay import replay

        link_base = _link_base(args.link_base)
        ruleset = _load_ruleset(args.rules)
        store = _cluster_store(args.store, shape)
        out = sys.stdout if args.out in (None, "-") or not shape.owner else _open_output(args.out)
        cluster.checked()
        result = replay(args.signals, ruleset.enabled_rules, lateness=args.allowed_lateness, link_base=link_base,
                        store=store, metrics=ruleset.metrics, on_rejects=report, cluster=cluster.shape)
    if not shape.owner:
        return 0  # process 0 prints the cluster's output
    with out:
        for alert in result.alerts:
            out.write(alert)
            out.write("\n")
    print(result.totals_line, file=sys.stderr)
    return 0


def _no_last_collection() -> None:
    """Leave the interpreter's last garbage collection out of the exit of a command that ends after its flow (replay, detect).

    It would traverse every object still alive (modules, models, the rules, what the flow left) for ~50 ms, in every
    process of a cluster, and process 0 waits for the others to exit before its own: the memory is freed with the
    process instead. Nothing is lost: the output is closed, the store's rows written and the notifications
    acknowledged before the command returns.
    """
    atexit.register(gc.freeze)


def _cluster_shape(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """``--workers``, ``--processes``, ``--addresses``, ``--process-id`` as a :class:`flows.cluster.ClusterShape`."""
    from flows.cluster import cluster_shape

    return cluster_shape(args.workers, args.processes, args.addresses, args.process_id)


def _cluster_store(dsn: str | None, shape: Any):  # type: ignore[no-untyped-def]
    """The store for this process of a cluster: opened (and migrated) by process 0 only.

    The others do not connect to a chDB directory (process 0 writes every row there) and do not migrate.
    """
    from sinks.clickhouse import Store, StoreConfigError, parse_dsn

    if dsn in (None, "none"):
        return None
    if shape.owner:
        return _open_store(dsn)
    try:
        return Store(parse_dsn(dsn))
    except StoreConfigError as error:
        raise UsageError(f"--store: {error}") from None


def _link_base(text: str) -> str:
    """``--link-base`` as the base of a valid URI (IDNA host, percent-encoded path), or a usage error saying why not."""
    from schemas.alerts import link_base

    try:
        return link_base(text)
    except ValueError as error:  # the value itself is not echoed: it may hold the control character at fault
        raise UsageError(f"--link-base: {error}") from None


def cmd_detect(args: argparse.Namespace) -> int:
    """Run the detection flow on Kafka until SIGINT/SIGTERM (docs/live.md; with ``--processes``, docs/scaling.md)."""
    from flows.cluster import start_local_cluster

    _no_last_collection()
    shape = _cluster_shape(args)
    # The other processes of a local cluster start now and import while this one imports and checks the rest.
    with start_local_cluster(shape, args.argv) as cluster:
        from flows.live import DetectSettings, LiveTotals, run_detect

        if args.epoch_interval < 1000 or args.delivery_timeout < 1000:
            raise UsageError("--epoch-interval and --delivery-timeout must be at least 1s")
        link_base = _link_base(args.link_base)
        ruleset = _load_ruleset(args.rules)
        store = _cluster_store(args.store, shape)
        settings = DetectSettings(
            bootstrap=args.bootstrap, topic=args.topic, alerts_topic=args.alerts_topic,
            recovery_dir=Path(args.recovery_dir) if args.recovery_dir else None, cluster=shape,
            lateness=args.allowed_lateness, link_base=link_base, epoch_interval=args.epoch_interval / 1000,
            delivery_timeout=args.delivery_timeout / 1000, exit_at_end=args.exit_at_end,
            kafka_options=_kafka_options(args.kafka_option),
        )
        if args.web is not None and not shape.owner:
            raise UsageError("--web: only process 0 of a cluster serves the console (it is the one that holds the store)")
        totals = LiveTotals()
        if args.metrics_port is not None and shape.owner:  # process 0 holds the cluster's counts
            from delivery.metrics import serve_registry
            from flows.live_metrics import DetectMetrics

            serve_registry(DetectMetrics(totals).registry, args.metrics_host, args.metrics_port)
            print(f"detect: metrics on http://{args.metrics_host}:{args.metrics_port}/metrics", file=sys.stderr, flush=True)
        with _web_console(args.web, store, args.store, ruleset, args.rules) as console:
            if console is not None:
                print(f"detect: web console on {console.url}/alerts", file=sys.stderr, flush=True)
            run_detect(settings, ruleset.enabled_rules, ruleset.metrics, store, cluster=cluster, totals=totals)
    if not shape.owner:
        return 0  # process 0 reports the cluster's totals
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


def _web_console(address: str | None, store: Any, store_dsn: str, ruleset: Any, rules_dir: str) -> contextlib.AbstractContextManager[Any]:
    """``--web HOST:PORT``: the console served from this process, which holds the store (docs/web.md); else nothing."""
    from web.command import serve_console

    return contextlib.nullcontext() if address is None else serve_console(address, store, store_dsn, ruleset, rules_dir)


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


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the web console until SIGINT or SIGTERM (docs/web.md)."""
    from web.command import run_web

    return run_web(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the bundled scenario and show the alerts as they fire."""
    from cli.demo import run_demo

    return run_demo(Path(args.data_dir), workers=args.workers, store=args.store, web=args.web)


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
    return run_deliver(open_deliver(args, ruleset, os.environ, _kafka_options(args.kafka_option)))


def cmd_silence(args: argparse.Namespace) -> int:
    """Add, list or expire silences in the store (docs/silences.md)."""
    from cli.silence import silence_add, silence_expire, silence_list
    from sinks.clickhouse import RetryPolicy

    if args.silence_command == "add":
        rules = _load_ruleset(args.rules).enabled_rules  # before the store: a typo costs no connection
        store = _open_store(args.store, retry=RetryPolicy(give_up_after=0))
        silence_add(store, rules, args.rules, args.match, args.start, args.end, args.duration, args.by, args.comment,
                    sys.stdout)
        return 0
    store = _open_store(args.store, retry=RetryPolicy(give_up_after=0))
    if args.silence_command == "list":
        silence_list(store, args.expired, sys.stdout)
    else:
        silence_expire(store, args.id, args.by, sys.stdout)
    return 0


def _add_detection_options(parser: argparse.ArgumentParser) -> None:
    """The options replay and detect share: the rules, the workers, the store and the two deployment knobs."""
    parser.add_argument("--rules", default="rules", metavar="DIR")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker threads per process")
    parser.add_argument("--processes", type=int, metavar="N", help="run as a local cluster of N processes (docs/scaling.md)")
    parser.add_argument("--addresses", metavar="HOST:PORT,…", help="every process of a cluster on several hosts, in process-id order")
    parser.add_argument("--process-id", type=int, metavar="I", help="this process's position in --addresses")
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
    detect.add_argument("--web", metavar="HOST:PORT", help="also serve the web console over --store from this process (loopback)")
    detect.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on /metrics (process 0 of a cluster)")
    detect.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST")
    detect.set_defaults(handler=cmd_detect)

    schema = commands.add_parser("schema", help="print a JSON Schema")
    schema.add_argument("what", choices=["signals", "rules", "alerts"])
    schema.set_defaults(handler=cmd_schema)

    demo = commands.add_parser("demo", help="replay a realistic scenario and show the alerts")
    demo.add_argument("--data-dir", default=".logystera/demo", metavar="DIR")
    demo.add_argument("--workers", type=int, default=1, metavar="N")
    demo.add_argument("--store", default=default_store(), metavar="DSN", help="where to store everything (none: nowhere)")
    demo.add_argument("--web", nargs="?", const="127.0.0.1:8080", metavar="HOST:PORT",
                      help="then serve the web console over the stored day until Ctrl-C (default 127.0.0.1:8080)")
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
    deliver.add_argument("--silence-refresh", type=duration_option, default="5s", metavar="DURATION",
                         help="how often the silences are read again (how fast a new one applies)")
    deliver.add_argument("--inhibit-history", type=int, default=10_000, metavar="N",
                         help="with --bootstrap and inhibit rules: records per partition before the committed offsets "
                              "read again at start to restore inhibitions (0: none)")
    deliver.set_defaults(handler=cmd_deliver)

    db = commands.add_parser("db", help="manage the ClickHouse store")
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    migrate = db_commands.add_parser("migrate", help="create or upgrade the schema")
    migrate.add_argument("--store", default=default_store(), metavar="DSN")
    migrate.set_defaults(handler=cmd_db_migrate)

    sql = commands.add_parser("sql", help="query the store (chDB has no server to point clickhouse-client at)")
    sql.add_argument("query", metavar="QUERY")
    sql.add_argument("--store", default=default_store(), metavar="DSN")
    sql.add_argument("--format", choices=["table", "csv", "json", "raw"], default="table",
                     help="raw: the values of a one-column result, one per line")
    sql.set_defaults(handler=cmd_sql)

    web = commands.add_parser("web", help="serve the read-only web console over the store (the page of every alert link)")
    add_web_arguments(web, default_store())
    web.set_defaults(handler=cmd_web)

    silence = commands.add_parser("silence", help="silence notifications on purpose: add, list, expire (docs/silences.md)")
    silence_commands = silence.add_subparsers(dest="silence_command", required=True, parser_class=_Parser)
    add = silence_commands.add_parser("add", help="hold matching notifications for a while; prints its id and what it holds")
    add.add_argument("--match", action="append", required=True, metavar="MATCHER",
                     help="field=value, field!=value, field=~regex or field!~regex (site, rule, kind, severity, "
                          "subsystem or a group field); repeat for more, all must match")
    add.add_argument("--start", metavar="TIME", help="RFC 3339 (default: now)")
    add.add_argument("--end", metavar="TIME", help="RFC 3339; or --for")
    add.add_argument("--for", dest="duration", type=duration_option, metavar="DURATION", help="e.g. 2h; or --end")
    add.add_argument("--by", required=True, metavar="NAME", help="who silences")
    add.add_argument("--comment", required=True, metavar="TEXT", help="why")
    add.add_argument("--rules", default="rules", metavar="DIR", help="a silence must be able to match one of these rules")
    listing = silence_commands.add_parser("list", help="silences in force or to come (with --expired: all)")
    listing.add_argument("--expired", action="store_true", help="also list the expired ones")
    expire = silence_commands.add_parser("expire", help="end a silence now")
    expire.add_argument("id", metavar="ID")
    expire.add_argument("--by", metavar="NAME", help="who ends it (recorded)")
    for command in (add, listing, expire):
        command.add_argument("--store", default=default_store(), metavar="DSN")
        command.set_defaults(handler=cmd_silence)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: every :class:`LogysteraError` of every command is reported here, once."""
    # clickhouse-connect logs each failed HTTP call; the store retries them and reports the outcome in one line.
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)
    try:
        arguments = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(arguments)
        args.argv = arguments  # what a local cluster's other processes are started with
        return int(args.handler(args))
    except LogysteraError as error:
        from flows.cluster import wait_for_process_0

        wait_for_process_0()  # in a process of a local cluster: process 0 reports a mistake they all find, once
        for line in error.lines():
            print(line, file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:  # SIGINT (or SIGTERM, where a command turns it into a stop) before a command could stop cleanly
        from flows.cluster import started_by_process_0

        if not started_by_process_0():  # process 0 of a local cluster says it, once
            print("logystera: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
