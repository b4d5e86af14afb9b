"""Matchers on notifications: ``site=shop-eu``, ``rule=~php-.*``, ``severity!=info``, ``component!~plugin:.*``.

The syntax of silences (``logystera silence add --match``) and of the
``inhibit:`` rules in YAML, after Alertmanager's: a field, an operator
(``=``, ``!=``, ``=~``, ``!~``) and a value. Fields are the notification's
``site``, ``rule`` (its id), ``kind`` (the rule's kind), ``severity`` and
``subsystem``; any other name is a field of the notification's ``group``
(a ``group_by`` field of the rule). A group field the notification does not
have counts as the empty string, as an absent label does in Alertmanager, so
``component!=x`` matches a notification without ``component``.

Regular expressions are Python's, anchored (``re.fullmatch``), at most
:data:`MAX_REGEX` characters, compiled when the matcher is made: a bad one is
a ``ValueError`` then, never at send time. Operators are trusted with their
patterns; the values matched come from signals (attacker-chosen), so a regex
is never run on a value longer than :data:`MAX_MATCHED_VALUE` characters —
such a value matches no regex matcher, whichever its operator, so the
notification is not held by it (held notifications must be provably meant).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.alerts import GROUP_FIELDS
from schemas.excerpt import clip
from schemas.records import compact_json

NOTIFICATION_FIELDS = ("site", "rule", "kind", "severity", "subsystem")
"""The fields of the notification itself; every other matcher field names a group field."""
OPERATORS = ("=~", "!~", "!=", "=")
"""Longest first, so ``a=~b`` is a regex, not the value ``~b``."""
MAX_REGEX = 1000
"""Characters an operator's regular expression may have."""
MAX_VALUE = 1000
"""Characters a matcher's value (literal or regex) may have."""
MAX_MATCHED_VALUE = 1024
"""Characters of a notification's value a regex is run on at most (group values are at most 256 by alerts.md)."""
_FIELD = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Matcher:
    """One ``field op value`` condition; :func:`parse_matcher` makes it (and compiles its regex)."""

    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"

    def matches_value(self, value: str) -> bool:
        """Whether ``value`` (of this matcher's field) satisfies it."""
        if self.regex is None:
            return (value == self.value) == (self.op == "=")
        if len(value) > MAX_MATCHED_VALUE:
            return False
        return (self.regex.fullmatch(value) is not None) == (self.op == "=~")

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Whether a notification with these fields (:func:`notification_fields`) satisfies it."""
        return self.matches_value(fields.get(self.name, ""))

    def as_list(self) -> list[str]:
        """``[name, op, value]``: how the store keeps it (JSON)."""
        return [self.name, self.op, self.value]


def parse_matcher(text: str) -> Matcher:
    """``field op value`` as a :class:`Matcher`; a ``ValueError`` that says what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError("a matcher is a string like site=shop-eu")
    for op in OPERATORS:
        name, found, value = text.partition(op)
        if found:
            return make_matcher(name.strip(), op, value.strip())
    raise ValueError(f"{clip(text)}: not a matcher: give field=value, field!=value, field=~regex or field!~regex")


def make_matcher(name: str, op: str, value: str) -> Matcher:
    """A checked :class:`Matcher`: a field name, a known operator, a bounded value, a regex that compiles."""
    if not _FIELD.match(name) or (name not in NOTIFICATION_FIELDS and name not in GROUP_FIELDS):
        raise ValueError(f"{clip(name)}: unknown field: use site, rule, kind, severity, subsystem or a group field "
                         f"(a payload field a rule groups by, e.g. component)")
    if op not in OPERATORS:
        raise ValueError(f"{clip(op)}: not an operator: use =, !=, =~ or !~")
    if len(value) > MAX_VALUE:
        raise ValueError(f"{name}{op}: the value has {len(value)} characters; at most {MAX_VALUE}")
    if op in ("=", "!="):
        return Matcher(name, op, value)
    if len(value) > MAX_REGEX:
        raise ValueError(f"{name}{op}: the regular expression has {len(value)} characters; at most {MAX_REGEX}")
    try:
        regex = re.compile(value)
    except re.error as error:
        raise ValueError(f"{name}{op}{clip(value)}: not a regular expression: {error}") from None
    return Matcher(name, op, value, regex)


def check_field(name: str) -> None:
    """A ``ValueError`` unless ``name`` is a field matchers know (``equal:`` of an inhibit rule)."""
    make_matcher(name, "=", "")


def matchers_from_lists(items: Iterable[Any]) -> list[Matcher]:
    """Matchers from their stored ``[name, op, value]`` form (checked again: the store is input too)."""
    return [make_matcher(str(name), str(op), str(value)) for name, op, value in items]


def group_value(value: Any) -> str:
    """A group value as matchers see it: a string as is, anything else as compact JSON (``12``, ``true``, ``null``)."""
    return value if isinstance(value, str) else compact_json(value)


def notification_fields(site: str, rule: str, kind: str, severity: str, subsystem: str,
                        group: Mapping[str, Any]) -> dict[str, str]:
    """The values matchers compare against: the notification's own fields, then its group fields.

    A group field named like a notification field cannot shadow it (the
    notification's own value wins): payload field names are never ``site`` etc. today.
    """
    fields = {name: group_value(value) for name, value in group.items()}
    fields.update(site=site, rule=rule, kind=kind, severity=severity, subsystem=subsystem)
    return fields


def all_match(matchers: Iterable[Matcher], fields: Mapping[str, str]) -> bool:
    """Whether every matcher holds (an empty list holds: callers forbid empty lists where that matters)."""
    return all(matcher.matches(fields) for matcher in matchers)
