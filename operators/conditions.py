"""Compile condition mappings into predicates over a payload.

Conditions were checked at load (:mod:`schemas.conditions`); here they become
one closure per rule so the per-signal cost is a few attribute reads. A field
that is absent or null fails every test except ``ne``, ``not_in`` and
``exists: false`` (rules.md).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

Predicate = Callable[[Any], bool]
_ORDERING: dict[str, Callable[[Any, Any], bool]] = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_NUMBERS = (int, float)


def _test(op: str, arg: Any) -> Callable[[Any], bool]:
    if op == "eq":
        return lambda value: value is not None and not isinstance(value, list) and value == arg
    if op == "ne":
        return lambda value: value is None or value != arg
    if op == "in":
        return lambda value: value is not None and not isinstance(value, list) and value in arg
    if op == "not_in":
        return lambda value: value is None or isinstance(value, list) or value not in arg
    compare = _ORDERING.get(op)
    if compare is not None:
        return lambda value: _number(value) and compare(value, arg)
    if op == "prefix":
        return lambda value: isinstance(value, str) and value.startswith(arg)
    if op == "exists":
        return lambda value: (value is not None) == arg
    if op == "contains":
        return lambda value: isinstance(value, list) and arg in value
    raise ValueError(f"unknown operator {op!r}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _single(name: str, op: str, arg: Any) -> Predicate | None:
    """One call per payload for the usual one-field tests, where the generic form takes two.

    A scalar argument of ``eq`` / ``in`` (the loader accepts no other) never
    equals a null or a list, so a plain comparison gives what :func:`_test` gives.
    """
    if op == "eq" and _scalar(arg):
        return lambda data: getattr(data, name, None) == arg
    if op == "in" and all(map(_scalar, arg)):
        return lambda data: getattr(data, name, None) in arg
    compare = _ORDERING.get(op)
    if compare is not None:
        return lambda data: isinstance(value := getattr(data, name, None), _NUMBERS) and not isinstance(value, bool) and compare(value, arg)
    return None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _operation(test: Any) -> tuple[str, Any]:
    """``(operator, argument)`` of one field's test; a bare scalar is ``eq``, a list argument a tuple."""
    if isinstance(test, dict):
        ((op, arg),) = test.items()
    else:
        op, arg = "eq", test
    return op, tuple(arg) if op in ("in", "not_in") else arg


def compile_conditions(conditions: dict[str, Any] | None) -> Predicate | None:
    """A predicate over a payload model, or None when there is nothing to test."""
    if not conditions:
        return None
    operations = [(name, *_operation(test)) for name, test in conditions.items()]
    if len(operations) == 1:
        ((name, op, arg),) = operations
        single = _single(name, op, arg)
        if single is not None:
            return single
    tests = [(name, _test(op, arg)) for name, op, arg in operations]
    if len(tests) == 1:
        ((name, check),) = tests
        return lambda data: check(getattr(data, name, None))

    def predicate(data: Any) -> bool:
        return all(check(getattr(data, name, None)) for name, check in tests)

    return predicate
