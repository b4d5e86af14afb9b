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
from typing import Any, Final, NamedTuple

from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.conditions import Predicate, compile_conditions
from schemas.records import Record, compact_json
from schemas.rules import MetricDefinition

RESOLUTION_MS = {"10s": 10_000, "1m": 60_000, "5m": 300_000, "1h": 3_600_000}
BUCKET_UNIT: Final = 10_000
"""Every resolution is a multiple of 10 s, so every bucket start is too: a bucket's key (:class:`SiteMetrics`) holds
its start in these units. In milliseconds (~1.7e12) the start times ``width`` was a generic Python multiplication in the
compiled engine (a factor of 2^30 or more leaves mypyc's machine-word path), ~800 instructions per signal counted."""
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
    """Final buckets, column by column, as the store's ``metrics`` columns: what every site of a batch appends its final buckets to.

    A busy corpus makes a final bucket for every ~1.5 signals. A
    :class:`MetricPoint` tuple per bucket, transposed into the store's
    columns afterwards, cost 10.0k instructions per bucket; appended here and
    handed to the store as they are (:func:`schemas.store.metric_columns`),
    7.1k (callgrind, compiled). A bucket's labels are appended in the two
    forms the store keeps, made once per label combination
    (:meth:`CompiledMetric.label_columns`, ~0.3k instructions per bucket):
    looked up per bucket by their pairs instead (two caches keyed by a tuple
    of tuples, hashed anew each time) they cost 1.2k.
    """

    def __init__(self) -> None:
        self.sites: list[str] = []
        self.metrics: list[str] = []
        self.labels_keys: list[str] = []
        """The labels as sorted compact JSON (``labels_key``, part of a stored bucket's identity)."""
        self.labels_maps: list[dict[str, str]] = []
        """The labels by name, sorted; one dict per label combination, shared by its buckets (only ever read)."""
        self.bucket_starts: list[int] = []
        """Epoch ms."""
        self.resolutions: list[int] = []
        """Length of each bucket, seconds (``resolution_s``)."""
        self.values: list[float] = []
        self.signals: list[int] = []

    def __len__(self) -> int:
        return len(self.sites)

    def points(self) -> list[MetricPoint]:
        """The buckets one by one, in the order they were appended."""
        return [
            MetricPoint(site, metric, tuple(labels.items()), start, resolution * 1000, value, signals)
            for site, metric, labels, start, resolution, value, signals in zip(
                self.sites, self.metrics, self.labels_maps, self.bucket_starts, self.resolutions, self.values, self.signals,
                strict=True)
        ]


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


class LabelScale(NamedTuple):
    """One declared label of a metric, its stored texts ranked.

    The texts are those of its declared values, ``other`` and ``none``,
    distinct and sorted: two values that label alike (or a declared
    ``other``) share a rank.
    """

    name: str
    ranks: dict[tuple[bool, Any], int]
    """The rank of each declared value's text, by (is a bool, value): ``True`` and ``1`` compare equal, not alike."""
    other: int
    none: int
    texts: tuple[str, ...]
    """Every text of the label, by rank."""


def label_scale(name: str, values: Iterable[Any]) -> LabelScale:
    """The ranked texts of one label declared with ``values``."""
    declared = {(type(value) is bool, value): label_text(value) for value in values}
    texts = tuple(sorted({*declared.values(), OTHER, NONE}))
    rank = {text: position for position, text in enumerate(texts)}
    return LabelScale(name, {value: rank[text] for value, text in declared.items()}, rank[OTHER], rank[NONE], texts)


@dataclass(frozen=True, eq=False)
class CompiledMetric:
    """A metric definition prepared for the per-signal path.

    A label combination is counted as its rank among the metric's
    combinations in sorted order (the labels' ranks, the first label the
    most significant): a small integer, which a bucket's key is made of
    (:class:`SiteMetrics`), and which orders as the combination itself does.
    """

    name: str
    types: frozenset[str]
    matches: Predicate | None
    labels: tuple[LabelScale, ...]
    """Sorted by name."""
    sum_field: str | None
    resolution: int
    combinations: int
    """How many label combinations there are (the product of the labels' texts): ranks are below it."""
    _by_class: dict[type, tuple[Callable[[Any], Any] | None, dict[Any, int]]] = field(default_factory=dict, repr=False)
    """Per payload class: a getter of the label values (None when the class lacks a label field), and the
    combinations seen, by those values. Exact: a strict payload field holds one type (never both ``bool`` and
    ``int``, the only values that compare equal and label differently), so within a class equal values label alike."""
    _labels: dict[int, tuple[tuple[str, str], ...]] = field(default_factory=dict, repr=False)
    """The label names and texts of each combination rank named so far (at most :attr:`combinations`)."""
    _columns: dict[int, tuple[str, dict[str, str]]] = field(default_factory=dict, repr=False)
    """The stored forms of each combination rank emitted so far (:meth:`label_columns`)."""

    def combination_of(self, data: Any) -> int:
        """The rank of one payload's label combination (remembered: the per-signal path)."""
        if not self.labels:
            return 0
        kind = type(data)
        entry = self._by_class.get(kind)
        if entry is None:
            names = [label.name for label in self.labels]
            fields = getattr(kind, "model_fields", getattr(kind, "__struct_fields__", ()))  # a model, or a Struct
            entry = self._by_class[kind] = (attrgetter(*names) if all(name in fields for name in names) else None, {})
        getter, seen = entry
        if getter is None:
            return self._combination_of(data)
        values = getter(data)
        try:
            found = seen.get(values)
        except TypeError:  # a list (`flags`) is not hashable: not remembered
            return self._combination_of(data)
        if found is None:
            if len(seen) >= LABELS_CACHE_LIMIT:
                seen.clear()
            found = seen[values] = self._combination_of(data)
        return found

    def _combination_of(self, data: Any) -> int:
        combination = 0
        for label in self.labels:
            value = getattr(data, label.name, None)
            if value is None:
                rank = label.none
            elif isinstance(value, list):
                rank = label.other
            else:
                found = label.ranks.get((type(value) is bool, value))
                rank = label.other if found is None else found
            combination = combination * len(label.texts) + rank
        return combination

    def labels_of(self, combination: int) -> tuple[tuple[str, str], ...]:
        """The label names and texts of a combination rank, as stored."""
        found = self._labels.get(combination)
        if found is None:
            pairs: list[tuple[str, str]] = []
            rest = combination
            for label in self.labels[::-1]:
                pairs.append((label.name, label.texts[rest % len(label.texts)]))
                rest //= len(label.texts)
            found = self._labels[combination] = tuple(pairs[::-1])
        return found

    def label_columns(self, combination: int) -> tuple[str, dict[str, str]]:
        """A combination rank's labels as stored: sorted compact JSON (``labels_key``) and a map (``labels``)."""
        found = self._columns.get(combination)
        if found is None:
            labels = dict(self.labels_of(combination))
            found = self._columns[combination] = (compact_json(labels), labels)
        return found

    def combination(self, labels: tuple[tuple[str, str], ...]) -> int:
        """The rank of a combination given as names and texts (:meth:`labels_of`'s inverse, for restored snapshots)."""
        combination = 0
        for label, (name, text) in zip(self.labels, labels, strict=True):
            if name != label.name:
                raise ValueError(f"metric {self.name}: label {name!r} is not declared")
            combination = combination * len(label.texts) + label.texts.index(text)
        return combination


def compile_metric(metric: MetricDefinition) -> CompiledMetric:
    """Precompute the predicate, the ranked label texts and the bucket length."""
    labels = tuple(label_scale(name, values) for name, values in sorted(metric.labels.items()))
    return CompiledMetric(
        name=metric.name,
        types=frozenset(metric.signal_types),
        matches=compile_conditions(metric.where),
        labels=labels,
        sum_field=None if isinstance(metric.value, str) else metric.value.sum,
        resolution=RESOLUTION_MS[metric.resolution],
        combinations=math.prod([len(label.texts) for label in labels]),
    )


Bucket = list[float]
"""An open bucket as a snapshot keeps it: ``[value, signals]``."""
NamedKey = tuple[int, str, tuple[tuple[str, str], ...]]
"""A bucket as a snapshot names it: (bucket start, metric name, label names and texts)."""


class SiteMetrics:
    """Open buckets of every metric for one site, finalised by the site's clock.

    A bucket's key is one integer, ``start / BUCKET_UNIT × width + metric ×
    stride + combination`` (the site's metrics numbered in name order,
    ``stride`` the most label combinations any of them has, ``width`` the
    metrics' strides), where it was a tuple of the start, the metric's name
    and the label pairs: nothing to build, and hashing it (to open, find and
    pop the bucket) costs next to nothing, where the tuple's hash walked the
    label pairs each time. Sorted keys are the buckets in (start, name,
    labels) order, as sorted tuples were. Callgrind, a 560k-line replay with
    the default pack: :meth:`count` and :meth:`settle` 1.42G → 1.19G instructions;
    with the start in :data:`BUCKET_UNIT` steps and the counts below, 0.99G.

    An open bucket is its count of signals in :attr:`open` and, for a
    ``{sum: field}`` metric, its sum in :attr:`sums`: a count metric's value
    is its count (as a float: the sum of as many 1.0, exactly). A list per
    bucket (``[value, signals]``), made for three signals in four and
    freed at emission, and the float of a count metric's value each signal
    made anew, cost more than the second look-up of the key.
    """

    __slots__ = ("by_type", "clock", "late", "lateness", "metrics", "next_end", "open", "site", "stride", "sums", "width")

    def __init__(self, metrics: list[CompiledMetric], site: str, lateness: int = DEFAULT_ALLOWED_LATENESS_MS) -> None:
        self.site = site
        self.lateness = lateness
        self.clock: int | None = None
        self.late = 0
        named: dict[str, CompiledMetric] = {}
        for metric in metrics:
            named.setdefault(metric.name, metric)
        self.metrics = tuple(named[name] for name in sorted(named))
        self.stride = max((metric.combinations for metric in self.metrics), default=1)
        self.width = len(self.metrics) * self.stride
        self.by_type: dict[str, tuple[tuple[CompiledMetric, int], ...]] = {}
        for position, metric in enumerate(self.metrics):
            for signal_type in sorted(metric.types):
                self.by_type[signal_type] = (*self.by_type.get(signal_type, ()), (metric, position * self.stride))
        self.open: dict[int, int] = {}
        """The signals counted in each open bucket, by key."""
        self.sums: dict[int, float] = {}
        """The value of each open bucket of a ``{sum: field}`` metric, by key."""
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

    def count(self, data: Any, ts: int, metrics: tuple[tuple[CompiledMetric, int], ...]) -> None:
        """Add one signal that is not late (its payload ``data``, its ``ts``) to the buckets of ``metrics``, its type's.

        Each metric comes with its number times the stride: the part of its buckets' keys that names it.
        """
        counts, width = self.open, self.width
        for metric, offset in metrics:
            matches = metric.matches
            if matches is not None and not matches(data):
                continue
            resolution = metric.resolution
            start = ts - ts % resolution
            # Boxed once: a key is a Python int past the small ones, made anew each time a native int is boxed.
            key: Any = start // BUCKET_UNIT * width + offset + metric.combination_of(data)
            signals = counts.get(key)
            if signals is None:  # most signals open a bucket (a busy corpus makes one for every ~1.5 signals)
                counts[key] = 1
                end = start + resolution
                next_end = self.next_end
                if next_end is None or end < next_end:
                    self.next_end = end
            else:
                counts[key] = signals + 1
            sum_field = metric.sum_field
            if sum_field is not None:
                amount = summand(getattr(data, sum_field, None))
                total = self.sums.get(key)
                self.sums[key] = amount if total is None else total + amount

    def settle(self, clock: int | None, out: MetricColumns) -> None:
        """The site's clock after a batch: append the buckets it made final to ``out``."""
        self.clock = clock
        next_end = self.next_end
        if next_end is not None and clock is not None and next_end < clock - self.lateness:
            self._final(clock - self.lateness, out)

    def _final(self, horizon: int, out: MetricColumns) -> None:
        """Append the buckets whose end is before ``horizon`` (the clock minus the allowed lateness)."""
        metrics, stride, width = self.metrics, self.stride, self.width
        done: list[Any] = []
        next_end = None
        keys: list[Any] = list(self.open)  # the dictionary's own objects: iterated as ``int``, each was unboxed and boxed anew
        for boxed in keys:  # one pass: the final keys, and the earliest end among the others
            key: int = boxed
            end = key // width * BUCKET_UNIT + metrics[key % width // stride].resolution
            if end < horizon:
                done.append(boxed)
            elif next_end is None or end < next_end:
                next_end = end
        self.next_end = next_end
        self._emit(done, out)

    def flush(self, out: MetricColumns) -> None:
        """Append every open bucket, final because the input has ended."""
        self.next_end = None
        self._emit(list(self.open), out)

    def _emit(self, keys: list[Any], out: MetricColumns) -> None:
        """Append the buckets of ``keys`` in key order and forget them.

        ``keys`` are the dictionary's own objects (typed ``Any``, so kept boxed): a native int would be boxed anew, a
        Python int allocated, for each look-up.
        """
        open_, sums, site, metrics, stride, width = self.open, self.sums, self.site, self.metrics, self.stride, self.width
        sites, names, labels_keys, labels_maps, starts, lengths, values, counts = (
            out.sites, out.metrics, out.labels_keys, out.labels_maps, out.bucket_starts, out.resolutions, out.values,
            out.signals)
        boxed: Any
        for boxed in sorted(keys):
            signals = open_[boxed]  # a look-up and a deletion: ``pop`` is a method call, not a C call, compiled
            del open_[boxed]
            key: int = boxed
            offset = key % width
            metric = metrics[offset // stride]
            labels_key, labels = metric.label_columns(offset % stride)
            sites.append(site)
            names.append(metric.name)
            labels_keys.append(labels_key)
            labels_maps.append(labels)
            starts.append(key // width * BUCKET_UNIT)
            lengths.append(metric.resolution // 1000)
            if metric.sum_field is None:
                values.append(float(signals))
            else:
                values.append(sums[boxed])
                del sums[boxed]
            counts.append(signals)

    def named(self) -> dict[NamedKey, Bucket]:
        """The open buckets by (start, metric name, labels): what a snapshot keeps, whatever the keys are here."""
        metrics, stride, width, sums = self.metrics, self.stride, self.width, self.sums
        named: dict[NamedKey, Bucket] = {}
        for key, signals in self.open.items():
            offset = key % width
            metric = metrics[offset // stride]
            value = float(signals) if metric.sum_field is None else sums[key]
            named[(key // width * BUCKET_UNIT, metric.name, metric.labels_of(offset % stride))] = [value, signals]
        return named

    def restore(self, named: dict[NamedKey, Bucket]) -> None:
        """Open the buckets of :meth:`named` again, those of the metrics this site counts (the others are dropped)."""
        by_name = {metric.name: (position, metric) for position, metric in enumerate(self.metrics)}
        self.open = {}
        self.sums = {}
        ends = []
        for (start, name, labels), (value, signals) in named.items():
            found = by_name.get(name)
            if found is not None:
                position, metric = found
                key = start // BUCKET_UNIT * self.width + position * self.stride + metric.combination(labels)
                self.open[key] = int(signals)
                if metric.sum_field is not None:
                    self.sums[key] = value
                ends.append(start + metric.resolution)
        self.next_end = min(ends) if ends else None
