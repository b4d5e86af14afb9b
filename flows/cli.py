"""The ``logystera`` console script (cli.md).

User mistakes (bad paths, bad rules, bad options) end in one clear line on
stderr and a documented exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from schemas.durations import parse_duration
from sinks.clickhouse import StoreError

EXIT_USAGE = 2
EXIT_FAILED = 1
DEFAULT_STORE = "chdb://.logystera/store"


class UsageError(Exception):
    """A mistake in how the command was called; printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"logystera: error: {message}\n")


def _load_ruleset(directory: str):  # type: ignore[no-untyped-def]
    from schemas.rule_loader import RuleLoadError, load_rules

    try:
        return load_rules(directory)
    except RuleLoadError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


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
    from flows.rule_tests import RuleTestError, run_test_file

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
    try:
        lateness = parse_duration(args.allowed_lateness)
    except ValueError as error:
        raise UsageError(f"--allowed-lateness: {error}") from None
    ruleset = _load_ruleset(args.rules)
    store = None if args.store in (None, "none") else _open_store(args.store)
    out = sys.stdout if args.out in (None, "-") else _open_output(args.out)
    result = replay(args.signals, ruleset.enabled_rules, workers=args.workers, lateness=lateness,
                    link_base=args.link_base, store=store, metrics=ruleset.metrics)
    for line, reason in result.rejects:
        print(f"line {line}: {reason}", file=sys.stderr)
    with out:
        for alert in result.alerts:
            out.write(alert)
            out.write("\n")
    print(result.totals_line, file=sys.stderr)
    return 0


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
    from flows.sql import run_sql
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the bundled scenario and show the alerts as they fire."""
    from flows.demo import run_demo

    return run_demo(Path(args.data_dir), workers=args.workers, store=args.store)


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
    replay.add_argument("--rules", default="rules", metavar="DIR")
    replay.add_argument("--out", metavar="FILE", help="notification records (default: stdout)")
    replay.add_argument("--workers", type=int, default=1, metavar="N")
    replay.add_argument("--store", metavar="DSN", help="ClickHouse DSN, or none (the default)")
    replay.add_argument("--allowed-lateness", default="60s", metavar="DURATION")
    replay.add_argument("--link-base", default="http://localhost:8080", metavar="URL")
    replay.set_defaults(handler=cmd_replay)

    schema = commands.add_parser("schema", help="print a JSON Schema")
    schema.add_argument("what", choices=["signals", "rules", "alerts"])
    schema.set_defaults(handler=cmd_schema)

    demo = commands.add_parser("demo", help="replay a realistic scenario and show the alerts")
    demo.add_argument("--data-dir", default=".logystera/demo", metavar="DIR")
    demo.add_argument("--workers", type=int, default=1, metavar="N")
    demo.add_argument("--store", default=default_store(), metavar="DSN", help="where to store everything (none: nowhere)")
    demo.set_defaults(handler=cmd_demo)

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
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as error:
        print(f"logystera: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as error:
        # The store could not be reached or kept failing: the run did not complete.
        print(f"logystera: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
