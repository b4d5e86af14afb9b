"""What ``deliver`` accepts as a notification record: what the flow can emit, every field within its contract bound.

Each case breaks one bound of alerts.md, rules.md or signals.md and must be
one reason naming the field; :func:`schemas.alerts.link_base` makes the
links a valid record carries.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.alerts import MAX_LINK_BASE, ReceivedRecord, link_base, parse_notification, record_line
from schemas.records import compact_json
from tests.support.factories import ALERT_ID, make_notification, resolved_notification

RULE = make_notification()["rule"]
SIGNAL = make_notification()["evidence"][0]


def reason(record: dict[str, Any]) -> str | ReceivedRecord:
    return parse_notification(json.dumps(record, ensure_ascii=False))


@pytest.mark.parametrize(("changes", "expected"), [
    ({"rule": {**RULE, "id": "r" * 40_000}}, "rule.id: string should match pattern"),
    ({"rule": {**RULE, "title": "t" * 121}}, "rule.title: string should have at most 120 characters"),
    ({"rule": {**RULE, "description": "d" * 1001}}, "rule.description: string should have at most 1000 characters"),
    ({"site": "Shop EU"}, "site: string should match pattern"),
    ({"subsystem": "s" * 33}, "subsystem: string should have at most 32 characters"),
    ({"seq": 2**32}, "seq: input should be less than or equal to 4294967295"),
    ({"group": {"transport": "x" * 257}}, "group.transport"),
    ({"group": {"a": 1, "b": 2, "c": 3, "d": 4}}, "group: a key that is not a payload field"),
    ({"group": {"x" * 50_000: 1}}, "group: a key that is not a payload field"),
    ({"summary": "s" * 2001}, "summary: string should have at most 2000 characters"),
    ({"started_at": "2026-02-30T10:14:00.000Z"}, "started_at: 2026-02-30 is not a calendar date"),
    ({"evaluated_at": "2026-11-28T10:14:00." + "0" * 40_000 + "Z"}, "evaluated_at: string should match pattern"),
    ({"ended_at": "2026-11-28T10:44:00.000Z"}, "ended_at: a resolved notification has an ended_at, a firing one has null"),
    ({"value": {"count": 1}}, "value: a ratio rule's value has the keys count, ratio, total"),
    ({"value": {"count": True, "total": 1, "ratio": 1.0}}, "value: count: should be a non-negative integer"),
    ({"suppressed_count": 2**53}, "suppressed_count: input should be less than or equal to 9007199254740991"),
    ({"evidence": [SIGNAL] * 101, "evidence_total": 101}, "evidence: list should have at most 100 items"),
    ({"evidence": [{**SIGNAL, "type": "tick", "data": {}}]}, "evidence.0.type: unknown signal type 'tick'"),
    ({"evidence": [{**SIGNAL, "data": {**SIGNAL["data"], "error_class": "e" * 3000}}]},
     "evidence.0: a signal of 3"),
    ({"evidence_total": 2}, "evidence_total: smaller than the number of evidence signals"),
    ({"link": "http://localhost:8080/alerts/" + "0" * 32}, "link: should be <public base URL>/alerts/<alert_id>"),
    ({"link": f"https://ops.example/a b/alerts/{ALERT_ID}"}, "link: is not a valid http(s) URI"),
    ({"deliver": ["On Call"]}, "deliver.0: string should match pattern"),
    ({"x" * 10_000: 1}, "x" * 79 + "…: field not allowed"),
], ids=lambda value: None if isinstance(value, dict) else re.sub(r"\W+", "-", value.split(":")[0])[:40])
def test_a_field_beyond_its_bound_is_one_reason_naming_it(changes: dict[str, Any], expected: str) -> None:
    found = reason(make_notification() | changes)
    assert isinstance(found, str) and found.startswith(expected), found
    assert len(found) < 300


def test_what_the_flow_emits_is_accepted() -> None:
    for record in (make_notification(), resolved_notification(), make_notification(link=f"{link_base('https://müller.example/ü')}"
                                                                                       f"/alerts/{ALERT_ID}")):
        assert isinstance(reason(record), ReceivedRecord)


def test_a_parsed_record_keeps_its_bytes_and_encodes_back_to_them() -> None:
    """One definition: the model read from a line writes that line again (evidence keys in their received order)."""
    record = make_notification()
    record["evidence"][0] = dict(reversed(record["evidence"][0].items()))  # not the envelope model's field order
    line = compact_json(record)
    parsed = parse_notification(line + "\n")
    assert isinstance(parsed, ReceivedRecord)
    assert parsed.raw == line.encode() and record_line(parsed.record) == line
    assert list(parsed.record.evidence[0]) == list(record["evidence"][0])


BASES = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https", "HTTPS"]),
    st.sampled_from(["ops.example", "müller.example", "ÖPS.example", "127.0.0.1", "[::1]", "localhost"]),
    st.sampled_from(["", ":8080"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"], exclude_characters="?#"), max_size=60).map(lambda p: "/" + p),
)


@settings(max_examples=200, deadline=None)
@given(BASES)
def test_an_encoded_link_base_is_a_plain_ascii_uri_and_encoding_it_again_changes_nothing(base: str) -> None:
    encoded = link_base(base)
    assert re.fullmatch(r"https?://[A-Za-z0-9\-._~!$&'()*+,;=:@/%\[\]]+", encoded), encoded
    assert link_base(encoded) == encoded and len(encoded) <= MAX_LINK_BASE
    assert not encoded.endswith("/")
