"""The detection dataflow: parse and validate, route to sites, detect, emit.

``build_detect_flow`` only wires: validation lives in :mod:`schemas.records`,
routing in :mod:`operators.routing`, detection in :mod:`operators.engine`.
Each output is a typed stream of :class:`DetectOutputs`; invalid lines go
down their own, ``rejects`` (counted and reported, never dropped). Decisions
never use Bytewax's clock-driven windows or wake-ups: time comes only from
the records.

The Bytewax key is the site: one state per site (:class:`SiteDetector`) holds
a :class:`RuleRunner` per rule, and a record is handed to the runners of the
rules it is routed to, in file order. That is exactly what keying by (site, rule) would compute —
each runner still sees its own records in order — but it costs Bytewax one
item per site and chunk instead of one per (site, rule) and chunk, and a
tick (routed to every rule) one dictionary append instead of one per rule.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from typing_extensions import override

from flows.cluster import site_shard
from flows.placement import SiteKeys, StatePlacement
from flows.sources import LINE_STRIDE, Line, chunk_index
from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.metrics import CompiledMetric, MetricColumns
from operators.notification import DEFAULT_LINK_BASE, Decision, Emitted, Notification, decision_counts
from operators.routing import RoutingTable
from operators.site import SiteDetector
from operators.snapshot import SnapshotCodec
from schemas.records import Record, RecordColumns, RoutingSites, parse_lines, salvage_site_and_ts
from schemas.store import Columns, alert_rows, metric_columns, parsed_signal_columns, rejected_row, signal_columns
from sinks.callback import OwnerSink
from sinks.clickhouse import StoreItem

Reject = tuple[int, str]
"""A rejected input line: its number and the one-line reason."""

_line_of, _ts_of = attrgetter("line"), attrgetter("ts")
_first = itemgetter(0)


@dataclass(frozen=True, slots=True)
class FlowStats:
    """What the flow counts besides its outputs, in pieces the receiver adds up.

    ``valid`` records of a chunk; ``late``: lines late for at least one rule
    they were routed to; ``decisions`` by (rule id, reason), as
    :func:`operators.notification.decision_counts` counts them.
    """

    valid: int = 0
    late: list[int] = field(default_factory=list)
    decisions: dict[tuple[str, Decision], int] = field(default_factory=dict)


RejectRow = tuple[int, str, str, int | None]
"""A rejected line's store row before its time is attributed: (line, salvaged site, reason, its own ``ts`` or None)."""

ValidTimes = tuple[list[int], list[int]]
"""The valid records of (part of) a chunk, in line order: their line numbers and their ``ts`` — all that attributing a
rejected line to the latest valid ``ts`` before it needs. Plain lists of the records' own numbers: no object per record
(under the store that would cost GC time). Filling ``array("q", …)`` took 3,000 instructions per record (each value
parsed as a call argument: 7% of the detection step with a store); these lists take 860."""


@dataclass(frozen=True, slots=True)
class SiteLines:
    """What :class:`RouteSiteLines` makes of one chunk (the unordered, live flow)."""

    work: list[tuple[str, list[Line]]]  # each site's raw lines, in line order, under its state key: the detect step's input
    rejects: list[Reject]  # lines rejected here: no site to send them to
    store: list[StoreItem]  # with a store: their rows

@dataclass(frozen=True, slots=True)
class Detected:
    """What one site's detector made of one batch: its notifications and stats (its final metric buckets go to the caller's list)."""

    alerts: list[Emitted]
    stats: FlowStats


def routed_types(table: RoutingTable, metric_types: Iterable[str]) -> set[str]:
    """The types a site's detector must get: those a rule reads, and those only a metric reads (or it never counts them)."""
    return set(table.by_type).union(metric_types)


def parsed_site(item: Line) -> tuple[bytes | None, list[Reject]]:
    """The site of a raw line that :class:`schemas.records.RoutingSites` did not settle, by parsing it (rare).

    ``(site, [])`` for a valid line; ``(None, [reject])`` for an invalid one
    (its site may be readable, but it never reaches a detector); ``(None,
    [])`` for a blank line.
    """
    records, rejects = parse_lines((item,))
    return (records[0].site.encode(), []) if records else (None, rejects)


class RouteSiteLines:
    """Send each raw line of a chunk to its site's detector, unparsed (the unordered, live flow's reader).

    A line is validated once, by the worker that holds its site's state
    (:class:`DetectLogic`): a parsed :class:`Record` crossing to another
    process would be pickled as its bytes and validated again on arrival.
    A line whose site cannot be read is sent to the site of the line before
    it in the partition, whose detector rejects it (with the same reason as
    anywhere) and attributes it in time (:data:`RejectRow`); before any such
    line it is rejected here.
    """

    def __init__(self, store_source: str | None, keys: SiteKeys) -> None:
        self.store_source = store_source
        self.keys = keys
        # The site of the latest line sent, per partition: one reader object serves every partition its process reads.
        self.last_site: dict[int, bytes] = {}
        self.routing_site = RoutingSites()

    def __call__(self, chunk: list[Line]) -> SiteLines:
        """The chunk's lines per site; the lines rejected here, with their store rows."""
        if not chunk:
            return SiteLines([], [], [])
        by_site: dict[bytes, list[Line]] = {}
        unsent: list[Reject] = []
        partition = chunk[0][0] // LINE_STRIDE  # a chunk is one partition's poll
        last, lookup, routing_site = self.last_site.get(partition), by_site.get, self.routing_site
        for item in chunk:
            site = routing_site(item[1])
            if site is None:
                site, rejects = parsed_site(item)
                if site is None:
                    if last is None:
                        unsent.extend(rejects)
                        continue
                    if not rejects:  # a blank line
                        continue
                    site = last
            lines = lookup(site)
            if lines is None:
                by_site[site] = [item]
            else:
                lines.append(item)
            last = site
        if last is not None:
            self.last_site[partition] = last
        store: list[StoreItem] = []
        if unsent and self.store_source is not None:
            store.append(("rejected", finish_rejected(self.store_source, reject_rows(chunk, unsent), 0, [])))
        key = self.keys
        return SiteLines([(key(site), lines) for site, lines in by_site.items()], unsent, store)


def valid_times(records: list[Record]) -> ValidTimes:
    """The :data:`ValidTimes` of parsed records."""
    return in_line_order(list(map(_line_of, records)), list(map(_ts_of, records)))


def in_line_order(lines: list[int], times: list[int]) -> ValidTimes:
    """The :data:`ValidTimes` of records' ``lines`` and ``times``, given in the order they were parsed."""
    if lines == sorted(lines):  # parse_lines keeps its input's order, which is line order where lines are numbered
        return lines, times
    pairs = sorted(zip(lines, times, strict=True))
    return [line for line, _ in pairs], [ts for _, ts in pairs]


def reject_rows(lines: list[Line], rejects: list[Reject]) -> list[RejectRow]:
    """The store rows of rejected lines (among ``lines``), their site and ``ts`` salvaged where valid.

    A line is found by bisection, ``lines`` being in line order as a chunk is read (a table of the chunk's 10k
    lines cost 3% of a replay with a store); lines in another order (a live batch of several Kafka partitions)
    fall back to that table.
    """
    rows: list[RejectRow] = []
    raw_of: dict[int, bytes] | None = None
    count = len(lines)
    for line, reason in rejects:
        at = bisect_left(lines, (line,))
        if at < count and lines[at][0] == line:
            raw = lines[at][1]
        else:
            if raw_of is None:
                raw_of = dict(lines)
            raw = raw_of[line]
        site, ts = salvage_site_and_ts(raw)
        rows.append((line, site, reason, ts))
    return rows


def finish_rejected(source: str, rows: list[RejectRow], latest_before_chunk: int,
                    times: list[ValidTimes]) -> list[tuple[Any, ...]]:
    """The ``rejected`` rows of a chunk, given the latest valid ``ts`` of every chunk before it and the chunk's valid times.

    A row without its own ``ts`` gets the latest valid ``ts`` before its line
    in the file: of the earlier chunks, or of this chunk's valid records on
    lines before it, whichever part of the chunk (``times``) they are in.
    """
    finished: list[tuple[Any, ...]] = []
    latest = _latest_before(sorted({row[0] for row in rows if row[3] is None}), times)
    for line, site, reason, ts in rows:
        if ts is None:
            ts = max(latest_before_chunk, latest.get(line, latest_before_chunk))
        finished.append(rejected_row(source, line, site, reason, ts))
    return finished


def _latest_before(lines: list[int], times: list[ValidTimes]) -> dict[int, int]:
    """For each of ``lines`` (sorted), the largest valid ``ts`` on a line before it, in any part; absent where none is.

    One pass per part, whatever the number of lines: the largest ``ts`` of each stretch of records between
    two of ``lines`` is taken by ``max`` over a slice, at C speed (a running maximum made record by record
    in Python cost 3% of a replay with a store, and nearly every chunk has a rejected line without a ``ts``).
    """
    latest: dict[int, int] = {}
    if not lines:
        return latest
    for numbers, stamps in times:
        top: int | None = None
        done = 0
        for line in lines:
            before = bisect_left(numbers, line, done)
            if before > done:
                stretch = max(stamps[done:before])
                top = stretch if top is None or stretch > top else top
                done = before
            if top is not None:
                latest[line] = max(latest.get(line, top), top)
    return latest


@dataclass(frozen=True, slots=True)
class SiteBatch:
    """What one site's worker made of the lines it was sent (the live flow)."""

    detected: Detected | None
    valid: int = 0
    rejects: list[Reject] = field(default_factory=list)
    store: list[StoreItem] = field(default_factory=list)  # with a store: the batch's signals and rejected lines


class DetectLogic(StatefulBatchLogic[list[Line], SiteBatch, Any]):
    """Bytewax state for one site: validates the raw lines it is sent and feeds its :class:`SiteDetector`, in arrival order.

    Every valid line sent here names this site (:class:`RouteSiteLines`).
    With a store it also makes the batch's rows: its signals, and its
    rejected lines, one without a ``ts`` of its own attributed to the latest
    ``ts`` of the site's records before it (its detector's clock, which a
    snapshot keeps).
    """

    def __init__(
        self, table: RoutingTable, lateness: int, link_base: str, metrics: list[CompiledMetric],
        routed: set[str], store_source: str | None = None, snapshots: SnapshotCodec | None = None, resume: bytes | None = None,
    ) -> None:
        self.table = table
        self.lateness = lateness
        self.link_base = link_base
        self.metrics = metrics
        self.routed = routed
        self.store_source = store_source
        self.snapshots = snapshots
        self.detector: SiteDetector | None = None if resume is None or snapshots is None else snapshots.load(resume)

    @override
    def on_batch(self, values: list[list[Line]]) -> tuple[list[SiteBatch], bool]:
        lines = values[0] if len(values) == 1 else list(chain.from_iterable(values))
        by_site: dict[str, list[Record]] = {}
        records, rejects = parse_lines(lines, self.routed, by_site)
        detector = self.detector
        clock_before = detector.clock if detector is not None else None
        detected = None
        points = MetricColumns() if self.metrics else None
        for site, routed in by_site.items():  # at most one site
            if detector is None:
                detector = self.detector = SiteDetector(self.table, site, self.lateness, self.metrics)
            detected = detect_batch(detector, (routed,), self.link_base, points)
        store: list[StoreItem] = [("metrics", metric_columns(points))] if points else []
        if self.store_source is not None:
            if records:
                store.append(("signals", signal_columns(records)))
            if rejects:
                times = [valid_times(routed) for routed in by_site.values()]
                rows = finish_rejected(self.store_source, reject_rows(lines, rejects), clock_before or 0, times)
                store.append(("rejected", rows))
        # A key that has never had a valid record keeps no state: lines naming sites that do not exist cost nothing after.
        keep = StatefulBatchLogic.RETAIN if self.detector is not None else StatefulBatchLogic.DISCARD
        return [SiteBatch(detected, len(records), rejects, store)], keep

    @override
    def on_eof(self) -> tuple[list[SiteBatch], bool]:
        # The input has ended: every open metric bucket is final. Not under recovery (snapshots): there the
        # end of the input is a pause, and the buckets stay open in the snapshot for the next run to finish.
        if self.detector is None or not self.metrics or self.snapshots is not None:
            return [], StatefulBatchLogic.RETAIN
        points = MetricColumns()
        self.detector.flush_metrics(points)
        return [SiteBatch(None, store=[("metrics", metric_columns(points))])], StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> bytes | None:
        # Bytewax asks at every epoch's end, recovery or not: only a flow with recovery pays for the bytes.
        if self.snapshots is None or self.detector is None:
            return None
        return self.snapshots.dump(self.detector)


@dataclass(frozen=True, slots=True)
class Gathered:
    """The :class:`SiteBatch` es of one Bytewax batch, as one item: fewer items to exchange and to write."""

    alerts: list[Emitted]
    rejects: list[Reject]
    stats: FlowStats
    store: list[StoreItem]


def gather(batches: list[SiteBatch]) -> list[Gathered]:
    """One :class:`Gathered` for a Bytewax batch of site batches (their store rows merged per table)."""
    alerts: list[Emitted] = []
    rejects: list[Reject] = []
    late: list[int] = []
    store: list[StoreItem] = []
    decisions: Counter[tuple[str, Decision]] = Counter()
    valid = 0
    for batch in batches:
        valid += batch.valid
        rejects += batch.rejects
        store += batch.store
        detected = batch.detected
        if detected is not None:
            alerts += detected.alerts
            late += detected.stats.late
            decisions.update(detected.stats.decisions)
    return [Gathered(alerts, rejects, FlowStats(valid, late, dict(decisions)), merged_rows(store))]


def merged_rows(items: list[StoreItem]) -> list[StoreItem]:
    """The same rows as ``items``, one item per table (in the order tables first appear; rows in their order)."""
    merged: dict[str, StoreItem] = {}
    for table, rows in items:
        if not rows:
            continue
        into = merged.get(table)
        if into is None:
            merged[table] = (table, Columns([list(column) for column in rows.data]) if isinstance(rows, Columns) else list(rows))
        elif isinstance(into[1], Columns) and isinstance(rows, Columns):
            for column, values in zip(into[1].data, rows.data, strict=True):
                column.extend(values)
        else:
            assert isinstance(into[1], list) and isinstance(rows, list), f"{table}: rows both as columns and as tuples"
            into[1].extend(rows)
    return list(merged.values())


def detect_batch(
    detector: SiteDetector, values: Iterable[list[Record]], link_base: str, points: MetricColumns | None,
) -> Detected | None:
    """Feed one site's detector its records, in order: its notifications and stats, or None for nothing.

    Called once per site and chunk: builds only what the batch needs (nothing at all for the usual batch
    that makes no notification and is not late). The metric buckets it finalises are appended to
    ``points`` (None: no metrics), which the caller gathers over every site of its batch into one
    ``metrics`` item: a few buckets per site and chunk, each made into rows of their own, cost more than
    the buckets themselves.
    """
    out: list[Notification] = []
    late: list[int] = []
    for records in values:
        late += detector.process_all(records, out, points)
    if not (out or late):
        return None
    alerts = [notification.emitted(link_base) for notification in out]
    return Detected(alerts, FlowStats(late=late, decisions=decision_counts(alerts)))


ShardLines = tuple[int, list[Line]]
"""One chunk's raw lines of the sites of one shard, in line order: (chunk index, lines)."""


@dataclass(frozen=True, slots=True)
class ChunkPart:
    """One worker's account of one chunk for :class:`ChunkOrder`: the reader's, or a shard's.

    The reader's holds the lines it could not route (rejected by a full
    parse); a shard's, the rejects among its sites' lines and, with a store,
    its valid records' :data:`ValidTimes` and the largest of their ``ts``.
    """

    chunk: int
    rejects: list[Reject]
    rows: list[RejectRow] = field(default_factory=list)  # with a store: the rejects' rows
    times: ValidTimes = field(default_factory=lambda: ([], []))  # with a store
    latest: int = 0  # with a store: the largest ts in times (0 for none)


@dataclass(frozen=True, slots=True)
class Routed:
    """What :class:`RouteLines` makes of one chunk: each shard's raw lines, and the reader's part."""

    shards: list[list[Line]]
    part: ChunkPart


class RouteLines:
    """Send each raw line of a chunk to the shard of its site, unparsed (the ordered, replay flow's reader).

    A line crosses to another process as its bytes and is validated once, by
    the shard that owns its site: a parsed :class:`Record` would be pickled as
    its bytes and validated again on arrival (``Record.__reduce__``), which
    cost more than the parse itself. The site is read by
    :class:`schemas.records.RoutingSites`; a line it does not settle is parsed
    here — routed if valid (and parsed again by its shard: rare), reported
    here if not. With one shard there is nothing to decide: the chunk goes
    to it whole, which reports every reject (the look-up was ~7% of a
    one-worker replay).
    """

    def __init__(self, shards: int, chunk_lines: int, storing: bool) -> None:
        self.shards = shards
        self.chunk_lines = chunk_lines
        self.storing = storing
        self.shard_of: dict[bytes, int] = {}
        self.routing_site = RoutingSites()

    def __call__(self, chunk: list[Line]) -> Routed:
        """The chunk's lines per shard, and the reader's part (rejects, with a store their rows)."""
        if self.shards == 1:
            return Routed([chunk], ChunkPart(chunk_index(chunk, self.chunk_lines), []))
        parts: list[list[Line]] = [[] for _ in range(self.shards)]
        shard_of, shards, unsettled, routing_site = self.shard_of, self.shards, [], self.routing_site
        for item in chunk:
            site = routing_site(item[1])
            if site is None:
                site, rejects = parsed_site(item)
                if site is None:
                    unsettled.extend(rejects)  # a blank line has none
                    continue
            shard = shard_of.get(site)
            if shard is None:
                shard = shard_of[site] = site_shard(site.decode(), shards)
            parts[shard].append(item)
        rows = reject_rows(chunk, unsettled) if self.storing and unsettled else []
        return Routed(parts, ChunkPart(chunk_index(chunk, self.chunk_lines), unsettled, rows))


@dataclass(frozen=True, slots=True)
class ShardChunk:
    """What a shard made of one chunk's lines of its sites (or, ``store`` only, at the end of the input: the final metric buckets)."""

    detected: list[Detected]
    valid: int = 0
    store: list[StoreItem] = field(default_factory=list)  # with a store: the chunk's signals and final metric buckets
    part: ChunkPart | None = None


class ShardLogic(StatefulBatchLogic[ShardLines, ShardChunk, None]):
    """The detectors of the sites of one shard, fed their records in file order (the ordered, replay flow).

    Every worker reads chunks of the file, so a site's lines arrive from
    several workers, in no particular order between them. Every chunk read
    sends every shard its part (empty or not): the shard holds chunks that
    arrive early and runs them strictly in chunk order — validating the
    lines, feeding the records to their sites' detectors — so each site sees
    exactly the sequence of records a single reader would have given it,
    and the output, lateness included, is the same for any cluster shape.
    Each chunk's rejects go to :class:`ChunkOrder`, which puts them in line
    order with the other shards'.
    """

    def __init__(self, table: RoutingTable, lateness: int, link_base: str, metrics: list[CompiledMetric],
                 metric_types: Iterable[str], storing: bool) -> None:
        self.table = table
        self.lateness = lateness
        self.link_base = link_base
        self.metrics = metrics
        self.routed = routed_types(table, metric_types)
        self.storing = storing
        self.sites: dict[str, SiteDetector] = {}
        self.next_chunk = 0
        self.early: dict[int, list[Line]] = {}

    @override
    def on_batch(self, values: list[ShardLines]) -> tuple[list[ShardChunk], bool]:
        early = self.early
        for index, lines in values:
            early[index] = lines
        out: list[ShardChunk] = []
        while self.next_chunk in early:
            out.append(self._run(self.next_chunk, early.pop(self.next_chunk)))
            self.next_chunk += 1
        return out, StatefulBatchLogic.RETAIN

    def _run(self, index: int, lines: list[Line]) -> ShardChunk:
        by_site: dict[str, list[Record]] = {}
        parsed = RecordColumns() if self.storing else None
        records, rejects = parse_lines(lines, self.routed, by_site, parsed)
        sites, link_base = self.sites, self.link_base
        points = MetricColumns() if self.metrics else None
        detected: list[Detected] = []
        for site, routed in by_site.items():
            detector = sites.get(site)
            if detector is None:
                detector = sites[site] = SiteDetector(self.table, site, self.lateness, self.metrics)
            found = detect_batch(detector, (routed,), link_base, points)
            if found is not None:
                detected.append(found)
        if parsed is None:
            return ShardChunk(detected, len(records), [], ChunkPart(index, rejects))
        times = in_line_order(parsed.lines, parsed.times)
        part = ChunkPart(index, rejects, reject_rows(lines, rejects) if rejects else [], times, parsed.latest)
        store: list[StoreItem] = [("signals", parsed_signal_columns(parsed))]
        if points:
            store.append(("metrics", metric_columns(points)))
        return ShardChunk(detected, len(records), store, part)

    @override
    def on_eof(self) -> tuple[list[ShardChunk], bool]:
        if not self.metrics:
            return [], StatefulBatchLogic.RETAIN
        points = MetricColumns()
        for site in sorted(self.sites):
            self.sites[site].flush_metrics(points)
        return [ShardChunk([], store=[("metrics", metric_columns(points))])], StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> None:
        return None  # the ordered flow is replay's, which has no recovery


@dataclass(frozen=True, slots=True)
class Ordered:
    """What :class:`ChunkOrder` releases for one chunk, in file order."""

    rejects: list[Reject]
    store: list[StoreItem]


class ChunkOrder(StatefulBatchLogic[ChunkPart, Ordered, None]):
    """The chunks' rejected lines in file order, and their store rows finished (one key: one worker).

    A chunk is released once its ``parts`` parts (the reader's and every
    shard's) have come: its rejected lines merged in line order whatever
    worker found them, and a rejected line without a ``ts`` of its own
    attributed to the latest valid ``ts`` before it in the file — which only
    a step that sees the chunks in order, and all of a chunk's valid times,
    knows. The times cost only a look-up per such line (a bisection per
    shard), and cross processes as two lists of integers per shard and chunk.
    """

    def __init__(self, store_source: str | None, parts: int) -> None:
        self.store_source = store_source
        self.parts = parts
        self.next_chunk = 0
        self.latest_ts = 0
        self.early: dict[int, list[ChunkPart]] = {}

    @override
    def on_batch(self, values: list[ChunkPart]) -> tuple[list[Ordered], bool]:
        early = self.early
        for part in values:
            early.setdefault(part.chunk, []).append(part)
        out: list[Ordered] = []
        while len(early.get(self.next_chunk, ())) == self.parts:
            parts = early.pop(self.next_chunk)
            rejects = sorted(chain.from_iterable(part.rejects for part in parts), key=_first)
            times = [part.times for part in parts]
            if rejects:
                store: list[StoreItem] = []
                if self.store_source is not None:
                    rows = sorted(chain.from_iterable(part.rows for part in parts), key=_first)
                    store.append(("rejected", finish_rejected(self.store_source, rows, self.latest_ts, times)))
                out.append(Ordered(rejects, store))
            self.latest_ts = max([self.latest_ts, *(part.latest for part in parts)])
            self.next_chunk += 1
        return out, StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> None:
        return None


@dataclass(frozen=True)
class DetectOptions:
    """How the flow detects and what it writes besides notifications.

    ``metrics`` and ``store_source`` (the input's name in ``rejected``) count
    only with a store. With ``snapshots`` (a flow run with Bytewax recovery),
    each site's detector is snapshotted at the end of every epoch that
    touched it and restored from that on resume; the codec must be made for
    this flow's rules, ``lateness`` and (stored) ``metrics``. ``placement``
    (the live flow): each site's state is kept on the worker that reads its
    partition (:mod:`flows.placement`); None keys it by the site, wherever
    Bytewax's hash puts that (a recovery directory made so).
    """

    lateness: int = DEFAULT_ALLOWED_LATENESS_MS
    link_base: str = DEFAULT_LINK_BASE
    store_source: str = "replay"
    metrics: list[CompiledMetric] = field(default_factory=list)
    snapshots: SnapshotCodec | None = None
    ordering: Ordering | None = None
    placement: StatePlacement | None = None


@dataclass(frozen=True)
class Ordering:
    """The ordered (replay) flow: the file's chunks of ``chunk_lines`` lines are read by several partitions.

    Sites are spread over ``shard_keys`` (:func:`flows.cluster.shard_keys`:
    one per worker): the readers send each shard the raw lines of its sites
    (:class:`RouteLines`), and each shard validates them and runs its
    chunks in file order (:class:`ShardLogic`); rejected lines are put back
    in order by :class:`ChunkOrder`.
    """

    chunk_lines: int
    shard_keys: tuple[str, ...] = ("0",)


@dataclass(frozen=True)
class DetectOutputs:
    """The detection step's results as typed streams (as Bytewax's ``KafkaOpOut(oks, errs)``)."""

    alerts: Stream[Emitted]
    rejects: Stream[Reject]
    stats: Stream[FlowStats]
    store_rows: Stream[StoreItem] | None  # with a store: signals, notifications and evidence, metric buckets, rejected lines


@dataclass(frozen=True)
class DetectSinks:
    """Where the flow's outputs go (``store`` None: no store).

    Items for a :class:`sinks.callback.OwnerSink` (one partition, in the
    cluster's process 0) are keyed for it.
    """

    alerts: Sink[Emitted] | Sink[tuple[str, Emitted]]
    rejects: Sink[Reject] | Sink[tuple[str, Reject]]
    stats: Sink[FlowStats] | Sink[tuple[str, FlowStats]]
    store: Sink[StoreItem] | None = None


def _store_items(alert: Emitted) -> list[StoreItem]:
    alert_row, evidence = alert_rows(alert.record, alert.line)
    return [("alerts", [alert_row]), ("evidence", evidence)]


def detect(chunks: Stream[list[Line]], table: RoutingTable, options: DetectOptions, storing: bool) -> DetectOutputs:
    """Parse and route the chunks of numbered lines, detect per site: the streams of what comes out.

    ``stats`` carries :class:`FlowStats` pieces to add up: in the live flow
    one per Bytewax batch of the detect step; in the ordered flow one per
    chunk and shard that has valid records, and one per batch of a site that
    had late records or notifications. With
    ``storing``, ``store_rows`` carries every valid signal, notification (with
    its evidence), final metric bucket of ``options.metrics`` and rejected
    line, as ``(table, rows)`` items.
    """
    site_metrics = options.metrics if storing else []
    snapshots, lateness, ordering = options.snapshots, options.lateness, options.ordering
    if snapshots is not None and (snapshots.table is not table or snapshots.lateness != lateness or snapshots.metrics != site_metrics):
        raise ValueError("snapshots: the codec was made for other rules, lateness or metrics than this flow's")
    if snapshots is not None and ordering is not None:
        raise ValueError("the ordered flow has no recovery")
    metric_types = {signal_type for metric in site_metrics for signal_type in metric.types}
    store_source = options.store_source if storing else None
    store_parts: list[Stream[StoreItem]] = []
    if ordering is None:
        routed_types_ = routed_types(table, metric_types)
        sent = op.map("route_site_lines", chunks, RouteSiteLines(store_source, SiteKeys(options.placement)))
        work = op.flat_map("work", sent, lambda chunk: chunk.work)
        batches = op.key_rm("site_batches", op.stateful_batch(
            "detect", work,
            lambda resume: DetectLogic(table, lateness, options.link_base, site_metrics, routed_types_, store_source, snapshots, resume),
        ))
        gathered = op.flat_map_batch("gather", batches, gather)
        alerts = op.flat_map("notifications", gathered, lambda batch: batch.alerts)
        rejects = op.merge("rejected_lines", op.flat_map("reader_rejects", sent, lambda chunk: chunk.rejects),
                           op.flat_map("site_rejects", gathered, lambda batch: batch.rejects))
        stats = op.map("gathered_stats", gathered, lambda batch: batch.stats)
        store_parts += [op.flat_map("store_reader", sent, lambda chunk: chunk.store),
                        op.flat_map("store_sites", gathered, lambda batch: batch.store)]
    else:
        keys = ordering.shard_keys
        routed = op.map("route_lines", chunks, RouteLines(len(keys), ordering.chunk_lines, storing))
        shard_lines = op.flat_map("shard_lines", routed, lambda chunk: _shard_items(chunk, keys))
        sharded = op.key_rm("sharded", op.stateful_batch(
            "detect", shard_lines,
            lambda resume: ShardLogic(table, lateness, options.link_base, site_metrics, metric_types, storing),
        ))
        store_parts.append(op.flat_map("store_parsed", sharded, lambda chunk: chunk.store))
        detected = op.flat_map("detected", sharded, lambda chunk: chunk.detected)
        parts = op.merge(
            "chunk_parts",
            op.map("reader_part", routed, lambda chunk: chunk.part),
            op.filter_map("shard_part", sharded, lambda chunk: chunk.part),
        )
        reports = op.key_on("order_key", parts, lambda _: "order")
        ordered = op.key_rm("ordered", op.stateful_batch("order", reports, lambda resume: ChunkOrder(store_source, len(keys) + 1)))
        rejects = op.flat_map("rejected_lines", ordered, lambda chunk: chunk.rejects)
        store_parts.append(op.flat_map("store_rejected", ordered, lambda chunk: chunk.store))
        valid = op.filter_map("valid", sharded, lambda chunk: FlowStats(valid=chunk.valid) if chunk.valid else None)
        alerts = op.flat_map("notifications", detected, lambda batch: batch.alerts)
        stats = op.merge("stats_merge", valid, op.map("detect_stats", detected, lambda batch: batch.stats))
    store_rows = op.merge("store_rows", *store_parts, op.flat_map("alert_rows", alerts, _store_items)) if storing else None
    return DetectOutputs(alerts, rejects, stats, store_rows)


def _shard_items(routed: Routed, keys: tuple[str, ...]) -> list[tuple[str, ShardLines]]:
    """A chunk's lines for every shard, empty or not: a shard runs chunk ``n`` only once it has had every chunk before."""
    chunk = routed.part.chunk
    return [(key, (chunk, lines)) for key, lines in zip(keys, routed.shards, strict=True)]


def build_detect_flow(
    source: Source[list[Line]], table: RoutingTable, sinks: DetectSinks, options: DetectOptions | None = None,
) -> Dataflow:
    """Wire source → :func:`detect` → sinks; with a ``sinks.store``, everything also goes to the store."""
    flow = Dataflow("logystera_detect")
    outputs = detect(op.input("signals", flow, source), table, options or DetectOptions(), sinks.store is not None)
    _output("alerts", outputs.alerts, sinks.alerts)
    _output("rejects", outputs.rejects, sinks.rejects)
    _output("stats", outputs.stats, sinks.stats)
    if sinks.store is not None and outputs.store_rows is not None:
        op.output("store", outputs.store_rows, sinks.store)
    return flow


def _output(step_id: str, stream: Stream[Any], sink: Sink[Any]) -> None:
    if isinstance(sink, OwnerSink):
        stream = op.key_on(f"{step_id}_to_owner", stream, lambda _: "owner")
    op.output(step_id, stream, sink)
