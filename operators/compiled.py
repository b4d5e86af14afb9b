"""A rule prepared for evaluation: predicates compiled, durations in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from operators.conditions import Predicate, compile_conditions
from schemas.alerts import RuleSummary
from schemas.durations import format_duration
from schemas.records import compact_json
from schemas.rules import Rule
from schemas.schedule import Schedule, load_zone

DEFAULT_ALLOWED_LATENESS_MS = 60_000


def group_json(group: dict[str, Any]) -> str:
    """The group as compact JSON with sorted keys, non-ASCII unescaped (``{}`` without group_by)."""
    return compact_json(dict(sorted(group.items())))


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """Everything the engine needs from a :class:`Rule`, precomputed once at start."""

    rule: Rule
    id: str
    kind: str
    types: frozenset[str]
    gate: Predicate | None  # what a signal must satisfy to reach a fingerprint: ``of`` for ratio, ``where`` otherwise
    ratio_matches: Predicate | None  # ratio only: its ``where``, which makes a signal of ``of`` a matching one
    group_fields: tuple[str, ...]
    window: int
    lookback: int
    for_ms: int
    resolve_after: int
    suppress: int
    bundle: int
    evidence: int
    max_groups: int
    overflow_json: str
    header: RuleSummary  # the record's ``rule``: made once per rule
    params: Any  # the kind's parameter block (None for match), read on every evaluation
    schedule: Schedule | None  # a scheduled absence's schedule (None otherwise)
    group_cache: dict[tuple[Any, ...], str] = field(default_factory=dict)  # group values -> group_json

    @property
    def window_text(self) -> str:
        """The window as the author wrote it, for summaries."""
        return format_duration(self.window) if self.window else ""


def compile_rule(rule: Rule) -> CompiledRule:
    """Precompute predicates, windows and the static part of every notification."""
    params = rule.params
    window = getattr(params, "window", 0) if params is not None else 0
    lookback = window
    if rule.kind == "shift":
        lookback = params.window + params.baseline
    overflow = {name: "__other__" for name in rule.group_by}
    header = RuleSummary(id=rule.id, title=rule.title, kind=rule.kind, description=rule.description)
    where = compile_conditions(rule.where)
    ratio = rule.kind == "ratio"
    schedule = None
    if rule.kind == "absence" and params.schedule is not None:
        schedule = Schedule(params.schedule, params.zone_name, load_zone(params.zone_name), params.grace)
    return CompiledRule(
        rule=rule,
        id=rule.id,
        kind=rule.kind,
        types=frozenset(rule.signal_types),
        gate=compile_conditions(params.of) if ratio else where,
        ratio_matches=where if ratio else None,
        group_fields=tuple(rule.group_by),
        window=window,
        lookback=lookback,
        for_ms=rule.for_,
        resolve_after=rule.resolve_after,
        suppress=rule.suppress,
        bundle=rule.bundle or 0,
        evidence=rule.evidence,
        max_groups=rule.max_groups,
        overflow_json=group_json(overflow),
        header=header,
        params=params,
        schedule=schedule,
    )
