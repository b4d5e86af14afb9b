"""A rule's condition as one English sentence, generated from the rule itself.

The on-call engineer who opens an alert should not need the YAML to know what held: "at least 5 `php_error`
signals with `level` in fatal, parse within 5 minutes, per `component`; pending 0s, suppress 1h". The words
follow docs/rules.md; each kind has one phrase, and the shared tail (pending, resolve, suppress) is the same
for every stateful kind.
"""

from __future__ import annotations

from typing import Any

from schemas.durations import format_duration
from schemas.rules import Conditions, Rule

_UNITS = ((86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1000, "second"))
_COMPARISONS = {"gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}


def spoken_window(ms: int) -> str:
    """A window as words when it is a whole number of one unit (``5 minutes``), else its exact spelling (``90s``)."""
    for size, unit in _UNITS:
        if ms % size == 0:
            count = ms // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return format_duration(ms)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _test(field: str, test: Any) -> str:
    """One field's test as words (``level`` in fatal, parse)."""
    name = f"`{field}`"
    op, arg = next(iter(test.items())) if isinstance(test, dict) else ("eq", test)
    if op == "eq":
        return f"{name} = {_value(arg)}"
    if op == "ne":
        return f"{name} ≠ {_value(arg)}"
    if op == "in":
        return f"{name} in {', '.join(map(_value, arg))}"
    if op == "not_in":
        return f"{name} not in {', '.join(map(_value, arg))}"
    if op in _COMPARISONS:
        return f"{name} {_COMPARISONS[op]} {_value(arg)}"
    if op == "prefix":
        return f"{name} starting with {_value(arg)}"
    if op == "exists":
        return f"{name} present" if arg else f"no {name}"
    return f"{name} containing {_value(arg)}"  # contains: the only operator left (schemas.conditions.OPERATORS)


def conditions_text(conditions: Conditions | None) -> str:
    """``with a and b`` for a condition mapping, or the empty string when there is none."""
    if not conditions:
        return ""
    return " with " + " and ".join(_test(field, test) for field, test in conditions.items())


def _signals(rule: Rule, plural: bool = True) -> str:
    types = rule.signal if isinstance(rule.signal, list) else [rule.signal]
    names = " or ".join(f"`{name}`" for name in types)
    return f"{names} signal{'s' if plural else ''}"


def _kind_phrase(rule: Rule) -> str:
    matching = f"{_signals(rule)}{conditions_text(rule.where)}"
    if rule.kind == "match":
        return f"any {_signals(rule, plural=False)}{conditions_text(rule.where)}"
    if rule.kind == "threshold":
        assert rule.threshold is not None
        return f"at least {rule.threshold.count} {matching} within {spoken_window(rule.threshold.window)}"
    if rule.kind == "ratio":
        assert rule.ratio is not None
        population = f"{_signals(rule)}{conditions_text(rule.ratio.of)}"
        share = f"{rule.ratio.at_least * 100:g}%"
        passing = conditions_text(rule.where).removeprefix(" with ") or "every condition"
        return (f"at least {share} of {population} have {passing} within {spoken_window(rule.ratio.window)} "
                f"(at least {rule.ratio.min_total} signals)")
    if rule.kind == "distinct":
        assert rule.distinct is not None
        return (f"at least {rule.distinct.count} distinct `{rule.distinct.field}` values among {matching} "
                f"within {spoken_window(rule.distinct.window)}")
    if rule.kind == "absence":
        assert rule.absence is not None
        if rule.absence.schedule is not None:
            assert rule.absence.grace is not None
            return (f"no {_signals(rule, plural=False)}{conditions_text(rule.where)} by the run of `{rule.absence.schedule}` "
                    f"({rule.absence.zone_name}) plus {spoken_window(rule.absence.grace)} grace")
        assert rule.absence.after is not None
        return f"no {_signals(rule, plural=False)}{conditions_text(rule.where)} for {spoken_window(rule.absence.after)}"
    assert rule.shift is not None
    shift = rule.shift
    return (f"{matching} within {spoken_window(shift.window)} at least {shift.factor:g}× the rate of the "
            f"{spoken_window(shift.baseline)} before (at least {shift.min_count} signals)")


def condition_sentence(rule: Rule) -> str:
    """The rule's condition, grouping and timing as one sentence (Markdown-style backticks around names).

    ``match`` rules notify per signal and have no pending time or resolution; every other kind ends with its
    pending time (``for``), its resolution delay when it has one, and its suppression.
    """
    sentence = _kind_phrase(rule)
    if rule.group_by:
        sentence += ", per " + ", ".join(f"`{field}`" for field in rule.group_by)
    if rule.kind == "match":
        bundled = f"bundled over {spoken_window(rule.bundle)}, " if rule.bundle else ""
        return f"{sentence}; {bundled}suppress {format_duration(rule.suppress) if rule.suppress else '0s'}"
    timing = [f"pending {format_duration(rule.for_) if rule.for_ else '0s'}"]
    if rule.resolve_after:
        timing.append(f"resolve after {format_duration(rule.resolve_after)}")
    timing.append(f"suppress {format_duration(rule.suppress) if rule.suppress else '0s'}")
    return f"{sentence}; {', '.join(timing)}"
