"""Rule, metric and channel definitions (rules.md, alerts.md "Channels").

The models check each document's own shape; :mod:`schemas.rule_loader` adds
the checks that need context (payload fields, channel names, duplicate ids)
and turns every problem into one ``FILE: rule <id>: <field>: <message>`` line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

from schemas.durations import DURATION_PATTERN, check_window, parse_duration
from schemas.excerpt import excerpt
from schemas.problems import FieldProblems
from schemas.schedule import check_schedule, load_zone
from schemas.signals import SIGNAL_TYPES

RULE_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

SignalType = Literal[SIGNAL_TYPES]  # type: ignore[valid-type]
Severity = Literal["critical", "high", "medium", "low", "info"]
Kind = Literal["match", "threshold", "ratio", "distinct", "absence", "shift"]
Conditions = dict[str, Any]
Scalar = str | int | float | bool
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
CHANNEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
PositiveInt = Annotated[int, Field(ge=1)]
_DURATION_SCHEMA = WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN})
Duration = Annotated[int, BeforeValidator(parse_duration), _DURATION_SCHEMA]
"""A duration ≥ 0, in milliseconds once loaded."""
Window = Annotated[int, BeforeValidator(lambda v: check_window(parse_duration(v))), _DURATION_SCHEMA]
"""A duration in (0, 7d], in milliseconds once loaded."""


def _check_signal(value: Any) -> Any:
    """One clear message for a bad ``signal`` (the str | list union would report one per branch)."""
    choices = ", ".join(SIGNAL_TYPES)
    if isinstance(value, list) and not value:
        raise ValueError(f"must name at least one signal type ({choices})")
    for item in value if isinstance(value, list) else [value]:
        if item == "tick":
            raise ValueError(f"tick is not allowed (ticks only advance the clock); use one of {choices}")
        if not isinstance(item, str) or item not in SIGNAL_TYPES:
            raise ValueError(f"{excerpt(item)} is not a signal type; use one of {choices}")
    return value


SignalSelector = Annotated[SignalType | Annotated[list[SignalType], Field(min_length=1)], BeforeValidator(_check_signal)]
"""A signal type or a non-empty list of them (never ``tick``)."""


class ThresholdParams(BaseModel):
    """``n ≥ count`` matching signals in the window."""

    model_config = RULE_CONFIG
    count: PositiveInt
    window: Window


class RatioParams(BaseModel):
    """Share of matching signals among those that satisfy ``of``."""

    model_config = RULE_CONFIG
    of: Conditions | None = None
    at_least: Annotated[float, Field(gt=0, le=1)]
    min_total: PositiveInt
    window: Window


class DistinctParams(BaseModel):
    """Distinct non-null values of ``field`` among matching signals in the window."""

    model_config = RULE_CONFIG
    field: str
    count: PositiveInt
    window: Window


def _check_zone(value: str) -> str:
    load_zone(value)
    return value


class AbsenceParams(BaseModel):
    """Silence for ``after`` since the last matching signal, or past the next run of ``schedule`` plus ``grace``."""

    model_config = RULE_CONFIG
    after: Window | None = None
    schedule: Annotated[str, AfterValidator(check_schedule)] | None = None
    timezone: Annotated[str, AfterValidator(_check_zone)] | None = None
    grace: Window | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> AbsenceParams:
        """Exactly one of ``after`` and ``schedule``; ``grace`` (required) and ``timezone`` only with ``schedule``."""
        problems: list[tuple[str, str]] = []
        if self.after is None and self.schedule is None:
            problems.append(("after", "required: give after (a fixed silence) or schedule (with grace)"))
        elif self.after is not None and self.schedule is not None:
            problems.append(("schedule", "not allowed with after: give exactly one of after and schedule"))
        elif self.schedule is not None and self.grace is None:
            problems.append(("grace", "required with schedule"))
        if self.after is not None and self.schedule is None:
            problems.extend((name, "only with schedule") for name in ("timezone", "grace") if getattr(self, name) is not None)
        if problems:
            raise FieldProblems(problems)
        return self

    @model_serializer(mode="wrap")
    def _without_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the fields the rule gives: a fixed-silence rule dumps as ``{"after": …}``, as before schedules.

        The dump is what a snapshot's rule fingerprint hashes (operators.snapshot), so
        the absence rules of a snapshot taken before schedules existed keep their state.
        """
        return {name: value for name, value in handler(self).items() if value is not None}

    @property
    def zone_name(self) -> str:
        """The schedule's time zone (``UTC`` unless given)."""
        return self.timezone or "UTC"


class ShiftParams(BaseModel):
    """The current window against the baseline just before it."""

    model_config = RULE_CONFIG
    window: Window
    baseline: Window
    factor: Annotated[float, Field(gt=0)]
    min_count: PositiveInt


KIND_PARAMS: dict[str, type[BaseModel] | None] = {
    "match": None,
    "threshold": ThresholdParams,
    "ratio": RatioParams,
    "distinct": DistinctParams,
    "absence": AbsenceParams,
    "shift": ShiftParams,
}


class Rule(BaseModel):
    """One detection: conditions, a kind with its parameters, suppression, delivery."""

    model_config = RULE_CONFIG
    id: Annotated[str, Field(pattern=RULE_ID_PATTERN)]
    title: Annotated[str, Field(min_length=1, max_length=120)]
    description: Annotated[str, Field(max_length=1000)] | None = None
    severity: Severity
    subsystem: Annotated[str, Field(min_length=1, max_length=32)]
    signal: SignalSelector
    where: Conditions | None = None
    group_by: Annotated[list[str], Field(max_length=3)] = []
    kind: Kind
    threshold: ThresholdParams | None = None
    ratio: RatioParams | None = None
    distinct: DistinctParams | None = None
    absence: AbsenceParams | None = None
    shift: ShiftParams | None = None
    for_: Duration = Field(default=0, alias="for")
    resolve_after: Duration = 0
    suppress: Duration = 3_600_000
    bundle: Duration | None = None
    evidence: Annotated[int, Field(ge=1, le=100)] = 10
    max_groups: Annotated[int, Field(ge=1, le=100_000)] = 1000
    deliver: list[str] = []
    mute: list[str] = []
    enabled: bool = True

    @property
    def signal_types(self) -> tuple[str, ...]:
        """The rule's signal types as a tuple, whichever way they were written."""
        return (self.signal,) if isinstance(self.signal, str) else tuple(self.signal)

    @property
    def params(self) -> Any:
        """The parameters of the rule's kind (None for ``match``)."""
        return getattr(self, self.kind) if self.kind != "match" else None

    def kind_problems(self) -> list[tuple[str, str]]:
        """Exactly the kind's own parameter block, and a non-zero ``bundle`` only on match rules."""
        present = {kind for kind in KIND_PARAMS if getattr(self, kind, None) is not None}
        return kind_block_problems(self.kind, present, bool(self.bundle))


def kind_block_problems(kind: str, present: set[str], has_bundle: bool) -> list[tuple[str, str]]:
    """Problems of a rule of ``kind`` whose ``present`` parameter blocks are given (also usable on raw YAML).

    ``has_bundle`` means a bundle longer than zero: rules.md's own field list shows
    ``bundle: 0s`` (the default, "no bundle") on a ratio rule, so that stays valid.
    """
    problems: list[tuple[str, str]] = []
    for name, params in KIND_PARAMS.items():
        if name == kind and params is not None and name not in present:
            problems.append((name, f"required for kind {kind}"))
        elif name != kind and name in present:
            problems.append((name, f"not allowed for kind {kind}"))
    if has_bundle and kind != "match":
        problems.append(("bundle", f"only match rules bundle (kind is {kind})"))
    return problems


class SumValue(BaseModel):
    """A metric that sums a numeric payload field."""

    model_config = RULE_CONFIG
    sum: str


class MetricDefinition(BaseModel):
    """A bounded, continuous series behind detections (rules.md "Metric definitions")."""

    model_config = RULE_CONFIG
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    signal: SignalSelector
    where: Conditions | None = None
    labels: Annotated[dict[str, Annotated[list[Scalar], Field(min_length=1, max_length=64)]], Field(max_length=4)] = {}
    value: Literal["count"] | SumValue = "count"
    resolution: Literal["10s", "1m", "5m", "1h"]

    @property
    def signal_types(self) -> tuple[str, ...]:
        """The metric's signal types as a tuple."""
        return (self.signal,) if isinstance(self.signal, str) else tuple(self.signal)

    @property
    def series_bound(self) -> int:
        """Largest number of label combinations: declared values + ``other`` + ``none`` per label."""
        bound = 1
        for values in self.labels.values():
            bound *= len(values) + 2
        return bound


MAX_METRIC_SERIES = 5000


class RateLimit(BaseModel):
    """Token bucket: at most ``max`` notifications per ``per``."""

    model_config = RULE_CONFIG
    per: Window
    max: PositiveInt


EnvName = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")]
"""The name of an environment variable that holds a secret or URL."""


class SmtpSettings(BaseModel):
    """Where an e-mail channel sends; credentials only through environment variables."""

    model_config = RULE_CONFIG
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    starttls: bool = False
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    sender: str = "logystera@localhost"




class _Channel(BaseModel):
    model_config = RULE_CONFIG
    name: Annotated[str, Field(pattern=CHANNEL_NAME_PATTERN)]
    rate_limit: RateLimit = RateLimit(per="1m", max=60)  # type: ignore[arg-type]
    send_resolved: bool = False
    mute: list[str] = []


class _UrlChannel(_Channel):
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    url_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_url(self) -> _UrlChannel:
        if (self.url is None) == (self.url_env is None):
            # "field: message" so that the loader names the field (problems.validation_problems).
            raise ValueError("url: give exactly one of url or url_env")
        return self


class WebhookChannel(_UrlChannel):
    """Signed JSON POST of the notification record (Standard Webhooks)."""

    type: Literal["webhook"]
    secret_env: EnvName | None = None


class SlackChannel(_UrlChannel):
    """Block Kit message to a Slack incoming webhook."""

    type: Literal["slack"]


class TeamsChannel(_UrlChannel):
    """Adaptive Card to a Teams Workflows webhook."""

    type: Literal["teams"]


class EmailChannel(_Channel):
    """Multipart e-mail, threaded per alert."""

    type: Literal["email"]
    to: Annotated[list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]], Field(min_length=1)]
    smtp: SmtpSettings


Channel = Annotated[WebhookChannel | SlackChannel | TeamsChannel | EmailChannel, Field(discriminator="type")]


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")


def _minute_of_day(text: Any) -> int:
    """``HH:MM`` (``24:00`` allowed, as an end) as minutes since midnight."""
    if not isinstance(text, str) or not _CLOCK.match(text):
        raise ValueError(f"{excerpt(text)} is not a time of day: use HH:MM (00:00 to 24:00)")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _range_of(names: tuple[str, ...], what: str, value: Any) -> tuple[int, int]:
    """``monday`` / ``monday:friday`` (names of ``names``) as the 1-based (first, last) it means."""
    parts = value.split(":") if isinstance(value, str) else []
    if not 1 <= len(parts) <= 2 or any(part.strip().lower() not in names for part in parts):
        raise ValueError(f"{excerpt(value)} is not a {what} or a range of them ({names[0]}:{names[-1]})")
    first, last = (names.index(part.strip().lower()) + 1 for part in (parts[0], parts[-1]))
    if first > last:
        raise ValueError(f"{excerpt(value)}: the range ends before it starts")
    return first, last


def weekday_range(value: Any) -> tuple[int, int]:
    """A weekday or a range of them, Monday = 1."""
    return _range_of(WEEKDAYS, "weekday", value)


def month_range(value: Any) -> tuple[int, int]:
    """A month or a range of them, January = 1."""
    return _range_of(MONTHS, "month", value)


def day_range(value: Any) -> tuple[int, int]:
    """A day of the month or a range (``1``, ``"1:7"``, ``"-1"`` = the last day, ``"-7:-1"`` = the last week)."""
    parts = str(value).split(":") if isinstance(value, (int, str)) and not isinstance(value, bool) else []
    try:
        days = [int(part) for part in parts]
    except ValueError:
        days = []
    if not 1 <= len(days) <= 2 or any(day == 0 or not -31 <= day <= 31 for day in days):
        raise ValueError(f"{excerpt(value)} is not a day of the month (1 to 31, -1 = the last) or a range of them")
    first, last = days[0], days[-1]
    if (first > 0) == (last > 0) and first > last:
        raise ValueError(f"{excerpt(value)}: the range ends before it starts")
    return first, last


class TimeRange(BaseModel):
    """A time of day from ``start`` (included) to ``end`` (excluded), local time; ``24:00`` ends at midnight."""

    model_config = RULE_CONFIG
    start: str
    end: str

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        problems: list[tuple[str, str]] = []
        for name in ("start", "end"):
            try:
                _minute_of_day(getattr(self, name))
            except ValueError as error:
                problems.append((name, str(error)))
        if not problems and self.start_minute >= self.end_minute:
            problems.append(("end", "must be after start (a window across midnight is two ranges: to 24:00, from 00:00)"))
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def start_minute(self) -> int:
        """Minutes since midnight at which the range starts."""
        return _minute_of_day(self.start)

    @property
    def end_minute(self) -> int:
        """Minutes since midnight at which it ends (excluded)."""
        return _minute_of_day(self.end)


def _kept_if(parse: Callable[[Any], tuple[int, int]]) -> Callable[[Any], Any]:
    """A validator that keeps the value as written once ``parse`` accepts it (the model dumps what the file says)."""

    def check(value: Any) -> Any:
        parse(value)
        return value

    return check


Weekdays = Annotated[str, AfterValidator(_kept_if(weekday_range))]
Months = Annotated[str, AfterValidator(_kept_if(month_range))]
DaysOfMonth = Annotated[int | str, AfterValidator(_kept_if(day_range))]


class MuteInterval(BaseModel):
    """When a window is on: every field given must hold (an absent field holds always), in the window's time zone."""

    model_config = RULE_CONFIG
    weekdays: Annotated[list[Weekdays], Field(min_length=1)] | None = None
    times: Annotated[list[TimeRange], Field(min_length=1)] | None = None
    days_of_month: Annotated[list[DaysOfMonth], Field(min_length=1)] | None = None
    months: Annotated[list[Months], Field(min_length=1)] | None = None

    def weekday_ranges(self) -> list[tuple[int, int]]:
        """``weekdays`` as 1-based (first, last) pairs, Monday = 1."""
        return [weekday_range(value) for value in self.weekdays or ()]

    def month_ranges(self) -> list[tuple[int, int]]:
        """``months`` as 1-based (first, last) pairs."""
        return [month_range(value) for value in self.months or ()]

    def day_ranges(self) -> list[tuple[int, int]]:
        """``days_of_month`` as (first, last) pairs; negative days count from the month's end."""
        return [day_range(value) for value in self.days_of_month or ()]


class MuteTime(BaseModel):
    """A named, recurring maintenance window (Alertmanager's time intervals): on while any of its intervals holds."""

    model_config = RULE_CONFIG
    name: Annotated[str, Field(pattern=CHANNEL_NAME_PATTERN)]
    timezone: Annotated[str, AfterValidator(_check_zone)] = "UTC"
    intervals: Annotated[list[MuteInterval], Field(min_length=1, max_length=100)]


class InhibitRule(BaseModel):
    """While a notification matching ``source`` is firing, hold those matching ``target`` with equal ``equal`` fields.

    Matchers are strings (``rule=integration-silent``, :mod:`schemas.matchers`);
    the loader checks them.
    """

    model_config = RULE_CONFIG
    name: Annotated[str, Field(pattern=CHANNEL_NAME_PATTERN)]
    source: Annotated[list[str], Field(min_length=1, max_length=20)]
    target: Annotated[list[str], Field(min_length=1, max_length=20)]
    equal: Annotated[list[str], Field(max_length=8)] = []


class RuleFileDocument(BaseModel):
    """For the JSON Schema only: the shapes a rules-directory YAML document may take."""

    model_config = RULE_CONFIG
    rules: list[Rule] | None = None
    metrics: list[MetricDefinition] | None = None
    channels: list[Channel] | None = None
    mute_times: list[MuteTime] | None = None
    inhibit: list[InhibitRule] | None = None
