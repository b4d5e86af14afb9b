"""The ``logystera`` console script (cli.md).

User mistakes (bad paths, bad rules, bad options) end in one clear line on
stderr and a documented exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from schemas.durations import parse_duration

EXIT_USAGE = 2


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
    if args.store not in (None, "none"):
        raise UsageError("--store: only 'none' is available in this version (ClickHouse storage is not wired yet)")
    try:
        lateness = parse_duration(args.allowed_lateness)
    except ValueError as error:
        raise UsageError(f"--allowed-lateness: {error}") from None
    ruleset = _load_ruleset(args.rules)
    out = sys.stdout if args.out in (None, "-") else _open_output(args.out)
    result = replay(args.signals, ruleset.enabled_rules, workers=args.workers, lateness=lateness,
                    link_base=args.link_base)
    for line, reason in result.rejects:
        print(f"line {line}: {reason}", file=sys.stderr)
    with out:
        for alert in result.alerts:
            out.write(alert)
            out.write("\n")
    print(result.totals_line, file=sys.stderr)
    return 0


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

    return run_demo(Path(args.data_dir), workers=args.workers)


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
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as error:
        print(f"logystera: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
