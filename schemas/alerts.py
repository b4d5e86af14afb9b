"""The notification record (alerts.md): what the flow emits and delivery consumes.

:class:`NotificationRecord` accepts what the flow can produce and nothing
else: every field within the bound the contract gives it (rules.md for the
rule's id, title, description, subsystem, group and evidence count;
signals.md for the site, the evidence envelopes and integer ranges). Delivery
validates its input with it, so a record no flow would emit — a
40,000-character rule id, say — is reported invalid instead of becoming a
message over a channel's size limit. Where the contract names no bound, the
bound is ours and written next to the field.

The link is ``<public base URL>/alerts/<alert_id>``; :func:`link_base` turns
a ``--link-base`` option into the base a valid URI is built from.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union
from urllib.parse import quote, urlsplit

import idna
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from schemas.problems import first_problem
from schemas.records import compact_json
from schemas.rules import CHANNEL_NAME_PATTERN, RULE_ID_PATTERN
from schemas.signals import ENVELOPES, MAX_SIGNAL_BYTES, PAYLOADS, SIGNAL_TYPES, SiteId
from schemas.timestamps import TimestampError, parse_ts

MAX_INT = 2**53 - 1
"""signals.md: every integer lies within ±(2^53 − 1)."""
MAX_SEQ = 2**32 - 1
"""Ours: the store's ``seq`` column is a UInt32 (an episode never has four billion notifications)."""
MAX_SUMMARY = 2000
"""Ours: the longest summary the flow writes is about 1,100 characters (a 120-character title, every signal type,
three 256-character group values); a summary is one line for people."""
MAX_LINK_BASE = 2000
"""Ours: the public base URL, encoded; with ``/alerts/<alert_id>`` a link stays well within the 3,000 characters
Slack and Teams take for a button's URL."""
MAX_CHANNELS = 64
"""Ours: channel names per record (a rule names a few)."""
GROUP_FIELDS = frozenset(name for model in PAYLOADS.values() for name in model.model_fields)
"""rules.md: ``group_by`` names payload fields, so a group's keys are payload field names."""


class RuleSummary(BaseModel):
    """What the rule was, in human terms (bounds of rules.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, Field(pattern=RULE_ID_PATTERN)]
    title: Annotated[str, Field(min_length=1, max_length=120)]
    kind: Literal["match", "threshold", "ratio", "distinct", "absence", "shift"]
    description: Annotated[str, Field(max_length=1000)] | None


def _calendar_time(text: str) -> str:
    try:
        parse_ts(text)  # the calendar check (Feb 30 is no instant); the shape is the pattern's
    except TimestampError as error:
        raise PydanticCustomError("calendar_date", str(error)) from None
    return text


RECORD_TIME_PATTERN = (r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
                       r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,3})?Z$")
RecordTime = Annotated[str, Field(pattern=RECORD_TIME_PATTERN), AfterValidator(_calendar_time)]
"""An instant as the flow writes it: RFC 3339 UTC, at most millisecond precision (signals.md)."""
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]


def _group_keys(group: Any) -> Any:
    """Keys checked before anything else: an error names its key, and only a known (short) key is ever named."""
    if isinstance(group, dict) and not set(group) <= GROUP_FIELDS:
        raise PydanticCustomError("group_keys", "a key that is not a payload field (rules.md: group_by names payload fields)")
    return group


GroupValue = Union[  # noqa: UP007 - pydantic's smart union over the values a payload field can hold
    Annotated[StrictStr, Field(max_length=256)], Annotated[StrictInt, Field(ge=-MAX_INT, le=MAX_INT)], StrictBool, None,
    Annotated[list[Annotated[StrictStr, Field(max_length=256)]], Field(max_length=8)],
]


def _signal_size(envelope: Any) -> Any:
    size = len(compact_json(envelope).encode("utf-8"))
    if size > MAX_SIGNAL_BYTES:
        raise PydanticCustomError("signal_size", "a signal of {size} bytes in compact JSON, over the {limit}-byte limit",
                                  {"size": size, "limit": MAX_SIGNAL_BYTES})
    return envelope


_SITE_SIGNAL = Annotated[  # type: ignore[valid-type]
    Union[tuple(ENVELOPES[name] for name in SIGNAL_TYPES)],  # noqa: UP007 - every site signal, no tick
    Field(discriminator="type"),
]


def _as_received(envelope: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    handler(envelope)  # validated as a site signal (errors located as the signal model locates them) ...
    return envelope  # ... and kept as received: its keys in their order, as the record is forwarded and stored


EvidenceSignal = Annotated[
    dict[str, Any],
    GetPydanticSchema(lambda _, handler: core_schema.no_info_wrap_validator_function(
        _as_received, handler.generate_schema(_SITE_SIGNAL),
        serialization=core_schema.plain_serializer_function_ser_schema(lambda envelope: envelope))),
    BeforeValidator(_signal_size),
]
"""One evidence envelope: a valid signal of signals.md (at most 2,048 bytes), never a tick, kept as the JSON object
it was received as (the envelope models would reorder its keys, and a channel shows it as it was)."""

_COUNT, _NUMBER, _TIME = "a non-negative integer", "a non-negative number", "a timestamp"
_VALUE_FIELDS = {"count": _COUNT, "total": _COUNT, "distinct": _COUNT, "baseline_count": _COUNT, "ratio": _NUMBER,
                 "factor": _NUMBER, "silent_for_s": _NUMBER, "last_seen_at": _TIME, "expected_at": _TIME}
_VALUE_KEYS: dict[str, tuple[frozenset[str], ...]] = {
    "match": (frozenset({"count"}),),
    "threshold": (frozenset({"count"}),),
    "ratio": (frozenset({"count", "total", "ratio"}),),
    "distinct": (frozenset({"distinct", "count"}),),
    "absence": (frozenset({"last_seen_at", "silent_for_s"}), frozenset({"last_seen_at", "expected_at", "silent_for_s"})),
    "shift": (frozenset({"count", "baseline_count", "factor"}),),
}
"""rules.md "Evidence and value": the keys of ``value`` per rule kind."""
_RECORD_TIME = re.compile(RECORD_TIME_PATTERN)


def _value_problem(key: str, value: Any) -> str | None:
    kind = _VALUE_FIELDS[key]
    if kind == _TIME:
        good = isinstance(value, str) and _RECORD_TIME.match(value) is not None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        good = False
    elif kind == _COUNT:
        good = isinstance(value, int) and 0 <= value <= MAX_INT
    else:
        good = math.isfinite(value) and 0 <= value <= MAX_INT
    return None if good else f"{key}: should be {kind}"


class NotificationRecord(BaseModel):
    """One notification of one alert episode; (``alert_id``, ``seq``) identifies it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]
    alert_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    seq: Annotated[StrictInt, Field(ge=1, le=MAX_SEQ)]
    status: Literal["firing", "resolved"]
    rule: RuleSummary
    severity: Literal["critical", "high", "medium", "low", "info"]
    site: SiteId
    subsystem: Annotated[str, Field(min_length=1, max_length=32)]
    group: Annotated[dict[str, GroupValue], Field(max_length=3), BeforeValidator(_group_keys)]
    summary: Annotated[str, Field(max_length=MAX_SUMMARY)]
    started_at: RecordTime
    evaluated_at: RecordTime
    ended_at: RecordTime | None
    value: Annotated[dict[str, Any], Field(max_length=3)]
    suppressed_count: Count
    evidence: Annotated[list[EvidenceSignal], Field(max_length=100)]
    evidence_total: Count
    link: Annotated[str, Field(max_length=MAX_LINK_BASE + len("/alerts/") + 32)]
    deliver: Annotated[list[Annotated[str, Field(pattern=CHANNEL_NAME_PATTERN)]], Field(max_length=MAX_CHANNELS)]

    @field_validator("ended_at")
    @classmethod
    def _ended_when_resolved(cls, ended_at: str | None, info: ValidationInfo) -> str | None:
        status = info.data.get("status")
        if status is not None and (ended_at is None) != (status == "firing"):
            raise PydanticCustomError("ended_at", "a resolved notification has an ended_at, a firing one has null")
        return ended_at

    @field_validator("value")
    @classmethod
    def _value_of_the_kind(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        rule = info.data.get("rule")
        if rule is None:
            if not set(value) <= set(_VALUE_FIELDS):
                raise PydanticCustomError("value_keys", "a key that no rule kind's value has")
        elif frozenset(value) not in _VALUE_KEYS[rule.kind]:
            wanted = " or ".join(", ".join(sorted(keys)) for keys in _VALUE_KEYS[rule.kind])
            raise PydanticCustomError("value_keys", "a {kind} rule's value has the keys {wanted}",
                                      {"kind": rule.kind, "wanted": wanted})
        for key, item in value.items():
            problem = _value_problem(key, item)
            if problem is not None:
                raise PydanticCustomError("value_type", problem)
        return value

    @field_validator("evidence_total")
    @classmethod
    def _total_covers_evidence(cls, total: int, info: ValidationInfo) -> int:
        evidence = info.data.get("evidence")
        if evidence is not None and total < len(evidence):
            raise PydanticCustomError("evidence_total", "smaller than the number of evidence signals")
        return total

    @field_validator("link")
    @classmethod
    def _link_of_the_alert(cls, link: str, info: ValidationInfo) -> str:
        alert_id = info.data.get("alert_id")
        if alert_id is None:
            return link
        suffix = f"/alerts/{alert_id}"
        base = link.removesuffix(suffix)
        if base == link:
            raise PydanticCustomError("link", "should be <public base URL>/alerts/<alert_id>")
        try:
            valid = link_base(base) == base
        except ValueError:
            valid = False
        if not valid:
            raise PydanticCustomError("link", "is not a valid http(s) URI (ASCII host, percent-encoded path)")
        return link


def record_line(record: NotificationRecord) -> str:
    """The record as the flow writes it: one compact JSON line (no newline), keys in the order of alerts.md."""
    return compact_json(record.model_dump())


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """A validated notification record and the bytes it was received as (compact JSON, as the flow wrote it).

    Delivery parses each line once into this: the channels that show the
    record read its typed fields, the webhook forwards ``raw`` as it came.
    """

    record: NotificationRecord
    raw: bytes

    @classmethod
    def parse(cls, line: bytes) -> ReceivedRecord:
        """Validate one JSON line (surrounding whitespace dropped); raises :class:`pydantic.ValidationError`."""
        raw = line.strip()
        return cls(NotificationRecord.model_validate_json(raw), raw)


def parse_notification(text: str) -> ReceivedRecord | str:
    """The validated record with the bytes it came as (parsed once), or why it is not a valid notification record (one line)."""
    try:
        return ReceivedRecord.parse(text.encode("utf-8"))
    except ValidationError as error:
        return first_problem(error)


# -- the link ----------------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PATH_KEPT = re.compile(r"%[0-9A-Fa-f]{2}|[A-Za-z0-9\-._~!$&'()*+,;=:@/]+")
"""RFC 3986 path characters (unreserved, sub-delims, ``:``, ``@``, ``/``) and percent-escapes: kept as they are."""
_ASCII_HOST = re.compile(r"^[a-z0-9\-._~]+$")


def link_base(text: str) -> str:
    """The public base URL as a valid URI: the host IDNA-encoded, the path percent-encoded, no trailing ``/``.

    Raises :class:`ValueError` with the reason when ``text`` cannot be one:
    not http(s), no host, a control character, a user name or password, a
    query or fragment (``/alerts/<alert_id>`` is appended), a bad port, or
    longer than :data:`MAX_LINK_BASE` once encoded. Spaces and non-ASCII
    characters of the path are percent-encoded (UTF-8), a non-ASCII host is
    IDNA-encoded (UTS #46, as browsers do): ``https://müller.example/konsole``
    becomes ``https://xn--mller-kva.example/konsole``. Encoding an encoded
    base changes nothing.
    """
    if _CONTROL.search(text):
        raise ValueError("contains a control character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8") from None
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not text.lower().startswith(f"{scheme}://"):
        raise ValueError("is not an http(s) URL like https://logystera.example")
    if "@" in parts.netloc:
        raise ValueError("must not carry a user name or password")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError("must not have a query or a fragment (the link appends /alerts/<alert_id> to it)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    host = _host(parts.hostname or "", parts.netloc.startswith("["))
    path = _encoded_path(parts.path).rstrip("/")
    encoded = f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
    if len(encoded) > MAX_LINK_BASE:
        raise ValueError(f"is {len(encoded)} characters encoded, over the limit of {MAX_LINK_BASE}")
    return encoded


def _encoded_path(path: str) -> str:
    """``path`` with every character RFC 3986 does not allow there percent-encoded (UTF-8); escapes kept."""
    pieces, position = [], 0
    while position < len(path):
        match = _PATH_KEPT.match(path, position)
        if match:
            pieces.append(match.group())
            position = match.end()
        else:
            pieces.append(quote(path[position], safe=""))
            position += 1
    return "".join(pieces)


def _host(host: str, bracketed: bool) -> str:
    if not host:
        raise ValueError("has no host")
    if bracketed:
        try:
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError("has an invalid IPv6 address") from None
    if host.isascii():
        if not _ASCII_HOST.match(host):
            raise ValueError(f"has an invalid host {host!r:.80}")
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"has a host that is not a valid internationalised domain name ({error})") from None
