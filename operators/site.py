"""Everything one site's records drive: a :class:`RuleRunner` per rule, and its metrics.

A signal goes to the runners of the rules whose ``signal`` includes its type;
a tick goes to every runner (rules.md "Records of a rule"). Ticks are most of
a quiet site's records, and for most runners a tick only moves the clock and
counts as an evaluation instant. So a tick that is late for no runner is
absorbed at site level (a count and the latest tick ``ts``) and handed to a
runner only when it reaches one of that runner's deadlines, or when the
runner's next record arrives. Every runner still sees exactly the instants and
clock values it would have seen had each tick been processed one by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from heapq import heappop, heappush

from operators.compiled import DEFAULT_ALLOWED_LATENESS_MS
from operators.engine import RuleRunner
from operators.metrics import NO_CLOCK, CompiledMetric, MetricColumns, SiteMetrics
from operators.notification import Notification
from operators.routing import RoutingTable
from schemas.records import Record
from schemas.rules import Rule


class SiteDetector:
    """The detection state of one site; fed its records in order."""

    __slots__ = ("by_type", "clock", "dues", "index", "lateness", "metrics", "runners", "started", "tick_max", "ticks")

    def __init__(
        self,
        table: RoutingTable,
        site: str,
        lateness: int = DEFAULT_ALLOWED_LATENESS_MS,
        metrics: list[CompiledMetric] | None = None,
    ) -> None:
        self.lateness = lateness
        runners = {rule_id: RuleRunner(compiled, site, lateness) for rule_id, compiled in table.rules.items()}
        self.runners = tuple(runners[rule_id] for rule_id in sorted(runners))
        self.index = {runner.rule.id: position for position, runner in enumerate(self.runners)}
        self.by_type = {
            signal_type: tuple(runners[compiled.id] for compiled in rules)
            for signal_type, rules in table.by_type.items()
            if signal_type != "tick"
        }
        self.metrics = SiteMetrics(metrics, site, lateness) if metrics else None
        self.clock: int | None = None  # the largest ts of any record of the site
        self.ticks = 0  # ticks absorbed at site level so far
        self.tick_max = 0  # the largest ts among them
        self.started = False  # every runner has a clock (ticks can be absorbed)
        self.dues: list[tuple[int, int]] = []  # (due clock, runner index): runners' earliest deadlines

    def process(self, record: Record, out: list[Notification], points: MetricColumns | None = None) -> bool:
        """Apply one record; append notifications (and final metric buckets); False if late for any rule."""
        return not self.process_all((record,), out, points)

    def process_all(self, records: Sequence[Record], out: list[Notification], points: MetricColumns | None = None) -> list[int]:
        """Apply records in order, as :meth:`process` would one by one; the lines of those late for any rule.

        The dataflow hands a site its records a chunk at a time: one call per
        chunk keeps the per-record cost of a tick to the few lines below. The
        metrics (their state shares nothing with the runners') are counted in
        the same pass, as :meth:`SiteMetrics.process_all` would: a second pass
        over the records cost a third of the metrics' time (they are mostly
        ticks, and each record read is a cache miss).
        """
        late: list[int] = []
        lateness, dues, by_type = self.lateness, self.dues, self.by_type
        metrics = self.metrics if points is not None else None
        # The metrics' clock (as SiteMetrics.process_all keeps it) as a plain int: an ``int | None`` is a Python int
        # object, made anew at every record that moves it.
        metrics_clock = NO_CLOCK if metrics is None or metrics.clock is None else metrics.clock
        for record in records:
            ts = record.ts
            clock = self.clock
            kind = record.type
            if metrics is not None:  # SiteMetrics.process_all's loop, here: one pass over the records, not two
                counted = metrics.by_type.get(kind)
                if counted is not None:
                    if ts <= metrics_clock - metrics.lateness:
                        metrics.late += 1
                    else:
                        metrics.count(record.data, ts, counted)
                if ts > metrics_clock:
                    metrics_clock = ts
            if kind == "tick":
                if self.started and clock is not None and ts > clock - lateness:
                    # Late for no runner: count it here; runners whose deadline it reaches catch up now.
                    self.ticks += 1
                    if ts > self.tick_max:
                        self.tick_max = ts
                    if ts > clock:
                        self.clock = ts
                    if dues and dues[0][0] <= self.tick_max:
                        self._run_due(out)
                    continue
                targets = self.runners
            else:
                targets = by_type.get(kind, ())
            if clock is None or ts > clock:
                self.clock = ts
            on_time = True
            ticks = self.ticks
            for runner in targets:
                if runner.synced != ticks:  # runner.catch_up, inlined: this loop runs for every routed signal
                    runner.instant += ticks - runner.synced
                    runner.synced = ticks
                    if runner.clock is None or self.tick_max > runner.clock:
                        runner.clock = self.tick_max
                if not runner.process(record, out):
                    on_time = False
                heap = runner.heap  # _register, inlined: this loop runs for every routed signal
                if heap:
                    if heap[0][0] != runner.registered:
                        self._register(runner)
                else:
                    runner.registered = None
            if not self.started:
                self.started = all(runner.clock is not None for runner in self.runners)
            if not on_time:
                late.append(record.line)
        if metrics is not None and points is not None:
            metrics.settle(None if metrics_clock == NO_CLOCK else metrics_clock, points)
        return late

    def flush_metrics(self, points: MetricColumns) -> None:
        """Append every open metric bucket to ``points`` (the input has ended)."""
        if self.metrics is not None:
            self.metrics.flush(points)

    def _run_due(self, out: list[Notification]) -> None:
        """Catch up and evaluate the runners whose earliest deadline the absorbed ticks have reached."""
        dues, runners, ticks, tick_max = self.dues, self.runners, self.ticks, self.tick_max
        while dues and dues[0][0] <= tick_max:
            due, index = heappop(dues)
            runner = runners[index]
            if runner.registered != due:
                continue  # superseded registration
            runner.registered = None
            runner.catch_up(ticks, tick_max)
            runner.evaluate_due(out)
            self._register(runner)

    def _register(self, runner: RuleRunner) -> None:
        heap = runner.heap
        due = heap[0][0] if heap else None  # the runner's earliest deadline
        if due is None:
            runner.registered = None
        elif due != runner.registered:
            runner.registered = due
            heappush(self.dues, (due, self.index[runner.rule.id]))


class Detector:
    """Runs records through per-site detectors in order, without a dataflow.

    Used by ``logystera rules test`` and the engine's unit tests; the dataflow
    holds the same :class:`SiteDetector` objects as keyed state instead.
    """

    def __init__(self, rules: Iterable[Rule], lateness: int = DEFAULT_ALLOWED_LATENESS_MS) -> None:
        self.table = RoutingTable(rules)
        self.lateness = lateness
        self.sites: dict[str, SiteDetector] = {}
        self.late_lines: set[int] = set()

    @property
    def runners(self) -> dict[tuple[str, str], RuleRunner]:
        """Every runner by (site, rule id), for inspection in tests."""
        return {(site, runner.rule.id): runner for site, detector in self.sites.items() for runner in detector.runners}

    def process(self, record: Record) -> list[Notification]:
        """Route one record and return the notifications it caused, in emission order."""
        out: list[Notification] = []
        site = self.sites.get(record.site)
        if site is None:
            site = self.sites[record.site] = SiteDetector(self.table, record.site, self.lateness)
        if not site.process(record, out):
            self.late_lines.add(record.line)
        return out

    def run(self, records: Iterable[Record]) -> list[Notification]:
        """All notifications for a sequence of records, in output (sorted) order."""
        out: list[Notification] = []
        for record in records:
            out.extend(self.process(record))
        out.sort(key=Notification.sort_key)
        return out
