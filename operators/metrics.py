"""Metric buckets per site (rules.md "Metric definitions"), as plain Python.

A metric counts (or sums a numeric field of) the site's matching signals in
UTC-aligned buckets, split by declared labels only: a value outside the
declared set is recorded as ``other``, a null as ``none``, so a metric can
never grow past the bound checked at load. A bucket is final once the site's
clock (the largest ``ts`` of its records, ticks included) passes its end plus
the allowed lateness; it is emitted exactly once, then forgotten. A signal
for a bucket that can no longer change is late and counted, never added.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.conditions import Predicate, compile_conditions
from schemas.records import Record
from schemas.rules import MetricDefinition

RESOLUTION_MS = {"10s": 10_000, "1m": 60_000, "5m": 300_000, "1h": 3_600_000}
OTHER, NONE = "other", "none"
NO_CLOCK = -(1 << 60)
"""A clock before every ``ts`` (the contract's are 1970–2199), for loops that keep a clock as a plain ``int``."""
LABELS_CACHE_LIMIT = 4096
"""Label combinations remembered per metric and payload class (the values of a label may be unbounded: ``path``)."""


class MetricPoint(NamedTuple):
    """One final bucket of one label combination."""

    site: str
    metric: str
    labels: tuple[tuple[str, str], ...]
    bucket_start: int
    resolution: int
    value: float
    signals: int


class MetricColumns:
    """Final buckets, column by column: what every site of a batch appends its final buckets to.

    A busy corpus makes a final bucket for every ~1.5 signals. A
    :class:`MetricPoint` tuple per bucket, transposed into the store's
    columns afterwards, cost 10.0k instructions per bucket; appended here and
    handed to the store as they are (:func:`schemas.store.metric_columns`),
    7.1k (callgrind, compiled).
    """

    def __init__(self) -> None:
        self.sites: list[str] = []
        self.metrics: list[str] = []
        self.labels: list[tuple[tuple[str, str], ...]] = []
        self.bucket_starts: list[int] = []
        self.resolutions: list[int] = []
        self.values: list[float] = []
        self.signals: list[int] = []

    def __len__(self) -> int:
        return len(self.sites)

    def points(self) -> list[MetricPoint]:
        """The buckets one by one, in the order they were appended."""
        return [MetricPoint(*fields) for fields in zip(
            self.sites, self.metrics, self.labels, self.bucket_starts, self.resolutions, self.values, self.signals, strict=True)]


def label_text(value: Any) -> str:
    """A declared or observed label value as the string stored for it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def summand(value: int | float | None) -> float:
    """What a ``{sum: field}`` metric adds for one signal: the field as a float, 0 when absent.

    Validation bounds every integer to ±(2^53 − 1), which floats hold exactly; should a bound ever be missed,
    an integer beyond the float range adds ±inf to its bucket (stored, visibly wrong) instead of raising
    ``OverflowError`` inside the detection step, which would stop it on every restart at the same record.
    """
    if value is None:
        return 0.0
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


@dataclass(frozen=True, eq=False)
class CompiledMetric:
    """A metric definition prepared for the per-signal path."""

    name: str
    types: frozenset[str]
    matches: Predicate | None
    labels: tuple[tuple[str, dict[Any, str]], ...]
    sum_field: str | None
    resolution: int
    _by_class: dict[type, tuple[Callable[[Any], Any] | None, dict[Any, tuple[tuple[str, str], ...]]]] = field(
        default_factory=dict, repr=False)
    """Per payload class: a getter of the label values (None when the class lacks a label field), and the
    combinations seen, by those values. Exact: a strict payload field holds one type (never both ``bool`` and
    ``int``, the only values that compare equal and label differently), so within a class equal values label alike."""

    def labels_of(self, data: Any) -> tuple[tuple[str, str], ...]:
        """The label combination of one payload, bucketed into declared / other / none (remembered: the per-signal path)."""
        if not self.labels:
            return ()
        kind = type(data)
        entry = self._by_class.get(kind)
        if entry is None:
            names = [name for name, _ in self.labels]
            fields = getattr(kind, "model_fields", getattr(kind, "__struct_fields__", ()))  # a model, or a Struct
            entry = self._by_class[kind] = (attrgetter(*names) if all(name in fields for name in names) else None, {})
        getter, seen = entry
        if getter is None:
            return self._labels_of(data)
        values = getter(data)
        try:
            found = seen.get(values)
        except TypeError:  # a list (`flags`) is not hashable: not remembered
            return self._labels_of(data)
        if found is None:
            if len(seen) >= LABELS_CACHE_LIMIT:
                seen.clear()
            found = seen[values] = self._labels_of(data)
        return found

    def _labels_of(self, data: Any) -> tuple[tuple[str, str], ...]:
        combination = []
        for name, declared in self.labels:
            value = getattr(data, name, None)
            if value is None:
                text = NONE
            elif isinstance(value, list):
                text = OTHER
            else:
                found = declared.get((type(value) is bool, value))
                text = OTHER if found is None else found
            combination.append((name, text))
        return tuple(combination)


def compile_metric(metric: MetricDefinition) -> CompiledMetric:
    """Precompute the predicate, the declared-value lookups and the bucket length."""
    labels = tuple(
        (name, {(type(value) is bool, value): label_text(value) for value in values})
        for name, values in sorted(metric.labels.items())
    )
    return CompiledMetric(
        name=metric.name,
        types=frozenset(metric.signal_types),
        matches=compile_conditions(metric.where),
        labels=labels,
        sum_field=None if isinstance(metric.value, str) else metric.value.sum,
        resolution=RESOLUTION_MS[metric.resolution],
    )


class SiteMetrics:
    """Open buckets of every metric for one site, finalised by the site's clock."""

    __slots__ = ("by_type", "clock", "late", "lateness", "next_end", "open", "resolutions", "site")

    def __init__(self, metrics: list[CompiledMetric], site: str, lateness: int = DEFAULT_ALLOWED_LATENESS_MS) -> None:
        self.site = site
        self.lateness = lateness
        self.clock: int | None = None
        self.late = 0
        self.by_type: dict[str, tuple[CompiledMetric, ...]] = {}
        for metric in metrics:
            for signal_type in metric.types:
                self.by_type[signal_type] = (*self.by_type.get(signal_type, ()), metric)
        self.resolutions = {metric.name: metric.resolution for metric in metrics}
        # (bucket_start, metric name, labels) -> [value, signals]
        self.open: dict[tuple[int, str, tuple[tuple[str, str], ...]], list[float]] = {}
        self.next_end: int | None = None  # the earliest end among open buckets: nothing is final before it

    def process(self, record: Record, out: MetricColumns) -> None:
        """Account one record (signal or tick); append the buckets it made final to ``out``."""
        self.process_all((record,), out)

    def process_all(self, records: Iterable[Record], out: MetricColumns) -> None:
        """Account records (signals and ticks) in order; append the buckets they made final to ``out``, sorted.

        One call per batch, finalising once at its end: the same buckets, with
        the same contents, as finalising after every record that moves the
        clock. A bucket final at some record ends before that record's clock
        minus the lateness; every later record that is not late is past that
        instant, so it falls in a later bucket and never adds to a final one.
        And a bucket still open at the end is open either way. Only the order
        of the buckets differs (one sorted run instead of one per clock move).

        :meth:`operators.site.SiteDetector.process_all` runs this same loop inside its own (one pass over the
        records instead of two): :meth:`count` per signal, :meth:`settle` at the end.
        """
        by_type, lateness = self.by_type, self.lateness
        clock = NO_CLOCK if self.clock is None else self.clock
        for record in records:
            ts = record.ts
            metrics = by_type.get(record.type)
            if metrics is not None:  # else a tick, or a type no metric counts: it can only move the clock
                if ts <= clock - lateness:
                    self.late += 1
                else:
                    self.count(record.data, ts, metrics)
            if ts > clock:
                clock = ts
        self.settle(None if clock == NO_CLOCK else clock, out)

    def count(self, data: Any, ts: int, metrics: tuple[CompiledMetric, ...]) -> None:
        """Add one signal that is not late (its payload ``data``, its ``ts``) to the buckets of ``metrics``, its type's."""
        buckets = self.open
        for metric in metrics:
            matches = metric.matches
            if matches is not None and not matches(data):
                continue
            resolution = metric.resolution
            start = ts - ts % resolution
            key = (start, metric.name, metric.labels_of(data))
            sum_field = metric.sum_field
            amount = 1.0 if sum_field is None else summand(getattr(data, sum_field, None))
            # Most signals open a bucket (a busy corpus makes one for every ~1.5 signals): one look-up of the key
            # (hashing it is most of the cost), not a miss and then an insert.
            fresh = [amount, 1]
            bucket = buckets.setdefault(key, fresh)
            if bucket is fresh:
                end = start + resolution
                next_end = self.next_end
                if next_end is None or end < next_end:
                    self.next_end = end
            else:
                bucket[0] += amount
                bucket[1] += 1

    def settle(self, clock: int | None, out: MetricColumns) -> None:
        """The site's clock after a batch: append the buckets it made final to ``out``."""
        self.clock = clock
        next_end = self.next_end
        if next_end is not None and clock is not None and next_end < clock - self.lateness:
            self._final(out)

    def _final(self, out: MetricColumns) -> None:
        """Append the buckets whose end plus the allowed lateness the clock has passed."""
        assert self.clock is not None
        horizon = self.clock - self.lateness
        if self.next_end is None or self.next_end >= horizon:
            return
        resolutions = self.resolutions
        done = []
        next_end = None
        for key in self.open:  # one pass: the final keys, and the earliest end among the others
            end = key[0] + resolutions[key[1]]
            if end < horizon:
                done.append(key)
            elif next_end is None or end < next_end:
                next_end = end
        self.next_end = next_end
        self._emit(done, out)

    def flush(self, out: MetricColumns) -> None:
        """Append every open bucket, final because the input has ended."""
        self.next_end = None
        self._emit(list(self.open), out)

    def _emit(self, keys: list[tuple[int, str, tuple[tuple[str, str], ...]]], out: MetricColumns) -> None:
        pop, site, resolutions = self.open.pop, self.site, self.resolutions
        sites, names, labels_of, starts, lengths, values, counts = (
            out.sites, out.metrics, out.labels, out.bucket_starts, out.resolutions, out.values, out.signals)
        for key in sorted(keys):
            value, signals = pop(key)
            start, name, labels = key
            sites.append(site)
            names.append(name)
            labels_of.append(labels)
            starts.append(start)
            lengths.append(resolutions[name])
            values.append(value)
            counts.append(int(signals))
