"""Bounded quotations of user input for error messages.

A value read from a YAML file can be huge (a megabyte string, a list with a
million items, a structure shared through aliases that is exponentially large
when printed). An error message quotes at most :data:`LIMIT` characters of
it, built without walking the whole value, and ends with ``…`` when it was cut.
"""

from __future__ import annotations

import builtins
import reprlib
from typing import Any

LIMIT = 60
"""Characters of a value an error message shows at most."""


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` limits per container and depth, so the work is bounded whatever the value's size.

    Strings, bytes and integers are quoted from their start (``clip`` then
    cuts them), not ``reprlib``'s ``'ab...yz'``: the start is what a reader
    finds in the file.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = self.maxset = self.maxfrozenset = self.maxdeque = 8
        self.maxother = LIMIT + 1

    def repr_str(self, x: str, level: int) -> str:
        return builtins.repr(x[: LIMIT + 1])

    def repr_bytes(self, x: bytes, level: int) -> str:
        return builtins.repr(x[: LIMIT + 1])

    def repr_int(self, x: int, level: int) -> str:
        # Python refuses to print ints of more than 4300 digits (and printing them is quadratic).
        if x.bit_length() > 4 * LIMIT:
            return f"<integer of {x.bit_length()} bits>"
        return builtins.repr(x)


_REPR = _BoundedRepr()


def clip(text: str, limit: int = LIMIT) -> str:
    """``text`` cut to ``limit`` characters, the last one ``…`` when something was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def excerpt(value: Any) -> str:
    """The ``repr`` of ``value`` as an error message quotes it: at most :data:`LIMIT` characters."""
    return clip(_REPR.repr(value))
