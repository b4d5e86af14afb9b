"""From one line of input bytes to a validated :class:`Record`, or a one-line reason.

This is the boundary every signal crosses, in replay and (later) live: the
reason strings are what a user sees on stderr as ``line N: <reason>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Iterable
from operator import itemgetter
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas.problems import first_problem
from schemas.signals import MAX_SIGNAL_BYTES, SIGNAL_ADAPTER, SITE_PATTERN
from schemas.timestamps import MILLIS, SECOND_STARTS, TimestampError, parse_ts, parse_ts_checked


class Record:
    """A validated signal or tick, as the detection engine sees it.

    ``raw`` keeps the bytes exactly as received so that evidence can carry the
    envelope as received; it is only re-encoded when a notification is built.
    """

    __slots__ = ("data", "id", "line", "raw", "seq", "site", "ts", "type")

    def __init__(
        self, line: int, site: str, type_: str, ts: int, id_: str, data: BaseModel, raw: bytes, seq: int | None = None
    ) -> None:
        self.line = line
        self.site = site
        self.type = type_
        self.ts = ts
        self.id = id_
        self.data = data
        self.raw = raw
        self.seq = seq

    def __repr__(self) -> str:
        return f"Record(line={self.line}, site={self.site!r}, type={self.type!r}, ts={self.ts}, id={self.id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the raw bytes travel through pickling (recovery snapshots): the rest is re-derived.
        return (_record_from_raw, (self.line, self.raw))


def _record_from_raw(line: int, raw: bytes) -> Record:
    parsed = parse_record(raw, line)
    if not isinstance(parsed, Record):
        raise ValueError(f"stored record no longer validates: {parsed}")
    return parsed


def compact_json(value: Any) -> str:
    """Compact JSON as the contract defines it: no spaces, non-ASCII not escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def compact_size(raw: bytes) -> int:
    """Size in bytes of the compact UTF-8 encoding of a JSON document."""
    return len(compact_json(json.loads(raw)).encode("utf-8"))


_validate_json = SIGNAL_ADAPTER.validator.validate_json
"""The adapter's core validator: ``SIGNAL_ADAPTER.validate_json`` minus a Python wrapper call (hot path)."""


_ENVELOPE_FIELDS = itemgetter("site", "type", "ts", "id", "data", "seq")
"""Read from the model's ``__dict__`` (where pydantic keeps field values) in one call: a model's attribute reads go
through its ``__getattr__`` hook and class lookups, measured ~2x slower per record."""


def parse_record(raw: bytes, line: int) -> Record | str:
    """Validate one JSON signal line; return the record or the reason it is rejected."""
    records, rejects = parse_lines([(line, raw)])
    return records[0] if records else rejects[0][1]


def _oversized(raw: bytes) -> str | None:
    """The rejection reason of a line longer than the limit, if its compact form is too."""
    # Compact encoding can only be shorter than what was received (no floats are valid),
    # so the exact size is computed only for lines that could be over the limit.
    try:
        size = compact_size(raw)
    except (ValueError, UnicodeError):
        return None  # not JSON: validation names the problem
    if size > MAX_SIGNAL_BYTES:
        return f"signal is {size} bytes in compact JSON, over the {MAX_SIGNAL_BYTES}-byte limit"
    return None


def parse_lines(
    lines: Iterable[tuple[int, bytes]], routed: Container[str] = (), by_site: dict[str, list[Record]] | None = None,
) -> tuple[list[Record], list[tuple[int, str]]]:
    """Validate numbered lines: the records, and ``(line, reason)`` for each rejected one.

    Blank lines are skipped. With ``by_site``, the records of the ``routed``
    types are also appended to it per site, in line order: the grouping the
    detection step needs, done here rather than in a second pass over the
    records. This is the per-signal hot path, so the loop is written out in
    one function with its names bound locally.
    """
    records: list[Record] = []
    rejects: list[tuple[int, str]] = []
    groups = {} if by_site is None else by_site
    validate, make, site_records, envelope_fields = _validate_json, Record, groups.get, _ENVELOPE_FIELDS
    to_ms, second_start, millis = parse_ts, SECOND_STARTS.get, MILLIS
    for line, received in lines:
        raw = received.strip()
        if not raw:
            continue
        if len(raw) > MAX_SIGNAL_BYTES:
            reason = _oversized(raw)
            if reason is not None:
                rejects.append((line, reason))
                continue
        try:
            site, type_, ts_text, id_, data, seq = envelope_fields(validate(raw).__dict__)
            second = second_start(ts_text[:19])  # parse_ts's usual path, inlined
            ts = second + millis[ts_text[20:23]] if second is not None and len(ts_text) == 24 else to_ms(ts_text)
        except ValidationError as error:
            rejects.append((line, first_problem(error, tagged=True)))
            continue
        except TimestampError as error:
            rejects.append((line, f"ts: {error}"))
            continue
        record = make(line, site, type_, ts, id_, data, raw, seq)
        records.append(record)
        if type_ in routed:
            group = site_records(site)
            if group is None:
                groups[site] = [record]
            else:
                group.append(record)
    return records, rejects


_SITE_RE = re.compile(SITE_PATTERN)


def salvage_site_and_ts(raw: bytes) -> tuple[str, int | None]:
    """The site and event time of a rejected line, where they are themselves valid.

    Used to attribute rejected input (counted by site and hour) without keeping
    any of its content; ``("", None)`` when the line names neither.
    """
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeError):
        return "", None
    if not isinstance(envelope, dict):
        return "", None
    site = envelope.get("site")
    site = site if isinstance(site, str) and _SITE_RE.match(site) else ""
    ts = envelope.get("ts")
    try:
        return site, parse_ts_checked(ts) if isinstance(ts, str) else None
    except TimestampError:
        return site, None


def evidence_envelope(raw: bytes) -> Any:
    """The envelope as received, as a JSON value ready to embed in a notification."""
    return json.loads(raw)
