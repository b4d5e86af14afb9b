"""The signal contract (signals.md): what `parse_record` accepts, and why it rejects the rest."""

from __future__ import annotations

import calendar
import json
import math
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.factory import identity_hash, make_signal, signal_line
from schemas.lines import MAX_SIGNAL_LINE_BYTES, overlong
from schemas.records import Record, evidence_envelope, parse_record, salvage_site_and_ts
from schemas.signals import MAX_SAFE_INTEGER, MAX_SIGNAL_BYTES, PAYLOADS, SIGNAL_TYPES, TickData, signals_json_schema

TS = "2026-11-28T10:00:00.120Z"
TS_MS = calendar.timegm((2026, 11, 28, 10, 0, 0)) * 1000 + 120
SIGNAL_ID = "01JDQ3K9Y0A1B2C3D4E5F6G7H8"
SITE = "shop-eu"
HASH = identity_hash("alice", "shop-eu-key")
FINGERPRINT = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
PATTERN_MISMATCH = "string should match pattern"

# A full, valid payload per type (every optional field set).
FULL: dict[str, dict[str, Any]] = {
    "auth": {"outcome": "failure", "method": "xmlrpc", "user_hash": HASH, "user_len": 5, "source": "203.0.113.0/24", "privileged": False},
    "mail": {"outcome": "failed", "transport": "smtp", "error_class": "auth"},
    "cron": {"job": "wp_scheduled_delete", "event": "finished", "duration_ms": 1200},
    "php_error": {"level": "fatal", "component": "plugin:woo", "file": "wp-content/plugins/woo/x.php", "line": 42,
                  "fingerprint": FINGERPRINT},
    "config_change": {"option": "siteurl", "before_hash": HASH, "after_hash": FINGERPRINT, "actor_hash": HASH, "sensitive": True},
    "db_event": {"kind": "slow_query", "table": "wp_posts", "duration_ms": 3500},
    "request": {"method": "GET", "path": "/wp-json/wp/v2/posts/{id}", "route_group": "rest", "status": 200, "duration_ms": 35,
                "ua_family": "Chrome"},
    "plugin": {"slug": "akismet", "kind": "plugin", "action": "updated", "version_before": "5.0", "version_after": "5.1"},
    "file_edit": {"path": "wp-content/uploads/x.php", "change": "created", "size_delta": -512, "flags": ["php_in_uploads", "eval_call"]},
    "integration": {"event": "heartbeat", "dropped": 0, "buffered": 3, "version": "1.2.0"},
}


def required(type_: str) -> list[str]:
    return [name for name, info in PAYLOADS[type_].model_fields.items() if info.is_required()]


def optional(type_: str) -> list[str]:
    return [name for name, info in PAYLOADS[type_].model_fields.items() if not info.is_required()]


def minimal(type_: str) -> dict[str, Any]:
    return {name: FULL[type_][name] for name in required(type_)}


def envelope(type_: str = "mail", **data: Any) -> dict[str, Any]:
    payload = {**FULL[type_], **data} if type_ != "tick" else data
    return make_signal(SITE, type_, TS, SIGNAL_ID, **payload)


def with_data(type_: str, **changes: Any) -> dict[str, Any]:
    """A full envelope of ``type_`` whose payload has ``changes`` applied (``...`` removes a field)."""
    signal = envelope(type_)
    data = {**signal["data"], **changes}
    signal["data"] = {key: value for key, value in data.items() if value is not ...}
    return signal


def parse(signal: dict[str, Any] | bytes, line: int = 7) -> Record | str:
    raw = signal if isinstance(signal, bytes) else signal_line(signal).encode("utf-8")
    return parse_record(raw, line)


def accept(signal: dict[str, Any] | bytes) -> Record:
    parsed = parse(signal)
    assert isinstance(parsed, Record), f"rejected: {parsed}"
    return parsed


def reject(signal: dict[str, Any] | bytes) -> str:
    parsed = parse(signal)
    assert isinstance(parsed, str), f"accepted: {signal!r}"
    return parsed


# --- every type accepted ---------------------------------------------------------------------


def test_examples_cover_every_signal_type() -> None:
    assert set(FULL) == set(SIGNAL_TYPES)


@pytest.mark.parametrize("type_", SIGNAL_TYPES)
def test_full_payload_accepted(type_: str) -> None:
    record = accept(envelope(type_))
    assert (record.line, record.site, record.type, record.id, record.ts) == (7, SITE, type_, SIGNAL_ID, TS_MS)
    assert {name: getattr(record.data, name) for name in PAYLOADS[type_].model_fields} == FULL[type_]


@pytest.mark.parametrize("type_", SIGNAL_TYPES)
def test_minimal_payload_accepted_and_optional_fields_default_to_none(type_: str) -> None:
    record = accept(make_signal(SITE, type_, TS, SIGNAL_ID, **minimal(type_)))
    for name in optional(type_):
        assert getattr(record.data, name) is None


@pytest.mark.parametrize("type_", SIGNAL_TYPES)
def test_optional_fields_may_be_null(type_: str) -> None:
    nulls = {name: None for name in optional(type_)}
    record = accept(with_data(type_, **nulls))
    assert all(getattr(record.data, name) is None for name in nulls)


def test_only_php_error_and_file_edit_have_no_optional_field() -> None:
    # Guards the two tests above against passing vacuously.
    assert [t for t in SIGNAL_TYPES if not optional(t)] == ["php_error", "file_edit"]


@pytest.mark.parametrize(("type_", "name"), [(t, name) for t in SIGNAL_TYPES for name in required(t)])
def test_required_payload_field_missing(type_: str, name: str) -> None:
    assert reject(with_data(type_, **{name: ...})) == f"data.{name}: field required"


def test_seq_optional_absent_null_or_non_negative() -> None:
    assert accept(envelope()).id == SIGNAL_ID
    assert accept({**envelope(), "seq": None}).id == SIGNAL_ID
    assert accept({**envelope(), "seq": 0}).id == SIGNAL_ID
    assert accept(make_signal(SITE, "mail", TS, SIGNAL_ID, seq=42, **FULL["mail"])).id == SIGNAL_ID
    assert reject({**envelope(), "seq": -1}) == "seq: input should be greater than or equal to 0"


def test_spec_examples_accepted() -> None:
    lines = [
        b'{"v":1,"id":"01JDQ3K9Y0A1B2C3D4E5F6G7H8","site":"shop-eu","type":"mail","ts":"2026-11-28T10:00:00.120Z","seq":42,'
        b'"data":{"outcome":"failed","transport":"smtp","error_class":"auth"}}',
        b'{"v":1,"id":"01JDQ3KA00000000000000AUTH","site":"shop-eu","type":"auth","ts":"2026-11-28T10:00:01.000Z","data":'
        b'{"outcome":"failure","method":"xmlrpc","user_hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",'
        b'"user_len":5,"source":"203.0.113.0/24"}}',
        b'{"v":1,"id":"tick-shop-eu-1764324010","site":"shop-eu","type":"tick","ts":"2026-11-28T10:00:10.000Z"}',
    ]
    assert [accept(line).type for line in lines] == ["mail", "auth", "tick"]


# --- ticks -----------------------------------------------------------------------------------


def test_tick_without_data_accepted() -> None:
    record = accept(make_signal(SITE, "tick", TS, "tick-00000001"))
    assert record.type == "tick"
    assert record.data == TickData()


def test_tick_with_empty_data_accepted() -> None:
    signal = {**make_signal(SITE, "tick", TS, "tick-00000001"), "data": {}}
    assert accept(signal).type == "tick"


def test_tick_with_a_field_rejected() -> None:
    signal = {**make_signal(SITE, "tick", TS, "tick-00000001"), "data": {"count": 1}}
    assert reject(signal) == "data.count: field not allowed"


# --- envelope --------------------------------------------------------------------------------


def test_unknown_envelope_field_rejected() -> None:
    assert reject({**envelope(), "host": "web1"}) == "host: field not allowed"


@pytest.mark.parametrize("name", ["v", "id", "site", "ts"])
def test_missing_envelope_field_rejected(name: str) -> None:
    signal = envelope()
    del signal[name]
    assert reject(signal) == f"{name}: field required"


def test_missing_type_and_unknown_type_rejected() -> None:
    signal = envelope()
    del signal["type"]
    assert reject(signal) == "type: field required"
    assert reject({**envelope(), "type": "email"}) == "type: unknown signal type 'email'"


def test_missing_data_rejected_for_a_site_signal() -> None:
    signal = envelope()
    del signal["data"]
    assert reject(signal) == "data: field required"


def test_data_must_be_an_object() -> None:
    assert reject({**envelope(), "data": ["failed"]}) == "data: must be an object"


def test_not_json_and_not_an_object() -> None:
    assert reject(b"outcome=failed").startswith("not valid JSON: ")
    assert reject(b'{"v":1,') .startswith("not valid JSON: ")
    assert reject(b"[1, 2]") == "not a JSON object"
    assert reject(b'"mail"') == "not a JSON object"


def test_several_problems_reported_as_first_plus_count() -> None:
    signal = with_data("auth", outcome="maybe", method="telepathy")
    assert reject(signal) == "data.outcome: input should be 'success', 'failure', 'lockout' or 'logout' (+1 more)"


# --- privacy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["email", "body", "message", "password", "content"])
@pytest.mark.parametrize("type_", ["auth", "mail", "request", "file_edit"])
def test_privacy_fields_rejected(type_: str, name: str) -> None:
    assert reject(with_data(type_, **{name: "alice@example.com"})) == f"data.{name}: field not allowed"


@pytest.mark.parametrize("type_", SIGNAL_TYPES)
def test_unknown_data_field_rejected_for_every_type(type_: str) -> None:
    assert reject(with_data(type_, user="alice")) == "data.user: field not allowed"


# --- wrong types and strict integers ---------------------------------------------------------


@pytest.mark.parametrize("value", [1.0, "1", True])
def test_version_is_a_strict_integer(value: Any) -> None:
    assert reject({**envelope(), "v": value}) == "v: input should be a valid integer"


@pytest.mark.parametrize(("value", "reason"), [
    (2, "v: input should be less than or equal to 1"),
    (0, "v: input should be greater than or equal to 1"),
])
def test_version_must_be_one(value: int, reason: str) -> None:
    assert reject({**envelope(), "v": value}) == reason


INT_FIELDS = [
    ("auth", "user_len"), ("cron", "duration_ms"), ("php_error", "line"), ("db_event", "duration_ms"),
    ("request", "status"), ("request", "duration_ms"), ("file_edit", "size_delta"),
    ("integration", "dropped"), ("integration", "buffered"),
]


@pytest.mark.parametrize("value", [200.0, "200", True])
@pytest.mark.parametrize(("type_", "name"), INT_FIELDS)
def test_integer_fields_are_strict(type_: str, name: str, value: Any) -> None:
    assert reject(with_data(type_, **{name: value})) == f"data.{name}: input should be a valid integer"


@pytest.mark.parametrize("value", [1.0, "1", True])
def test_seq_is_a_strict_integer(value: Any) -> None:
    assert reject({**envelope(), "seq": value}) == "seq: input should be a valid integer"


@pytest.mark.parametrize(("type_", "changes", "reason"), [
    ("auth", {"outcome": 1}, "data.outcome: input should be 'success', 'failure', 'lockout' or 'logout'"),
    ("auth", {"privileged": "true"}, "data.privileged: input should be a valid boolean"),
    ("auth", {"privileged": 1}, "data.privileged: input should be a valid boolean"),
    ("config_change", {"sensitive": "yes"}, "data.sensitive: input should be a valid boolean"),
    ("mail", {"transport": 25}, "data.transport: input should be a valid string"),
    ("mail", {"outcome": "FAILED"}, "data.outcome: input should be 'sent', 'failed', 'deferred' or 'bounced'"),
    ("request", {"method": "get"}, "data.method: input should be 'GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS' or 'OTHER'"),
    ("file_edit", {"flags": "eval_call"}, "data.flags: input should be a valid array"),
    ("file_edit", {"flags": ["eval"]},
     "data.flags.0: input should be 'php_in_uploads', 'eval_call', 'base64_blob', 'obfuscated', 'executable_bit' or 'core_file'"),
    ("cron", {"event": None}, "data.event: input should be 'started', 'finished', 'failed', 'missed' or 'heartbeat'"),
])
def test_wrong_payload_types_rejected(type_: str, changes: dict[str, Any], reason: str) -> None:
    assert reject(with_data(type_, **changes)) == reason


@pytest.mark.parametrize(("name", "value"), [("id", 12345678), ("site", None), ("ts", 1795860000120), ("type", 1)])
def test_wrong_envelope_types_rejected(name: str, value: Any) -> None:
    reason = reject({**envelope(), name: value})
    assert reason.startswith(f"{name}: "), reason


# --- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("type_", "name", "value"), [
    ("auth", "user_len", 0), ("auth", "user_len", 256),
    ("request", "status", 100), ("request", "status", 599),
    ("cron", "duration_ms", 0), ("db_event", "duration_ms", 0), ("request", "duration_ms", 0),
    ("php_error", "line", 0), ("integration", "dropped", 0), ("integration", "buffered", 0),
    ("file_edit", "size_delta", -1_000_000),
])
def test_range_boundaries_accepted(type_: str, name: str, value: int) -> None:
    assert getattr(accept(with_data(type_, **{name: value})).data, name) == value


@pytest.mark.parametrize(("type_", "name", "value", "reason"), [
    ("auth", "user_len", 257, "less than or equal to 256"),
    ("auth", "user_len", -1, "greater than or equal to 0"),
    ("request", "status", 99, "greater than or equal to 100"),
    ("request", "status", 600, "less than or equal to 599"),
    ("cron", "duration_ms", -1, "greater than or equal to 0"),
    ("db_event", "duration_ms", -1, "greater than or equal to 0"),
    ("request", "duration_ms", -1, "greater than or equal to 0"),
    ("php_error", "line", -1, "greater than or equal to 0"),
    ("integration", "dropped", -1, "greater than or equal to 0"),
    ("integration", "buffered", -1, "greater than or equal to 0"),
])
def test_out_of_range_rejected(type_: str, name: str, value: int, reason: str) -> None:
    assert reject(with_data(type_, **{name: value})) == f"data.{name}: input should be {reason}"


# --- string lengths (code points) ------------------------------------------------------------

STRING_LIMITS = [
    ("auth", "source", 64), ("mail", "transport", 32), ("mail", "error_class", 64), ("cron", "job", 128),
    ("php_error", "component", 128), ("php_error", "file", 256), ("config_change", "option", 128),
    ("db_event", "table", 64), ("request", "path", 256), ("request", "route_group", 64), ("request", "ua_family", 32),
    ("plugin", "slug", 128), ("plugin", "version_before", 32), ("plugin", "version_after", 32),
    ("file_edit", "path", 256), ("integration", "version", 32),
]


@pytest.mark.parametrize("char", ["a", "é", "😀"])
@pytest.mark.parametrize(("type_", "name", "limit"), STRING_LIMITS)
def test_string_at_its_limit_accepted(type_: str, name: str, limit: int, char: str) -> None:
    assert getattr(accept(with_data(type_, **{name: char * limit})).data, name) == char * limit


@pytest.mark.parametrize("char", ["a", "é"])
@pytest.mark.parametrize(("type_", "name", "limit"), STRING_LIMITS)
def test_string_over_its_limit_rejected(type_: str, name: str, limit: int, char: str) -> None:
    reason = reject(with_data(type_, **{name: char * (limit + 1)}))
    assert reason == f"data.{name}: string should have at most {limit} characters"


def test_source_lengths_count_code_points_not_bytes() -> None:
    # 64 two-byte characters are 128 bytes of UTF-8 but 64 code points.
    assert accept(with_data("auth", source="é" * 64)).data.source == "é" * 64  # type: ignore[attr-defined]
    assert reject(with_data("auth", source="é" * 65)) == "data.source: string should have at most 64 characters"


# --- hashes ----------------------------------------------------------------------------------

HASH_FIELDS = [("auth", "user_hash"), ("php_error", "fingerprint"), ("config_change", "before_hash"),
               ("config_change", "after_hash"), ("config_change", "actor_hash")]


@pytest.mark.parametrize("bad", [HASH.upper(), HASH[:-1], HASH + "0", "g" * 64, " " + HASH[1:], "alice@example.com"])
@pytest.mark.parametrize(("type_", "name"), HASH_FIELDS)
def test_hash_pattern(type_: str, name: str, bad: str) -> None:
    assert accept(with_data(type_, **{name: HASH})).type == type_
    assert reject(with_data(type_, **{name: bad})) == f"data.{name}: {PATTERN_MISMATCH} '^[0-9a-f]{{64}}$'"


# --- path, file, job -------------------------------------------------------------------------

PATH_FIELDS = [("request", "path"), ("file_edit", "path"), ("php_error", "file"), ("cron", "job")]


@pytest.mark.parametrize("bad", [
    "/search?q=alice", "/page#top", "/users/alice@example.com", "a\tb", "a\nb", "a\rb", "a\x00b", "a\x1fb",
    "a\x7fb", "a\x85b", "a\u00a0b", "a\u2028b", "a\u3000b",
], ids=repr)
@pytest.mark.parametrize(("type_", "name"), PATH_FIELDS)
def test_path_like_fields_reject_query_fragment_at_whitespace_and_control(type_: str, name: str, bad: str) -> None:
    reason = reject(with_data(type_, **{name: bad}))
    assert reason == f"data.{name}: must not contain ?, #, @, control characters or whitespace other than plain spaces"


@pytest.mark.parametrize(("type_", "name"), PATH_FIELDS)
def test_path_like_fields_allow_plain_spaces_and_non_ascii(type_: str, name: str) -> None:
    value = "wp-content/uploads/My Files/résumé 2026.php"
    assert getattr(accept(with_data(type_, **{name: value})).data, name) == value


def test_other_strings_may_contain_at_and_hash() -> None:
    # Only path, file and job carry the restriction.
    assert accept(with_data("php_error", component="plugin:a@b#c?")).type == "php_error"


# --- flags -----------------------------------------------------------------------------------


def test_flags_all_six_distinct_accepted_and_empty_accepted() -> None:
    every = ["php_in_uploads", "eval_call", "base64_blob", "obfuscated", "executable_bit", "core_file"]
    assert accept(with_data("file_edit", flags=every)).data.flags == every  # type: ignore[attr-defined]
    assert accept(with_data("file_edit", flags=[])).data.flags == []  # type: ignore[attr-defined]


def test_flags_must_not_repeat() -> None:
    assert reject(with_data("file_edit", flags=["eval_call", "eval_call"])) == "data.flags: value error, flags must not repeat"


def test_flags_at_most_eight() -> None:
    reason = reject(with_data("file_edit", flags=["eval_call"] * 9))
    assert reason == "data.flags: list should have at most 8 items after validation, not 9"


# --- id, site --------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a" * 8, "Z" * 64, "01JDQ3K9Y0A1B2C3D4E5F6G7H8", "123e4567-e89b-12d3-a456-426614174000", "tick_shop-1"])
def test_id_accepted(good: str) -> None:
    assert accept({**envelope(), "id": good}).id == good


@pytest.mark.parametrize("bad", ["a" * 7, "a" * 65, "", "abc.defgh", "abc defgh", "abcdéfgh", "abc/defgh"])
def test_id_rejected(bad: str) -> None:
    assert reject({**envelope(), "id": bad}) == f"id: {PATTERN_MISMATCH} '^[A-Za-z0-9_-]{{8,64}}$'"


@pytest.mark.parametrize("good", ["a", "0", "shop-eu", "shop.eu_1", "a" * 63])
def test_site_accepted(good: str) -> None:
    assert accept({**envelope(), "site": good}).site == good


@pytest.mark.parametrize("bad", ["", "Shop", "-shop", ".shop", "_shop", "shop/eu", "shop eu", "a" * 64])
def test_site_rejected(bad: str) -> None:
    assert reject({**envelope(), "site": bad}) == f"site: {PATTERN_MISMATCH} '^[a-z0-9][a-z0-9._-]{{0,62}}$'"


# --- timestamps ------------------------------------------------------------------------------


def epoch_ms(year: int, month: int, day: int, hour: int, minute: int, second: int, ms: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second)) * 1000 + ms


@pytest.mark.parametrize(("ts", "expected"), [
    ("2026-11-28T10:00:00Z", epoch_ms(2026, 11, 28, 10, 0, 0)),
    ("2026-11-28T10:00:00.1Z", epoch_ms(2026, 11, 28, 10, 0, 0, 100)),
    ("2026-11-28T10:00:00.12Z", epoch_ms(2026, 11, 28, 10, 0, 0, 120)),
    ("2026-11-28T10:00:00.123Z", epoch_ms(2026, 11, 28, 10, 0, 0, 123)),
    ("2026-11-28T10:00:00.1239Z", epoch_ms(2026, 11, 28, 10, 0, 0, 123)),
    ("2026-11-28T10:00:00.999999999Z", epoch_ms(2026, 11, 28, 10, 0, 0, 999)),
    ("2026-11-28T23:59:59.000Z", epoch_ms(2026, 11, 28, 23, 59, 59)),
    ("2028-02-29T00:00:00Z", epoch_ms(2028, 2, 29, 0, 0, 0)),
    ("2026-12-31T00:00:00Z", epoch_ms(2026, 12, 31, 0, 0, 0)),
    ("1970-01-01T00:00:00.000Z", 0),
])
def test_ts_accepted_and_truncated_to_milliseconds(ts: str, expected: int) -> None:
    assert accept({**envelope(), "ts": ts}).ts == expected


@pytest.mark.parametrize(("bad", "reason"), [
    ("2026-11-28t10:00:00Z", "lower-case t/z or a space as separator: use upper-case T and Z"),
    ("2026-11-28T10:00:00z", "lower-case t/z or a space as separator: use upper-case T and Z"),
    ("2026-11-28 10:00:00Z", "lower-case t/z or a space as separator: use upper-case T and Z"),
    ("2026-11-28T10:00:00+00:00", "offset +00:00 not allowed, use Z (UTC)"),
    ("2026-11-28T10:00:00.000+01:00", "offset +01:00 not allowed, use Z (UTC)"),
    ("2026-11-28T10:00:00", "no time zone: end with Z (UTC)"),
    ("2026-11-28T10:00:00ZZ", "'ZZ' after the time: only Z (UTC) is allowed"),
    ("2026-11-28T10:00:60Z", "leap second (:60) not allowed: seconds are 00–59"),
    ("2026-11-28T10:60:00Z", "10:60:00 is not a time of day"),
    ("2026-11-28T24:00:00Z", "24:00:00 is not a time of day"),
    ("2026-11-28T10:00:00.Z", "fraction must be '.' and at least one digit"),
    ("2026-11-28T10:00:00,123Z", "fraction must be '.' and at least one digit"),
    ("2026-13-01T00:00:00Z", "2026-13-01 is not a date"),
    ("2026-11-32T00:00:00Z", "2026-11-32 is not a date"),
    ("2026-11-28", "'2026-11-28' is not a timestamp like 2026-11-28T10:00:00.000Z"),
    ("2026-11-28T10:00Z", "'2026-11-28T10:00Z' is not a timestamp like 2026-11-28T10:00:00.000Z"),
    ("26-11-28T10:00:00Z", "'26-11-28T10:00:00Z' is not a timestamp like 2026-11-28T10:00:00.000Z"),
    (" 2026-11-28T10:00:00Z", "' 2026-11-28T10:00:00Z' is not a timestamp like 2026-11-28T10:00:00.000Z"),
    ("1969-12-31T23:59:59.999Z", "year 1969 out of range 1970–2199"),
    ("2200-01-01T00:00:00.000Z", "year 2200 out of range 1970–2199"),
    ("9999-12-31T23:59:59Z", "year 9999 out of range 1970–2199"),
    ("0000-01-01T00:00:00Z", "year 0000 out of range 1970–2199"),
])
def test_ts_rejected_with_the_problem_in_words(bad: str, reason: str) -> None:
    assert reject({**envelope(), "ts": bad}) == f"ts: {reason}"


@pytest.mark.parametrize(("ts", "expected"), [
    ("1970-01-01T00:00:00.000Z", 0),
    ("2199-12-31T23:59:59.999Z", epoch_ms(2199, 12, 31, 23, 59, 59, 999)),
    ("2199-12-31T23:59:59.999999Z", epoch_ms(2199, 12, 31, 23, 59, 59, 999)),  # truncated into the range
])
def test_ts_range_boundaries_accepted(ts: str, expected: int) -> None:
    assert accept({**envelope(), "ts": ts}).ts == expected


@pytest.mark.parametrize("bad", ["2026-02-30T10:00:00Z", "2026-02-29T10:00:00Z", "2026-04-31T10:00:00Z", "2100-02-29T00:00:00Z"])
def test_ts_that_is_no_calendar_date_rejected(bad: str) -> None:
    assert reject({**envelope(), "ts": bad}) == f"ts: {bad[:10]} is not a calendar date"


# --- the 2048-byte limit ---------------------------------------------------------------------


def sized_signal(size: int) -> dict[str, Any]:
    """A valid-shaped php_error whose compact UTF-8 encoding is exactly ``size`` bytes.

    No in-bounds signal reaches 2 KiB with plain characters, so ``component``
    carries control characters (6 bytes each once escaped as \\u0001) and
    ``file`` multi-byte characters, topped up with ASCII.
    """
    signal = make_signal("s" * 63, "php_error", TS, "i" * 64, seq=1, level="fatal", component="\x01" * 128,
                         file="", line=1, fingerprint=FINGERPRINT)
    missing = size - len(signal_line(signal).encode("utf-8"))
    wide, narrow = divmod(missing, 4)
    assert 0 <= wide + narrow <= 256, f"cannot build a {size}-byte signal"
    signal["data"]["file"] = "😀" * wide + "a" * narrow
    assert len(signal_line(signal).encode("utf-8")) == size
    return signal


def test_signal_of_exactly_2048_bytes_accepted() -> None:
    assert MAX_SIGNAL_BYTES == 2048
    record = accept(sized_signal(2048))
    assert len(record.raw) == 2048


def test_signal_of_2049_bytes_rejected() -> None:
    assert reject(sized_signal(2049)) == "signal is 2049 bytes in compact JSON, over the 2048-byte limit"


def test_limit_counts_utf8_bytes_not_characters() -> None:
    signal = sized_signal(2049)
    line = signal_line(signal)
    assert len(line) < 2048  # fewer code points than bytes
    assert reject(line.encode("utf-8")).startswith("signal is 2049 bytes")


def test_line_over_the_limit_only_because_of_whitespace_accepted() -> None:
    raw = json.dumps(sized_signal(2048), separators=(", ", ": "), ensure_ascii=False).encode("utf-8")
    raw = b"  " + raw + b"  "
    assert len(raw) > 2048
    record = accept(raw)
    assert record.raw == raw.strip()  # the envelope as received; only surrounding whitespace goes


def test_line_over_the_limit_only_because_of_unicode_escapes_accepted() -> None:
    raw = json.dumps(sized_signal(2048), separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert len(raw) > 2048
    assert accept(raw).raw == raw


def test_escaped_line_whose_compact_form_is_over_the_limit_rejected() -> None:
    raw = json.dumps(sized_signal(2049), indent=2, ensure_ascii=True).encode("ascii")
    assert reject(raw) == "signal is 2049 bytes in compact JSON, over the 2048-byte limit"


def test_oversized_garbage_is_reported_as_not_json() -> None:
    assert reject(b"x" * 5000).startswith("not valid JSON")


# --- raw kept exactly ------------------------------------------------------------------------


def test_raw_is_kept_byte_for_byte() -> None:
    raw = (b'{ "site" : "shop-eu", "v":1, "id":"01JDQ3K9Y0A1B2C3D4E5F6G7H8", "type":"mail",'
           b' "ts":"2026-11-28T10:00:00.1239Z", "data":{"transport":"sm\\u0074p", "outcome":"failed"} }')
    record = accept(raw)
    assert record.raw == raw.strip()  # the envelope as received; only surrounding whitespace goes
    assert record.ts == TS_MS + 3  # .1239 truncated to .123
    envelope_out = evidence_envelope(record.raw)
    assert envelope_out["ts"] == "2026-11-28T10:00:00.1239Z"  # the original ts string, not a reformatted one
    assert list(envelope_out) == ["site", "v", "id", "type", "ts", "data"]


def test_record_pickles_through_its_raw_bytes() -> None:
    raw = signal_line(envelope("auth")).encode()
    record = accept(raw)
    copy = pickle.loads(pickle.dumps(record))
    assert (copy.raw, copy.ts, copy.site, copy.type, copy.id, copy.line) == (raw, record.ts, SITE, "auth", SIGNAL_ID, 7)
    assert copy.data == record.data


# --- integers are bounded: ±(2^53 − 1) everywhere -----------------------------------------------

BOUNDED_INTEGERS = [  # (type, field, smallest, largest) of every integer field whose range the contract leaves open
    ("cron", "duration_ms", 0, MAX_SAFE_INTEGER), ("db_event", "duration_ms", 0, MAX_SAFE_INTEGER),
    ("request", "duration_ms", 0, MAX_SAFE_INTEGER), ("php_error", "line", 0, MAX_SAFE_INTEGER),
    ("integration", "dropped", 0, MAX_SAFE_INTEGER), ("integration", "buffered", 0, MAX_SAFE_INTEGER),
    ("file_edit", "size_delta", -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
]


def test_the_safe_integer_bound_is_two_to_the_53_minus_one() -> None:
    assert MAX_SAFE_INTEGER == 9007199254740991


@pytest.mark.parametrize(("type_", "name", "lowest", "highest"), BOUNDED_INTEGERS)
def test_payload_integers_accepted_up_to_the_safe_bound_and_rejected_past_it(type_: str, name: str, lowest: int, highest: int) -> None:
    assert getattr(accept(with_data(type_, **{name: highest})).data, name) == highest
    assert getattr(accept(with_data(type_, **{name: lowest})).data, name) == lowest
    assert reject(with_data(type_, **{name: highest + 1})) == f"data.{name}: input should be less than or equal to {MAX_SAFE_INTEGER}"
    below = "greater than or equal to " + str(lowest)
    assert reject(with_data(type_, **{name: lowest - 1})) == f"data.{name}: input should be {below}"


def test_seq_accepted_up_to_the_safe_bound_and_rejected_past_it() -> None:
    assert accept({**envelope(), "seq": MAX_SAFE_INTEGER}).seq == MAX_SAFE_INTEGER
    for beyond in (MAX_SAFE_INTEGER + 1, 2**64, 2**64 + 1):
        assert reject({**envelope(), "seq": beyond}) == f"seq: input should be less than or equal to {MAX_SAFE_INTEGER}"


@pytest.mark.parametrize(("digits", "reason"), [
    (20, f"data.duration_ms: input should be less than or equal to {MAX_SAFE_INTEGER}"),
    (401, f"data.duration_ms: input should be less than or equal to {MAX_SAFE_INTEGER}"),
    (2000, "signal is 2236 bytes in compact JSON, over the 2048-byte limit"),
    (10_000, "not valid JSON: number out of range at line 1 column "),  # pydantic's own cut-off, before ours
    (100_000, overlong(MAX_SIGNAL_LINE_BYTES)),  # rejected for its length, before any parse
])
def test_integers_of_many_digits_are_one_reason(digits: int, reason: str) -> None:
    line = signal_line(with_data("request", duration_ms=0)).replace('"duration_ms":0', '"duration_ms":' + "9" * digits)
    assert reject(line.encode()).startswith(reason)
    negative = signal_line(with_data("file_edit")).replace('"size_delta":-512', '"size_delta":-' + "9" * min(digits, 401))
    assert reject(negative.encode()) == f"data.size_delta: input should be greater than or equal to {-MAX_SAFE_INTEGER}"


def integer_schemas(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``{"type": "integer", ...}`` in a JSON Schema, with where it is."""
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            yield path, schema
        for key, value in schema.items():
            yield from integer_schemas(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from integer_schemas(value, f"{path}/{index}")


def test_no_integer_field_is_left_unbounded() -> None:
    # A field typed plain `int` would let a 400-digit number through to the store and the metric sums.
    found = list(integer_schemas(signals_json_schema()))
    assert len(found) >= 12  # v and seq of every type, and the payload integers
    for path, schema in found:
        assert -MAX_SAFE_INTEGER <= schema.get("minimum", -math.inf) <= schema.get("maximum", math.inf) <= MAX_SAFE_INTEGER, path


# --- repeated keys -------------------------------------------------------------------------------


def compact(signal: dict[str, Any]) -> str:
    return json.dumps(signal, separators=(",", ":"), ensure_ascii=False)


def repeated(text: str, key: str, value: Any, inside_data: bool = False) -> bytes:
    """``text`` with ``"key": value`` added once more at the start of the envelope, or of ``data``."""
    member = f'"{key}":{json.dumps(value)},'
    if inside_data:
        return text.replace('"data":{', '"data":{' + member, 1).encode()
    return ("{" + member + text[1:]).encode()


@pytest.mark.parametrize(("key", "value"), [("v", 1), ("id", SIGNAL_ID), ("site", "other"), ("type", "mail"),
                                            ("ts", "2026-11-28T09:00:00.000Z"), ("seq", 3), ("data", {"x": 1})])
def test_a_repeated_envelope_key_is_rejected_naming_it(key: str, value: Any) -> None:
    text = compact({**envelope("php_error"), "seq": 4})
    assert reject(repeated(text, key, value)) == f"{key}: key given more than once"


@pytest.mark.parametrize("type_", SIGNAL_TYPES)
def test_a_repeated_data_key_is_rejected_naming_it(type_: str) -> None:
    text = compact(envelope(type_))
    name, value = next(iter(FULL[type_].items()))
    assert reject(repeated(text, name, value, inside_data=True)) == f"data.{name}: key given more than once"


@pytest.mark.parametrize("layout", [
    {"separators": (", ", " : ")},  # whitespace before the colons
    {"indent": 2},
    {"separators": (",", ":"), "ensure_ascii": True},  # escapes: \u00e9 in a string
])
def test_repeated_keys_are_found_in_any_layout_and_escapes(layout: dict[str, Any]) -> None:
    signal = envelope("php_error", component="plugin:caf\u00e9:x", file="a:b/c.php")  # colons inside strings
    text = json.dumps(signal, **layout)
    assert accept(text.encode()).type == "php_error"
    twice = text.replace('"level"', '"line": 1, "level"', 1)
    assert reject(twice.encode()) == "data.line: key given more than once"
    twice = text.replace('"site"', '"v": 1, "site"', 1)
    assert reject(twice.encode()) == "v: key given more than once"


def test_an_escaped_colon_cannot_hide_a_repeated_key() -> None:
    # A \u003a in ts stands for a ':' the raw bytes do not show: the count alone would come out even.
    text = compact(envelope()).replace("10:00:00", "10\\u003a00:00")
    assert accept(text.encode()).ts == TS_MS
    assert reject(repeated(text, "v", 1)) == "v: key given more than once"


def test_a_key_spelt_with_an_escape_is_the_same_key() -> None:
    text = compact(envelope())
    assert reject(("{" + '"\\u0076":1,' + text[1:]).encode()) == "v: key given more than once"


def test_strings_full_of_colons_and_quotes_are_not_taken_for_keys() -> None:
    signal = envelope("mail", transport='a":"b', error_class=':":":"')
    assert accept(compact(signal).encode()).data.error_class == ':":":"'  # type: ignore[attr-defined]


# --- nesting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 1000, 3000, 100_000])
@pytest.mark.parametrize("opener", ["[", "{\"a\":"])
def test_deep_nesting_is_one_reason(depth: int, opener: str) -> None:
    raw = (opener * depth).encode()
    # Up to the limit of a line the parser gives up on the depth; from it, the line is rejected for its length unparsed.
    assert reject(raw).startswith("not valid JSON: " if len(raw) < MAX_SIGNAL_LINE_BYTES else overlong(MAX_SIGNAL_LINE_BYTES)), raw[:20]
    assert salvage_site_and_ts(raw) == ("", None)
