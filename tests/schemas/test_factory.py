"""The one ULID encoder (the dispatcher's ids, the generators' deterministic ones) against a plain reference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dispatcher import new_id
from schemas.factory import ulid

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference(ms: int, tail: int) -> str:
    """ULID's text by its definition: 128 bits (48 of time, 80 more), 26 base-32 digits, most significant first."""
    value = (ms << 80) | tail
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 1))
def test_ulid_is_the_definition(ms: int, tail: int) -> None:
    assert ulid(ms, tail) == reference(ms, tail)


@given(st.integers(0, 2**48 - 2), st.integers(0, 2**80 - 1), st.integers(0, 2**80 - 1))
def test_ulids_sort_by_time(ms: int, tail: int, later_tail: int) -> None:
    assert ulid(ms, tail) < ulid(ms + 1, later_tail)


def test_the_dispatcher_ids_are_ulids_of_their_millisecond() -> None:
    assert new_id(1_700_000_000_000)[:10] == reference(1_700_000_000_000, 0)[:10]
    assert len(new_id()) == 26 and set(new_id()) <= set(CROCKFORD)
