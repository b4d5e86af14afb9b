"""Compile condition mappings into predicates over a payload.

Conditions were checked at load (:mod:`schemas.conditions`); here they become
one closure per rule so the per-signal cost is a few attribute reads. A field
that is absent or null fails every test except ``ne``, ``not_in`` and
``exists: false`` (rules.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Predicate = Callable[[Any], bool]


def _test(op: str, arg: Any) -> Callable[[Any], bool]:
    if op == "eq":
        return lambda value: value is not None and not isinstance(value, list) and value == arg
    if op == "ne":
        return lambda value: value is None or value != arg
    if op == "in":
        return lambda value: value is not None and not isinstance(value, list) and value in arg
    if op == "not_in":
        return lambda value: value is None or isinstance(value, list) or value not in arg
    if op == "gt":
        return lambda value: _number(value) and value > arg
    if op == "gte":
        return lambda value: _number(value) and value >= arg
    if op == "lt":
        return lambda value: _number(value) and value < arg
    if op == "lte":
        return lambda value: _number(value) and value <= arg
    if op == "prefix":
        return lambda value: isinstance(value, str) and value.startswith(arg)
    if op == "exists":
        return lambda value: (value is not None) == arg
    if op == "contains":
        return lambda value: isinstance(value, list) and arg in value
    raise ValueError(f"unknown operator {op!r}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compile_conditions(conditions: dict[str, Any] | None) -> Predicate | None:
    """A predicate over a payload model, or None when there is nothing to test."""
    if not conditions:
        return None
    tests: list[tuple[str, Callable[[Any], bool]]] = []
    for name, test in conditions.items():
        if isinstance(test, dict):
            ((op, arg),) = test.items()
        else:
            op, arg = "eq", test
        if op in ("in", "not_in"):
            arg = tuple(arg)
        tests.append((name, _test(op, arg)))

    if len(tests) == 1:
        ((name, check),) = tests
        return lambda data: check(getattr(data, name, None))

    def predicate(data: Any) -> bool:
        return all(check(getattr(data, name, None)) for name, check in tests)

    return predicate
