"""No single line stops detection: mutated signal lines through ``parse_lines`` and the store-row builders.

Hypothesis starts from the lines of a synthetic corpus (simulate/corpus.py: every
type, ticks, and invalid lines) and mutates them the ways that once stopped a
run: deep nesting, integers huge and negative, timestamps at and past the ends
of the contract's range, repeated keys, invalid UTF-8. Every line must come out
as a record or as one one-line reason, never an exception; every record must
give store rows inside the ranges of the store's column types, and every
rejected line a ``rejected`` row; metric sums stay finite.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from operators.metrics import MetricColumns, SiteMetrics, compile_metric, summand
from schemas.problems import first_problem
from schemas.records import _PATTERN_WORDS, _TICK_LINE, Record, RecordColumns, RoutingSites, parse_lines, salvage_site_and_ts
from schemas.rule_loader import load_rules
from schemas.signals import SIGNAL_ADAPTER, SITE_PATTERN
from schemas.store import LAST_DATETIME_S, metric_columns, parsed_signal_columns, rejected_row, signal_columns
from schemas.timestamps import TimestampError, parse_ts
from simulate.corpus import generate_corpus

CORPUS = list(generate_corpus(1000, 3, seed=11, duration_s=600))
METRICS = [compile_metric(metric) for metric in load_rules(Path(__file__).resolve().parents[2] / "rules").metrics]
UINT64_MAX = 2**64 - 1
DATETIME64_MS = (-2_208_988_800_000, 10_413_791_999_999)  # DateTime64(3): 1900-01-01 … 2299-12-31T23:59:59.999
EXTREME_INTEGERS = [str(value) for value in (2**53 - 1, 2**53, -(2**53 - 1), -(2**53), 2**63, 2**64, -(2**64), 10**400, -(10**400))]
EXTREME_INTEGERS += ["9" * 5000, "-" + "9" * 5000]  # past what Python's int() converts by default


def integers() -> st.SearchStrategy[str]:
    """Integers as JSON text (Python cannot print the longest ones)."""
    return st.one_of(st.sampled_from(EXTREME_INTEGERS), st.integers().map(str), st.integers(-(10**30), 10**30).map(str))


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """Shapes near and far from the contract's: every year, out-of-range parts, leap seconds, offsets, lower case."""
    year = draw(st.one_of(st.sampled_from([0, 1, 1899, 1900, 1969, 1970, 2106, 2107, 2199, 2200, 2299, 2300, 9999]),
                          st.integers(0, 9999)))
    parts = [draw(st.integers(0, 13)), draw(st.integers(0, 32)), draw(st.integers(0, 25)), draw(st.integers(0, 61)),
             draw(st.integers(0, 61))]
    if draw(st.booleans()):
        parts = [12, 31, 23, 59, 59]
    fraction = draw(st.sampled_from(["", ".", ".9", ".999", ".999999999", ",5"]))
    separator = draw(st.sampled_from(["T", "T", "t", " "]))
    zone = draw(st.sampled_from(["Z", "Z", "z", "", "+01:00", "-00:00", "+0100"]))
    month, day, hour, minute, second = parts
    return f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def set_integer(draw: st.DrawFn, signal: dict[str, Any]) -> str:
    data = signal.get("data")
    targets = [("seq", signal)] + [(name, data) for name, value in data.items() if isinstance(value, int)] \
        if isinstance(data, dict) else [("seq", signal)]
    name, owner = draw(st.sampled_from(targets))
    owner[name] = "<integer>"
    return json.dumps(signal, separators=(",", ":")).replace('"<integer>"', draw(integers()), 1)


def set_ts(draw: st.DrawFn, signal: dict[str, Any]) -> str:
    signal["ts"] = draw(timestamps())
    return json.dumps(signal, separators=(",", ":"))


def repeat_key(draw: st.DrawFn, signal: dict[str, Any]) -> str:
    text = json.dumps(signal, separators=(",", ":"))
    owner = draw(st.sampled_from(["envelope", "data"] if isinstance(signal.get("data"), dict) and signal["data"] else ["envelope"]))
    keys = list(signal) if owner == "envelope" else list(signal["data"])
    key = draw(st.sampled_from(keys))
    value = json.dumps(signal[key] if owner == "envelope" else signal["data"][key])
    member = f'"{key}":{value},'
    return "{" + member + text[1:] if owner == "envelope" else text.replace('"data":{', '"data":{' + member, 1)


def nest(draw: st.DrawFn, signal: dict[str, Any]) -> str:
    depth = draw(st.sampled_from([2, 200, 999, 1000, 1001, 5000, 100_000]))
    if draw(st.booleans()):
        return nested(depth, json.dumps(signal))
    signal[draw(st.sampled_from(["data", "seq", "ts", "v"]))] = "<nested>"
    return json.dumps(signal, separators=(",", ":")).replace('"<nested>"', nested(depth), 1)


def spell_site(draw: st.DrawFn, signal: dict[str, Any]) -> str:
    """The ``site`` key written otherwise, or a second one: what the cheap routing look-up must not be fooled by."""
    text = json.dumps(signal, separators=(",", ":"))
    other = draw(st.sampled_from(["other-site", "Other", "a\\\"b", ""]))
    return draw(st.sampled_from([
        text.replace('"site":', '"site" : ', 1),
        text.replace('"site":', '"\\u0073ite":', 1),
        text.replace('"site":', '"\\u0073ite":' + json.dumps(other) + ',"site":', 1),
        text.replace('"site":', f'"site":{json.dumps(other)},"site":', 1),
        text.replace('"data":{', f'"data":{{"site":{json.dumps(other)},', 1),
        text.replace('"site":', '"x\\"site":"y","site":', 1),
        json.dumps(signal),
    ]))


MUTATIONS = [set_integer, set_ts, repeat_key, nest, spell_site]


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """A corpus line after one or two mutations, and perhaps a few bytes spliced in (invalid UTF-8 among them)."""
    line = draw(st.sampled_from(CORPUS))
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=0, max_size=2)):
        try:
            signal = json.loads(line)
        except (ValueError, RecursionError):  # a mutation made it unreadable: it stays as it is
            break
        if not isinstance(signal, dict):
            break
        line = mutation(draw, signal)
    raw = line.encode("utf-8")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(raw)))
        spliced = draw(st.one_of(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\", b'"', b"\n"]),
                                 st.binary(max_size=8)))
        raw = raw[:at] + spliced + raw[at:]
    return raw


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(mutated_lines(), min_size=1, max_size=6))
def test_every_mutated_line_is_a_record_or_one_reason_and_gives_storable_rows(raws: list[bytes]) -> None:
    lines = list(enumerate(raws, 1))
    parsed = RecordColumns()
    records, rejects = parse_lines(lines, columns=parsed)
    # What the store keeps, filled in the parse's own pass: the same as read off the records afterwards.
    assert (parsed.lines, parsed.times) == ([record.line for record in records], [record.ts for record in records])
    assert parsed.latest == max([record.ts for record in records], default=0)
    assert parsed_signal_columns(parsed).data == signal_columns(records).data
    blank = {line for line, raw in lines if not raw.strip()}
    assert sorted([record.line for record in records] + [line for line, _ in rejects]) == sorted(set(dict(lines)) - blank)
    for _, reason in rejects:
        assert reason and "\n" not in reason and len(reason) < 400, reason
    check_signal_rows(records)
    check_rejected_rows(lines, rejects)
    check_metric_rows(records)


WARM_ROUTING = RoutingSites()
"""One look-up across the examples, as a reader keeps it: it remembers the sites it checked before."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_lines())
def test_the_routing_look_up_never_gives_a_valid_line_another_site(raw: bytes) -> None:
    # Replay routes raw lines to the worker owning their site by this look-up (RoutingSites' docstring argues why).
    site = RoutingSites()(raw)
    assert WARM_ROUTING(raw) == site  # what it remembers changes no answer
    records, _ = parse_lines([(1, raw)])
    if site is not None and records:
        assert records[0].site == site.decode()


ROUTING_CASES = [
    (b'{"v":1,"site":"shop-1.example","type":"tick"}', b"shop-1.example"),
    (b'{"v":1,"site" : "shop-1","type":"tick"}', None),  # whitespace around the colon
    (b'{"v":1,"site":"shop-1","site":"shop-1"}', None),  # twice
    (b'{"v":1,"x\\"site":"shop-1"}', None),  # the key's quote is escaped: the end of another key
    (b'{"v":1,"site":"Shop"}', None),  # not the site pattern
    (b'{"v":1,"site":"shop\\u002d1"}', None),  # an escape in the value
    (b'{"v":1,"site":"shop-1', None),  # no closing quote
    (b'"site":"shop-1"', None),  # not inside an object
    (b"", None),
]


@pytest.mark.parametrize(("raw", "expected"), ROUTING_CASES)
def test_the_routing_look_up_settles_only_one_plain_site_key(raw: bytes, expected: bytes | None) -> None:
    assert RoutingSites()(raw) == expected


@pytest.mark.parametrize("limit", [0, 1, 100])
def test_the_routing_look_up_gives_the_same_answers_once_it_knows_the_sites_and_past_its_limit(limit: int) -> None:
    routing = RoutingSites(limit)
    for raw in (b'{"v":1,"site":"shop-1","type":"tick"}', b'{"v":1,"site":"shop-1.example","type":"tick"}'):
        routing(raw)  # it now knows shop-1 (and, under a limit above 1, shop-1.example)
    assert len(routing.known) == min(limit, 2)
    for raw, expected in ROUTING_CASES:
        assert routing(raw) == expected, raw


@st.composite
def tick_lines(draw: st.DrawFn) -> bytes:
    """Ticks in the gateway's layout, their values mostly in their patterns (the shape test), the rest anything."""
    plain = draw(st.integers(0, 3)) > 0
    id_ = draw(st.from_regex(r"\Atick-[0-9]{10}-[0-9a-f]{8}\Z") if plain else st.text(max_size=70))
    site = draw(st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,62}\Z") if plain else st.text(max_size=70))
    ts = draw(st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z".format, st.integers(1960, 2210), st.integers(0, 13),
        st.integers(0, 32), st.integers(0, 24), st.integers(0, 60), st.integers(0, 60), st.integers(0, 999),
    ) if plain else st.one_of(timestamps(), st.text(max_size=30)))
    line = json.dumps({"v": 1, "id": id_, "site": site, "type": "tick", "ts": ts}, separators=(",", ":"), ensure_ascii=False)
    line = draw(st.sampled_from([line, line, line, line + "\n", line.replace(',"ts"', ',"seq":1,"ts"'),
                                 line[:-1] + ',"data":{}}', line.replace('"v":1', '"v":2'), line.replace(":", ": ", 1)]))
    return line.encode()


def full_validation(raw: bytes) -> tuple[Any, ...] | str:
    """What validating a line against the models makes of it: its envelope fields (ts in ms), or the reason."""
    try:
        model = SIGNAL_ADAPTER.validate_json(raw)
    except ValidationError as error:
        return first_problem(error, tagged=True, pattern_words=_PATTERN_WORDS)
    try:
        return (model.site, model.type, parse_ts(model.ts), model.id, model.seq, model.data.__pydantic_fields_set__)
    except TimestampError as error:
        return f"ts: {error}"


@settings(max_examples=500, deadline=None)
@given(tick_lines())
def test_a_tick_read_by_its_shape_is_exactly_what_validation_makes_of_it(raw: bytes) -> None:
    # parse_lines skips validation for a tick in the gateway's layout (_TICK_LINE): it must change nothing.
    records, rejects = parse_lines([(1, raw)])
    expected = full_validation(raw.strip())
    if rejects:
        assert rejects[0][1] == expected
    else:
        record = records[0]
        assert (record.site, record.type, record.ts, record.id, record.seq, record.data.__pydantic_fields_set__) == expected
    # Admitted by its shape alone (the pattern matches the text of an ASCII line): validation admits it too (the
    # calendar may refuse ts).
    if raw.strip().isascii() and _TICK_LINE.fullmatch(raw.strip().decode()):
        assert not isinstance(expected, str) or expected.startswith("ts: ")


def check_signal_rows(records: list[Record]) -> None:
    site, type_, ts, _, seq, envelope = signal_columns(records).data
    assert all(re.fullmatch(SITE_PATTERN, value) for value in site)
    assert all(0 <= value <= 7_258_118_399_999 for value in ts)  # the contract's range: inside DateTime64(3)'s
    assert all(DATETIME64_MS[0] <= value <= DATETIME64_MS[1] for value in ts)
    assert all(value is None or 0 <= value <= UINT64_MAX for value in seq)
    assert all(isinstance(value, bytes) and value.decode() for value in envelope)  # as received: a record's bytes are UTF-8
    assert len(type_) == len([record for record in records if record.type != "tick"])


def check_rejected_rows(lines: list[tuple[int, bytes]], rejects: list[tuple[int, str]]) -> None:
    raw_of = dict(lines)
    for line, reason in rejects:
        site, ts = salvage_site_and_ts(raw_of[line])
        assert site == "" or re.fullmatch(SITE_PATTERN, site)
        _, _, _, _, hour = rejected_row("fuzz", line, site, reason, ts if ts is not None else 0)
        assert 0 <= hour <= LAST_DATETIME_S  # DateTime: 32-bit seconds


def check_metric_rows(records: list[Record]) -> None:
    by_site: dict[str, SiteMetrics] = {}
    points = MetricColumns()
    for record in sorted(records, key=lambda record: record.ts):
        metrics = by_site.setdefault(record.site, SiteMetrics(METRICS, record.site))
        metrics.process(record, points)
    for metrics in by_site.values():
        metrics.flush(points)
    columns = metric_columns(points).data
    assert all(math.isfinite(value) for value in columns[6]) and all(0 <= signals <= UINT64_MAX for signals in columns[7])


@pytest.mark.parametrize(("value", "expected"), [(None, 0.0), (0, 0.0), (2**53 - 1, float(2**53 - 1)),
                                                 (10**400, math.inf), (-(10**400), -math.inf)])
def test_a_metric_sum_takes_any_integer_without_raising(value: int | None, expected: float) -> None:
    # Validation bounds what reaches a sum; should a bound ever be missed, the bucket shows inf instead of the
    # detection step raising OverflowError on every restart at the same record.
    assert summand(value) == expected
