"""Which (site, rule) keys a record goes to, and a pure-Python driver over them.

The dataflow and the pure driver share :class:`RoutingTable`, so "which rules
see this record" is decided in one place: a signal goes to the rules whose
``signal`` includes its type, a tick to every rule of its site.
"""

from __future__ import annotations

from collections.abc import Iterable

from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS, CompiledRule, compile_rule
from operators.engine import RuleRunner
from operators.notification import Notification
from schemas.records import Record
from schemas.rules import Rule


class RoutingTable:
    """Compiled rules indexed by the signal types they read."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: dict[str, CompiledRule] = {}
        self.by_type: dict[str, tuple[CompiledRule, ...]] = {}
        for rule in rules:
            compiled = compile_rule(rule)
            self.rules[rule.id] = compiled
        ordered = sorted(self.rules.values(), key=lambda compiled: compiled.id)
        types = {signal_type for compiled in ordered for signal_type in compiled.types}
        for signal_type in types:
            self.by_type[signal_type] = tuple(compiled for compiled in ordered if signal_type in compiled.types)
        self.by_type["tick"] = tuple(ordered)

    def routes(self, record: Record) -> tuple[CompiledRule, ...]:
        """The rules this record is routed to (ticks: all of them)."""
        return self.by_type.get(record.type, ())


class Detector:
    """Runs records through every (site, rule) runner in order, without a dataflow.

    Used by ``logystera rules test`` and the engine's unit tests; the dataflow
    holds the same :class:`RuleRunner` objects as keyed state instead.
    """

    def __init__(self, rules: Iterable[Rule], lateness: int = DEFAULT_ALLOWED_LATENESS_MS) -> None:
        self.table = RoutingTable(rules)
        self.lateness = lateness
        self.runners: dict[tuple[str, str], RuleRunner] = {}
        self.late_lines: set[int] = set()

    def process(self, record: Record) -> list[Notification]:
        """Route one record and return the notifications it caused, in emission order."""
        out: list[Notification] = []
        for compiled in self.table.routes(record):
            key = (record.site, compiled.id)
            runner = self.runners.get(key)
            if runner is None:
                runner = self.runners[key] = RuleRunner(compiled, record.site, self.lateness)
            if not runner.process(record, out):
                self.late_lines.add(record.line)
        return out

    def run(self, records: Iterable[Record]) -> list[Notification]:
        """All notifications for a sequence of records, in output (sorted) order."""
        out: list[Notification] = []
        for record in records:
            out.extend(self.process(record))
        out.sort(key=Notification.sort_key)
        return out
