"""Which rules a record goes to: decided once, here.

A signal goes to the rules whose ``signal`` includes its type, a tick to every
rule of its site (rules.md "Records of a rule").
"""

from __future__ import annotations

from collections.abc import Iterable

from operators.compiled import CompiledRule, compile_rule
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
