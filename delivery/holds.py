"""Quiet on purpose: whether a silence, a maintenance window or an inhibition holds a notification back.

Pure: no I/O and no clock — the time is an argument (epoch milliseconds), so
the decisions are unit-tested at any instant (a DST change in Berlin, say);
the delivery service passes its wall clock, the one place that legitimately
uses it (it sends now). docs/silences.md is the user-facing description.

- A :class:`Silence` (made by ``logystera silence add``, kept in the store)
  holds every notification all its matchers match while
  ``starts_at ≤ now < ends_at``.
- A mute time (``mute_times:`` in YAML, :class:`schemas.rules.MuteTime`)
  holds the notifications of the channels and rules that name it while one
  of its intervals holds in its time zone's local time (:func:`mute_active`).
- An inhibit rule (``inhibit:``) holds a notification matching ``target``
  while a notification matching ``source``, with the same values of the
  ``equal`` fields, is firing. It is decided from the notification stream
  itself, in stream order (:class:`Inhibitor`), never from the clock, so a
  given stream is always inhibited the same way.

One reason is recorded per held notification, the first of: a silence (a
person's explicit decision, with who and why), a mute time, an inhibition.
"""

from __future__ import annotations

import calendar
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.alerts import NotificationRecord
from schemas.matchers import Matcher, all_match, notification_fields, parse_matcher
from schemas.rules import InhibitRule, MuteInterval, MuteTime
from schemas.schedule import load_zone

SILENCED, MUTED, INHIBITED = "silenced", "muted", "inhibited"
HELD_OUTCOMES = (SILENCED, MUTED, INHIBITED)
"""The outcomes of a notification not sent on purpose: each a final ``deliveries`` row naming what held it."""
MAX_INHIBITING = 100_000
"""Firing source alerts an inhibit rule remembers; past it the oldest is forgotten (its targets are sent: fail open)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a notification is not sent: the outcome, the id or name of what held it, one line for people."""

    outcome: str
    by: str
    reason: str


def fields_of(record: NotificationRecord) -> dict[str, str]:
    """The values matchers compare a notification by (:mod:`schemas.matchers`)."""
    return notification_fields(record.site, record.rule.id, record.rule.kind, record.severity, record.subsystem,
                               record.group)


def iso_ms(at_ms: int) -> str:
    """An instant as people read it in a reason or a listing: RFC 3339 UTC, to the second."""
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- silences -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Silence:
    """One version of a silence: matchers, when, who and why (``updated_*``: who wrote this version, and when)."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: int  # epoch ms, included
    ends_at: int  # epoch ms, excluded
    created_by: str
    comment: str
    created_at: int
    updated_at: int = 0
    updated_by: str = ""

    def state(self, at_ms: int) -> str:
        """``pending`` (not started), ``active`` or ``expired`` at ``at_ms``."""
        if at_ms < self.starts_at:
            return "pending"
        return "active" if at_ms < self.ends_at else "expired"

    def active(self, at_ms: int) -> bool:
        """Whether it holds notifications at ``at_ms``."""
        return self.starts_at <= at_ms < self.ends_at

    def holds(self, fields: Mapping[str, str]) -> bool:
        """Whether its matchers all match a notification with these fields."""
        return all_match(self.matchers, fields)

    def describe(self) -> str:
        """``silence ID (who: why) until END``: the reason of a ``silenced`` row."""
        return f"silence {self.id} ({self.created_by}: {self.comment}) until {iso_ms(self.ends_at)}"

    @property
    def matcher_text(self) -> str:
        """The matchers as typed: ``site=shop-eu rule=~php-.*``."""
        return " ".join(map(str, self.matchers))


# -- maintenance windows --------------------------------------------------------------------------------


def _in_ranges(value: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(first <= value <= last for first, last in ranges)


def _day_matches(local: datetime, ranges: Sequence[tuple[int, int]]) -> bool:
    """Days of the month; negative ones count from its end (-1 = the last day), as in Alertmanager."""
    days = calendar.monthrange(local.year, local.month)[1]
    for first, last in ranges:
        start = first if first > 0 else days + 1 + first
        end = last if last > 0 else days + 1 + last
        if start <= local.day <= min(end, days):
            return True
    return False


def _interval_holds(interval: MuteInterval, local: datetime) -> bool:
    if interval.weekdays is not None and not _in_ranges(local.isoweekday(), interval.weekday_ranges()):
        return False
    if interval.months is not None and not _in_ranges(local.month, interval.month_ranges()):
        return False
    if interval.days_of_month is not None and not _day_matches(local, interval.day_ranges()):
        return False
    if interval.times is not None:
        minute = local.hour * 60 + local.minute
        return any(time.start_minute <= minute < time.end_minute for time in interval.times)
    return True


def mute_active(mute: MuteTime, at_ms: int) -> bool:
    """Whether the window is on at ``at_ms``: any interval holds in its zone's local wall time.

    Local time is the one the clock on the wall shows: a window 02:00–04:00
    lasts one hour on the night clocks skip 02:00–03:00, three on the night
    they repeat 02:00–03:00 (both instants read 02:xx), two otherwise.
    """
    local = datetime.fromtimestamp(at_ms / 1000, load_zone(mute.timezone))
    return any(_interval_holds(interval, local) for interval in mute.intervals)


# -- inhibition -----------------------------------------------------------------------------------------


@dataclass
class _Inhibition:
    rule: InhibitRule
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    firing: OrderedDict[tuple[str, ...], OrderedDict[str, str]] = field(default_factory=OrderedDict)
    """equal values → firing source alert ids (→ their rule id), oldest first."""
    count: int = 0

    def key(self, fields: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(fields.get(name, "") for name in self.rule.equal)


class Inhibitor:
    """The inhibit rules applied to a notification stream, in its order (call :meth:`observe` for every record once).

    A source's firing notification makes it inhibit from that point of the
    stream on; its resolved notification stops it. A notification never
    inhibits itself (the same ``alert_id``), also when it matches both sides.
    """

    def __init__(self, rules: Iterable[InhibitRule]) -> None:
        self._rules = [
            _Inhibition(rule, tuple(map(parse_matcher, rule.source)), tuple(map(parse_matcher, rule.target)))
            for rule in rules
        ]

    def observe(self, record: NotificationRecord, fields: Mapping[str, str] | None = None) -> Hold | None:
        """The inhibition holding ``record`` (decided before it updates the sources), then its effect as a source."""
        fields = fields_of(record) if fields is None else fields
        held: Hold | None = None
        for inhibition in self._rules:
            key = inhibition.key(fields)
            if held is None and all_match(inhibition.target, fields):
                sources = inhibition.firing.get(key)
                for source_id, source_rule in (sources or {}).items():
                    if source_id != record.alert_id:
                        held = Hold(INHIBITED, source_id,
                                    f"inhibited by {source_rule} alert {source_id} (inhibit rule {inhibition.rule.name})")
                        break
            if all_match(inhibition.source, fields):
                self._update(inhibition, key, record)
        return held

    def remember(self, record: NotificationRecord, fields: Mapping[str, str] | None = None) -> None:
        """Only ``record``'s effect as a source: a record an earlier run decided, read again to restore the inhibitions.

        Nothing is decided for it as a target (it was delivered or held
        before); in stream order it leaves the sources as :meth:`observe` did.
        """
        fields = fields_of(record) if fields is None else fields
        for inhibition in self._rules:
            if all_match(inhibition.source, fields):
                self._update(inhibition, inhibition.key(fields), record)

    @property
    def rules(self) -> tuple[InhibitRule, ...]:
        """The inhibit rules applied (none: nothing is ever inhibited)."""
        return tuple(inhibition.rule for inhibition in self._rules)

    @property
    def active(self) -> int:
        """Inhibitions in force: (inhibit rule, firing source alert) pairs."""
        return sum(inhibition.count for inhibition in self._rules)

    @staticmethod
    def _update(inhibition: _Inhibition, key: tuple[str, ...], record: NotificationRecord) -> None:
        sources = inhibition.firing.get(key)
        if record.status == "firing":
            if sources is None:
                sources = inhibition.firing[key] = OrderedDict()
            if record.alert_id not in sources:
                sources[record.alert_id] = record.rule.id
                inhibition.count += 1
                while inhibition.count > MAX_INHIBITING:
                    oldest_key, oldest = next(iter(inhibition.firing.items()))
                    oldest.popitem(last=False)
                    inhibition.count -= 1
                    if not oldest:
                        del inhibition.firing[oldest_key]
        elif sources is not None and sources.pop(record.alert_id, None) is not None:
            inhibition.count -= 1
            if not sources:
                del inhibition.firing[key]


# -- the decision ---------------------------------------------------------------------------------------


class HoldPolicy:
    """What delivery holds: the silences (replaced as the store's change), the mute times and who names them.

    :meth:`hold` is asked for each notification on each channel when it is
    about to be sent (its first call; retries of a call already made are not
    held: the receiver may have it).
    """

    def __init__(self, mute_times: Iterable[MuteTime] = (), channel_mutes: Mapping[str, Sequence[str]] | None = None,
                 rule_mutes: Mapping[str, Sequence[str]] | None = None, inhibit: Iterable[InhibitRule] = ()) -> None:
        self.mute_times = {mute.name: mute for mute in mute_times}
        self.channel_mutes = {name: tuple(names) for name, names in (channel_mutes or {}).items() if names}
        self.rule_mutes = {name: tuple(names) for name, names in (rule_mutes or {}).items() if names}
        self.inhibitor = Inhibitor(inhibit)
        self.silences: tuple[Silence, ...] = ()

    def hold(self, record: NotificationRecord, channel: str, inhibited: Hold | None, at_ms: int) -> Hold | None:
        """Why ``record`` is not to be sent on ``channel`` at ``at_ms``, or None: send it."""
        if self.silences:
            fields = fields_of(record)
            for silence in self.silences:
                if silence.active(at_ms) and silence.holds(fields):
                    return Hold(SILENCED, silence.id, silence.describe())
        for owner, names in (("channel", self.channel_mutes.get(channel, ())), ("rule", self.rule_mutes.get(record.rule.id, ()))):
            for name in names:
                if mute_active(self.mute_times[name], at_ms):
                    return Hold(MUTED, name, f"mute time {name} of the {owner}")
        return inhibited
