"""Load-time checks of condition mappings (``where``, ``ratio.of``, metric ``where``).

A condition maps a payload field to a test: a bare scalar (equality) or a
mapping with exactly one operator. Problems come back as ``(field, message)``
pairs so the loader can name each one; nothing here raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.excerpt import clip, excerpt
from schemas.fields import FieldSpec, payload_fields

OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "prefix", "exists", "contains")
_ORDERING = ("gt", "gte", "lt", "lte")

Problem = tuple[str, str]


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def field_specs(name: str, signal_types: Sequence[str]) -> list[FieldSpec] | str:
    """The field's shape in every type, or why the field cannot be used."""
    specs = []
    for signal_type in signal_types:
        spec = payload_fields(signal_type).get(name)
        if spec is None:
            return f"unknown field for signal type {signal_type}"
        specs.append(spec)
    return specs


def _never(value: Any, specs: list[FieldSpec]) -> str:
    """Why ``value`` can never be the field's value (a list field is compared with ``contains``)."""
    if all(spec.kind == "list" for spec in specs):
        return f"{excerpt(value)} can never match: the field is a list (test its items with contains)"
    return f"{excerpt(value)} can never match: the field is {specs[0].describe()}"


def _check_test(op: str, arg: Any, specs: list[FieldSpec]) -> str | None:
    """Why ``op: arg`` can never hold for a field with these shapes, or None when it can."""
    if op in ("eq", "ne"):
        if not _is_scalar(arg):
            return f"{op} takes a string, number or boolean"
        if not any(spec.can_equal(arg) for spec in specs):
            return _never(arg, specs)
    elif op in ("in", "not_in"):
        if not isinstance(arg, list) or not arg:
            return f"{op} takes a non-empty list"
        for item in arg:
            if not _is_scalar(item) or not any(spec.can_equal(item) for spec in specs):
                return _never(item, specs)
    elif op in _ORDERING:
        if not _is_number(arg):
            return f"{op} takes a number"
        if not any(spec.kind == "int" for spec in specs):
            return f"{op} needs a numeric field; the field is {specs[0].describe()}"
    elif op == "prefix":
        if not isinstance(arg, str):
            return "prefix takes a string"
        if not any(spec.kind in ("str", "enum") for spec in specs):
            return f"prefix needs a string field; the field is {specs[0].describe()}"
        if not any(spec.kind == "str" or any(value.startswith(arg) for value in spec.values) for spec in specs if spec.kind != "list"):
            return f"{excerpt(arg)} can never match: the field is {specs[0].describe()}"
    elif op == "exists":
        if not isinstance(arg, bool):
            return "exists takes true or false"
    elif op == "contains":
        if not _is_scalar(arg):
            return "contains takes one item value"
        if not any(spec.kind == "list" for spec in specs):
            return f"contains needs a list field; the field is {specs[0].describe()}"
        if not any(arg in spec.values for spec in specs if spec.kind == "list"):
            return f"{excerpt(arg)} can never match: items are {specs[0].describe()}"
    return None


def check_conditions(conditions: Any, signal_types: Sequence[str], path: str) -> list[Problem]:
    """Every problem of one condition mapping, each named by its field path."""
    if conditions is None:
        return []
    if not isinstance(conditions, dict):
        return [(path, "must be a mapping of field name to test")]
    problems: list[Problem] = []
    for name, test in conditions.items():
        where = f"{path}.{clip(str(name))}"
        specs = field_specs(str(name), signal_types)
        if isinstance(specs, str):
            problems.append((where, specs))
            continue
        if isinstance(test, dict):
            if len(test) != 1:
                problems.append((where, f"a test has exactly one operator ({', '.join(OPERATORS)})"))
                continue
            op, arg = next(iter(test.items()))
            if op not in OPERATORS:
                problems.append((where, f"unknown operator {excerpt(op)} (one of {', '.join(OPERATORS)})"))
                continue
            where = f"{where}.{op}"
        elif test is None:
            problems.append((where, "null never matches; use {exists: false}"))
            continue
        else:
            op, arg = "eq", test
        reason = _check_test(op, arg, specs)
        if reason:
            problems.append((where, reason))
    return problems
