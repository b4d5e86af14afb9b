"""What each payload field is, derived from the payload models.

Rule loading needs to know, for a condition like ``outcome: {in: [failed]}``,
whether ``outcome`` exists on every type the rule reads and whether
``failed`` could ever match it. Deriving that from :mod:`schemas.signals`
keeps one source of truth.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from schemas.signals import PAYLOADS


@dataclass(frozen=True)
class FieldSpec:
    """The comparable shape of one payload field.

    ``kind`` is ``enum``, ``str``, ``int``, ``bool`` or ``list`` (a list of
    enum values, like ``flags``); ``values`` holds the allowed enum values.
    """

    kind: str
    values: frozenset[Any] = frozenset()

    def can_equal(self, value: Any) -> bool:
        """Whether a field of this shape could ever equal ``value``."""
        if self.kind == "enum":
            return isinstance(value, str) and value in self.values
        if self.kind == "str":
            return isinstance(value, str)
        if self.kind == "int":
            return isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
        if self.kind == "bool":
            return isinstance(value, bool)
        return False

    def describe(self) -> str:
        """Human description for error messages."""
        if self.kind in ("enum", "list"):
            return "one of " + ", ".join(sorted(self.values))
        return {"str": "a string", "int": "an integer", "bool": "true or false"}[self.kind]


def _spec(annotation: Any) -> FieldSpec:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _spec(inner[0])
    if origin is typing.Annotated:
        return _spec(typing.get_args(annotation)[0])
    if origin is Literal:
        return FieldSpec("enum", frozenset(typing.get_args(annotation)))
    if origin is list:
        item = _spec(typing.get_args(annotation)[0])
        return FieldSpec("list", item.values)
    if annotation is bool:
        return FieldSpec("bool")
    if annotation is int:
        return FieldSpec("int")
    return FieldSpec("str")


@cache
def payload_fields(signal_type: str) -> dict[str, FieldSpec]:
    """Field name → shape for one signal type's payload."""
    model = PAYLOADS[signal_type]
    return {name: _spec(info.annotation) for name, info in model.model_fields.items()}
