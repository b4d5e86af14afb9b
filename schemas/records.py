"""From one line of input bytes to a validated :class:`Record`, or a one-line reason.

This is the boundary every signal crosses, in replay and (later) live: the
reason strings are what a user sees on stderr as ``line N: <reason>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Container, Iterable
from operator import attrgetter, itemgetter
from typing import Any, Final

from msgspec import Struct
from pydantic import BaseModel, ValidationError

from schemas.fast_signals import decode_signal
from schemas.lines import MAX_SIGNAL_LINE_BYTES, overlong
from schemas.problems import first_problem
from schemas.signals import (
    MAX_SIGNAL_BYTES,
    SAFE_PATH_PATTERN,
    SIGNAL_ADAPTER,
    SIGNAL_ID_PATTERN,
    SITE_PATTERN,
    TickData,
)
from schemas.timestamps import MILLIS, SECOND_STARTS, TS_PATTERN, TimestampError, parse_ts, parse_ts_checked, ts_problem

Payload = BaseModel | Struct
"""A record's ``data``: the payload model, or its Struct where the fast path read the line
(:mod:`schemas.fast_signals`); either is read with ``getattr``, and an absent optional field is None in both."""


class Record(Struct, eq=False, gc=False):
    """A validated signal or tick, as the detection engine sees it.

    ``raw`` keeps the bytes exactly as received so that evidence can carry the
    envelope as received; it is only re-encoded when a notification is built.
    A Struct because one is built per line: its ``__init__`` is msgspec's C code,
    a third of the cost of a Python one (callgrind). Records compare by
    identity (``eq=False``), and the GC does not track them (``gc=False``): a
    record holds strings, integers, bytes and a payload, so it can be in no cycle.
    """

    line: int
    site: str
    type: str
    ts: int
    id: str
    data: Payload
    raw: bytes
    seq: int | None = None

    def __repr__(self) -> str:
        return f"Record(line={self.line}, site={self.site!r}, type={self.type!r}, ts={self.ts}, id={self.id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the raw bytes travel through pickling (recovery snapshots): the rest is re-derived.
        return (_record_from_raw, (self.line, self.raw))


class RecordColumns:
    """What a store keeps of the records :func:`parse_lines` makes, column by column, filled in its pass over the lines.

    Every record's line and ``ts`` (a rejected line without a ``ts`` of its
    own is attributed from them), and the ``signals`` row fields of the site
    signals (not the ticks): site, type, ts, id, seq and the bytes received.
    Read off the records afterwards, each field was a pass over them through a
    generic attribute look-up (0.14 s of CPU on a 560k-line replay, ~4% of
    one with a store); here each is a list append while the value is at hand.
    """

    __slots__ = ("ids", "latest", "lines", "raws", "seqs", "signal_times", "sites", "times", "types")

    def __init__(self) -> None:
        self.lines: list[int] = []
        self.times: list[int] = []
        self.latest = 0
        """The largest ``ts`` of the records (0 for none: every valid ``ts`` is at or after 1970). Kept while parsing,
        a comparison of machine ints per record: ``max`` over the times afterwards cost 115M instructions on a
        560k-line replay (6% of what storing costs in Python)."""
        self.sites: list[str] = []
        self.types: list[str] = []
        self.signal_times: list[int] = []
        self.ids: list[str] = []
        self.seqs: list[int | None] = []
        self.raws: list[bytes] = []


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


_PATTERN_WORDS: dict[str, Callable[[Any], str]] = {
    TS_PATTERN: lambda text: ts_problem(text) if isinstance(text, str) else "not a timestamp",
    SAFE_PATH_PATTERN: lambda _: "must not contain ?, #, @, control characters or whitespace other than plain spaces",
}
"""Patterns whose mismatch is told in words: the regular expression itself says little (ts's is 150 characters)."""


_validate_json: Final = SIGNAL_ADAPTER.validator.validate_json
"""The adapter's core validator: ``SIGNAL_ADAPTER.validate_json`` minus a Python wrapper call (hot path)."""


_ENVELOPE_FIELDS: Final = itemgetter("site", "type", "ts", "id", "data", "seq")
"""Read from the model's ``__dict__`` (where pydantic keeps field values) in one call: a model's attribute reads go
through its ``__getattr__`` hook and class lookups, measured ~2x slower per record."""
_SIGNAL_FIELDS: Final = attrgetter("site", "type", "ts", "id", "data", "seq")
"""The same fields of a fast-path envelope Struct (its ``type`` is a class attribute)."""

TICK_DATA: Final = TickData()
"""The payload of every tick record (a tick has none; the model is frozen, so one instance serves all)."""


def _bare(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix("$")


_TICK_LINE: Final = re.compile(
    r'\{"v":1,"id":"(' + _bare(SIGNAL_ID_PATTERN) + r')","site":"(' + _bare(SITE_PATTERN) + r')","type":"tick","ts":"('
    + _bare(TS_PATTERN).replace(r"(?:\.[0-9]+)?Z", r"\.[0-9]{3}Z") + r')"\}'
)
"""A tick exactly as the gateway writes it (:func:`schemas.factory.make_tick`, compact JSON): valid by its shape alone.

Every value is within its field's pattern (``id``, ``site``, and ``ts`` with
three fraction digits), no character needs an escape, no key repeats, and
nothing else is there, so :data:`SIGNAL_ADAPTER` would accept the line and
give these values: such a line skips validation. Ticks are a quarter to two
thirds of replay's lines. Anything else (spaces, another key order, ``seq``,
``"data":{}``) takes the full path. It matches the text of an ASCII line (every
character it admits is ASCII; the patterns have no class that depends on
Unicode): its groups are then the strings themselves, with no decoding each.
"""

def parse_record(raw: bytes, line: int) -> Record | str:
    """Validate one JSON signal line; return the record or the reason it is rejected."""
    records, rejects = parse_lines([(line, raw)])
    return records[0] if records else rejects[0][1]


_OVERLONG = overlong(MAX_SIGNAL_LINE_BYTES)


def _oversized(raw: bytes) -> str | None:
    """The rejection reason of a line longer than the limit, if its compact form is too."""
    # Compact encoding can only be shorter than what was received (no floats are valid),
    # so the exact size is computed only for lines that could be over the limit.
    try:
        size = compact_size(raw)
    except (ValueError, UnicodeError, RecursionError):
        return None  # not JSON, or nested deeper than Python parses: validation names the problem
    if size > MAX_SIGNAL_BYTES:
        return f"signal is {size} bytes in compact JSON, over the {MAX_SIGNAL_BYTES}-byte limit"
    return None


def parse_lines(
    lines: Iterable[tuple[int, bytes]], routed: Container[str] = (), by_site: dict[str, list[Record]] | None = None,
    columns: RecordColumns | None = None,
) -> tuple[list[Record], list[tuple[int, str]]]:
    """Validate numbered lines: the records, and ``(line, reason)`` for each rejected one.

    Blank lines are skipped. With ``by_site``, the records of the ``routed``
    types are also appended to it per site, in line order: the grouping the
    detection step needs, done here rather than in a second pass over the
    records; with ``columns``, their fields a store keeps, likewise. This is
    the per-signal hot path, so the loop is written out in one function
    (compiled with mypyc where the engine is: see :mod:`operators`).
    """
    records: list[Record] = []
    rejects: list[tuple[int, str]] = []
    groups: dict[str, list[Record]] = {} if by_site is None else by_site
    # Typed locals and direct calls of module-level names (Final where defined here): compiled (mypyc), a str slice
    # and a dict look-up are then C calls, not generic ones through a local alias. Not decode_signal: it is read from
    # the module's namespace, where a test replaces it to compare with pydantic alone.
    fast = decode_signal
    site: str
    type_: str
    ts_text: str
    id_: str
    data: Payload
    seq: int | None
    for line, received in lines:
        raw: bytes = received.strip()
        if not raw:
            continue
        # The regex costs a non-tick line as much as a tick: tried only on what ends like one.
        tick = _TICK_LINE.fullmatch(raw.decode()) if raw.endswith(b'Z"}') and raw.isascii() else None
        if tick is None and len(raw) > MAX_SIGNAL_BYTES:
            reason = _OVERLONG if len(raw) >= MAX_SIGNAL_LINE_BYTES else _oversized(raw)
            if reason is not None:
                rejects.append((line, reason))
                continue
        model = None
        try:
            if tick is not None:
                id_, site, ts_text = tick.groups()
                type_, data, seq = "tick", TICK_DATA, None
            elif (signal := fast(raw)) is not None:
                site, type_, ts_text, id_, data, seq = _SIGNAL_FIELDS(signal)
            else:
                model = _validate_json(raw)
                site, type_, ts_text, id_, data, seq = _ENVELOPE_FIELDS(model.__dict__)
            second = SECOND_STARTS.get(ts_text[:19])  # parse_ts's usual path, inlined
            ts = second + MILLIS[ts_text[20:23]] if second is not None and len(ts_text) == 24 else parse_ts(ts_text)
        except ValidationError as error:
            rejects.append((line, first_problem(error, tagged=True, pattern_words=_PATTERN_WORDS)))
            continue
        except TimestampError as error:
            rejects.append((line, f"ts: {error}"))
            continue
        if model is not None:
            # Validation keeps the last of repeated keys: a line with more keys than it has distinct ones repeats one.
            # Each key is followed by one ':', and ts holds two; other ':' are in strings (see _repeated_key).
            keys = len(model.__pydantic_fields_set__) + len(data.__pydantic_fields_set__)  # type: ignore[union-attr]
            if raw.count(b":") != keys + 2 or _BACKSLASH in raw:
                repeated = _repeated_key(raw, data, keys)  # type: ignore[arg-type]
                if repeated is not None:
                    rejects.append((line, repeated))
                    continue
        # Boxed once (compiled, ``line`` and ``ts`` are machine ints): the record and the store's columns share each
        # int object, where every use as an object would allocate one of its own.
        number: Any = line
        stamp: Any = ts
        record = Record(number, site, type_, stamp, id_, data, raw, seq)
        records.append(record)
        if columns is not None:
            columns.lines.append(number)
            columns.times.append(stamp)
            if ts > columns.latest:
                columns.latest = ts
            if type_ != "tick":
                columns.sites.append(site)
                columns.types.append(type_)
                columns.signal_times.append(stamp)
                columns.ids.append(id_)
                columns.seqs.append(seq)
                columns.raws.append(raw)
        if type_ in routed:
            group = groups.get(site)
            if group is None:
                groups[site] = [record]
            else:
                group.append(record)
    return records, rejects


_BACKSLASH: Final = ord("\\")
"""An int: ``int in bytes`` is a plain ``memchr``, ~10x faster than ``bytes in bytes`` on a line (measured)."""


class KeyedObject(dict[str, Any]):
    """A JSON object that remembers the first key it was given twice (``json.loads`` would keep the last value).

    ``json.loads(text, object_pairs_hook=keyed_object)`` builds these: a reader that re-encodes signals before
    :func:`parse_lines` sees them (the gateway) can find repeated keys the re-encoding would hide. ``repeated`` is
    set by ``__init__``, not as a class attribute: compiled (mypyc), a class attribute's default is not an instance's.
    """

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated: str | None = None


def keyed_object(pairs: list[tuple[str, Any]]) -> KeyedObject:
    """``object_pairs_hook`` for ``json.loads``: a :class:`KeyedObject` of ``pairs``."""
    built = KeyedObject(pairs)
    if len(built) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                built.repeated = key
                break
            seen.add(key)
    return built


def _repeated_key(raw: bytes, data: BaseModel, keys: int) -> str | None:
    """The reason to reject a valid line that repeats a key (envelope or ``data``), or None if it repeats none.

    Called when the cheap count in :func:`parse_lines` does not settle it. Without escapes every ``:`` of the line
    is literal: one after each key, two in ``ts``, none in ``id``, ``site`` or ``type`` (their patterns), and the
    rest in the payload's strings — so counting those settles it. Otherwise the line is parsed again, keeping every
    key (only lines with escapes or a repeated key get here).
    """
    if _BACKSLASH not in raw:
        in_strings = sum(value.count(":") for value in data.__dict__.values() if type(value) is str)
        if raw.count(b":") == keys + 2 + in_strings:
            return None
    envelope = json.loads(raw, object_pairs_hook=keyed_object)
    if envelope.repeated is not None:
        return f"{envelope.repeated}: key given more than once"
    payload = envelope.get("data")
    if isinstance(payload, KeyedObject) and payload.repeated is not None:
        return f"data.{payload.repeated}: key given more than once"
    return None


_SITE_RE = re.compile(SITE_PATTERN)

_SITE_KEY = b'"site":"'
_SITE_VALUE = re.compile(SITE_PATTERN.encode())


KNOWN_SITES_LIMIT = 100_000
"""How many site values one :class:`RoutingSites` remembers as checked; past it, new values are checked every time."""


class RoutingSites:
    r"""The site of a line by a look at its bytes, without parsing it: None when the look does not settle it.

    It settles it when the line holds exactly one ``"site":"`` (as
    ``bytes.split`` counts them), not right after a backslash, followed by
    a value of the site pattern and its closing quote; otherwise (no
    occurrence, two, whitespace around the colon, an escaped key or value,
    an invalid value) the caller parses the line. Replay routes each raw
    line by this to the worker that owns its site, so every line is
    validated once, there (:func:`parse_lines`); the live flow sends each
    line to its site's detector by it.

    Why a VALID line is never given a wrong site: the four quotes of the
    occurrence are unescaped (the first is not after a backslash, the others
    follow ``e``, ``:`` and a pattern character), and in JSON unescaped
    quotes are exactly the string delimiters — a string value never holds
    one. So ``"site"`` is a string followed by ``:``, a key, and its value
    is the string of pattern characters found (no escapes: its bytes are its
    text). No payload has a ``site`` field nor any free-form object (every
    model is ``extra="forbid"``), so in a valid line that key is the
    envelope's, and it is the only one: a repeated key, even spelled with a
    ``\u`` escape, is rejected (:func:`_repeated_key`). What is found is
    therefore the site validation gives the line.

    An INVALID line may be sent anywhere: wherever it is parsed it is
    rejected with the same reason (the same bytes through the same
    :func:`parse_lines`), never reaches a detector, and its reject is put
    back in line order with the others (:class:`flows.detect.ChunkOrder`).

    Why an object: a reader sees the same few sites again and again, so it
    remembers up to ``limit`` values that matched the pattern and checks
    only new ones with the regular expression. The look-up ran once per
    line and cost ~0.8 µs of it, half in that match; with the memory and
    one ``split`` instead of two ``find`` it costs ~0.4 µs (measured on the
    scale bench's lines; it is the routing step of every cluster process).
    The answer is the same with or without the memory: a value is
    remembered only after it passed the same check.
    """

    def __init__(self, limit: int = KNOWN_SITES_LIMIT) -> None:
        self.known: dict[bytes, bytes] = {}
        self.limit = limit

    def __call__(self, raw: bytes) -> bytes | None:
        """The line's site, or None: see the class."""
        pieces = raw.split(_SITE_KEY)
        if len(pieces) != 2:
            return None
        before, after = pieces
        if not before or before[-1] == _BACKSLASH:
            return None
        value, quote, _ = after.partition(b'"')
        if not quote:
            return None
        site = self.known.get(value)
        if site is None:
            if not _SITE_VALUE.fullmatch(value):
                return None
            site = value
            if len(self.known) < self.limit:
                self.known[value] = value
        return site


def salvage_site_and_ts(raw: bytes) -> tuple[str, int | None]:
    """The site and event time of a rejected line, where they are themselves valid.

    Used to attribute rejected input (counted by site and hour) without keeping
    any of its content; ``("", None)`` when the line names neither.
    """
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeError, RecursionError):  # a rejected line may be anything, nested arrays included
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
