"""A site's detection state as bytes, and back: what Bytewax recovery stores per site.

A :class:`SiteDetector` is plain Python objects — runners, fingerprints,
windows, rings — except for what it shares with every other site: the
:class:`CompiledRule` objects (predicates are closures, so they cannot be
pickled at all) and the :class:`CompiledMetric` objects. The pickler writes
each shared object as a stable reference, ``(kind, name, fingerprint)`` (a
persistent id, in pickle's terms), and the unpickler resolves it against the
rules of the running flow. The
fingerprint is a hash of the definition minus its presentation fields
(:data:`PRESENTATION_FIELDS`: title, description, severity, subsystem,
deliver, mute), so a snapshot is never applied to a rule that decides differently:

- a rule whose definition changed, or that was removed, resolves to a
  :class:`Stale` marker; its runner is dropped and the rule (if still there)
  starts fresh at the restore point, with one warning per rule and process;
- a rule that is new since the snapshot starts fresh;
- the same goes for metrics: the open buckets of a changed or removed metric
  are dropped;
- a snapshot that cannot be read at all (another format, a class that
  changed shape) starts the whole site fresh, with a warning.

Everything else of the site is restored exactly, so feeding the rest of the
stream to a restored detector gives the notifications an uninterrupted one
would have given (``tests/flows/test_live_snapshot.py``).

The engine's objects (runners, fingerprints, windows) are written as their
class and their attribute values in name order (:data:`ENGINE_CLASSES`),
whether the engine runs compiled (mypyc, see :mod:`operators`) or not: the
bytes are the same, so a snapshot written by one is read by the other.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable, Sequence
from heapq import heapify
from typing import Any, NamedTuple

from operators.engine import RuleRunner
from operators.fingerprints import (
    AbsenceFingerprint,
    DistinctFingerprint,
    MatchFingerprint,
    RatioFingerprint,
    ScheduledAbsenceFingerprint,
    ShiftFingerprint,
    ThresholdFingerprint,
)
from operators.metrics import CompiledMetric, SiteMetrics
from operators.routing import RoutingTable
from operators.site import SiteDetector
from operators.windows import EvidenceRing, TimeCounts, ValueWindow
from schemas.errors import Failure
from schemas.rules import MetricDefinition, Rule

FORMAT = 3  # 2: fingerprints carry ``deadline``; 3: runners as (rule, values), engine objects as (class, values)
"""Bumped whenever the layout below changes; a snapshot of another format starts its site fresh (format 2 is still read)."""

PRESENTATION_FIELDS = frozenset({"title", "description", "severity", "subsystem", "deliver", "mute"})
"""Rule fields read only when a notification is written out: changing them keeps the rule's state."""

_SITE_FIELDS = {"by_type", "clock", "dues", "index", "lateness", "metrics", "runners", "started", "tick_max", "ticks"}
_METRICS_FIELDS = {
    "by_type", "clock", "late", "lateness", "metrics", "next_end", "open", "site", "stride", "sums", "width",
}
"""Every slot of SiteDetector / SiteMetrics is either snapshotted or rebuilt below; a new slot must be added here."""


def fields_of(cls: type) -> tuple[str, ...]:
    """The attributes an instance of ``cls`` holds, in name order: its (and its bases') ``__slots__``, or mypyc's list.

    A class compiled by mypyc has no ``__slots__`` at run time; it lists its
    attributes, inherited ones included, in ``__mypyc_attrs__``.
    """
    names = getattr(cls, "__mypyc_attrs__", None)
    if names is None:
        names = [name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())]
    return tuple(sorted(set(names)))


RUNNER_FIELDS = tuple(name for name in fields_of(RuleRunner) if name != "rule")
"""A runner's state in a snapshot, beside its rule (a reference that may resolve to :class:`Stale`)."""

ENGINE_CLASSES: dict[type[Any], tuple[str, ...]] = {
    cls: fields_of(cls)
    for cls in (ThresholdFingerprint, RatioFingerprint, DistinctFingerprint, AbsenceFingerprint,
                ScheduledAbsenceFingerprint, ShiftFingerprint, MatchFingerprint, TimeCounts, ValueWindow, EvidenceRing)
}
"""The classes of the objects a site's runners hold, and their attributes (a new one must be added here).

Each is rebuilt from a blank instance (made without arguments) whose attributes are then all set.
"""


def _engine_object(cls: Any, values: tuple[Any, ...]) -> Any:
    """An engine object from its class and attribute values (name order), without running ``__init__``."""
    cls = getattr(cls, "target", cls)  # the unpickler hands out a _Legacy stand-in for every engine class
    names = ENGINE_CLASSES[cls]
    if len(values) != len(names):
        raise ValueError(f"{cls.__name__} had {len(values)} attributes, it has {len(names)} now")
    made = cls()
    for name, value in zip(names, values, strict=True):
        setattr(made, name, value)
    return made


class _Legacy:
    """An engine object of a format-2 snapshot, read as plain attributes, then made a real one by :func:`_real`.

    Format 2 pickled the engine's objects as they are: a class and its slots,
    which a class compiled by mypyc cannot take back (its ``__new__`` runs
    ``__init__``, its ``__setstate__`` wants another shape). Reading them into
    stand-ins first restores them whichever engine runs.
    """

    target: type[Any]


_LEGACY_OF: tuple[type[Any], ...] = (RuleRunner, *ENGINE_CLASSES)
_LEGACY: dict[type[Any], type[_Legacy]] = {cls: type(f"Legacy{cls.__name__}", (_Legacy,), {"target": cls}) for cls in _LEGACY_OF}


def _real(value: Any) -> Any:
    """``value`` with every :class:`_Legacy` stand-in in it (in dicts: a runner's fingerprints) made a real engine object."""
    if isinstance(value, _Legacy):
        return _engine_object(value.target, tuple(_real(getattr(value, name)) for name in ENGINE_CLASSES[value.target]))
    if isinstance(value, dict):
        return {key: _real(item) for key, item in value.items()}
    return value


def rule_fingerprint(rule: Rule) -> str:
    """A hash of everything in the rule that can change a decision (all but the presentation fields)."""
    text = rule.model_dump_json(by_alias=True, exclude=set(PRESENTATION_FIELDS))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def metric_fingerprint(metric: MetricDefinition) -> str:
    """A hash of the whole metric definition."""
    return hashlib.sha256(metric.model_dump_json(by_alias=True).encode("utf-8")).hexdigest()[:16]


class Stale(NamedTuple):
    """What a persistent id resolves to when the running flow no longer has that exact rule or metric."""

    kind: str
    name: str


class SnapshotError(Failure):
    """The running code cannot snapshot a detector (a shape this module does not know)."""


class SnapshotCodec:
    """Snapshots of the :class:`SiteDetector` objects of one flow (its rules, metrics, lateness).

    ``warn`` receives one line per changed or removed rule or metric (once per
    process, not once per site) and per unreadable snapshot.
    """

    def __init__(
        self,
        table: RoutingTable,
        lateness: int,
        metrics: Sequence[tuple[MetricDefinition, CompiledMetric]] = (),
        warn: Callable[[str], None] = print,
    ) -> None:
        unknown = (set(fields_of(SiteDetector)) ^ _SITE_FIELDS) | (set(fields_of(SiteMetrics)) ^ _METRICS_FIELDS)
        if unknown:
            raise SnapshotError(f"operators.snapshot does not know the detector fields {sorted(unknown)}")
        self.table = table
        self.lateness = lateness
        self.metrics = [compiled for _, compiled in metrics]
        self._warn = warn
        self._warned: set[str] = set()
        # Persistent ids by object identity: every shared object a detector can reference, and nothing else.
        self._ids: dict[int, tuple[str, str, str]] = {id(table): ("table", "", "")}
        self._resolve: dict[tuple[str, str, str], Any] = {("table", "", ""): table}
        for rule_id, rule in table.rules.items():
            fingerprint = rule_fingerprint(rule.rule)
            self._share(rule, ("rule", rule_id, fingerprint))
            self._share(rule.rule, ("rule-definition", rule_id, fingerprint))
        for definition, metric in metrics:
            self._share(metric, ("metric", metric.name, metric_fingerprint(definition)))

    def _share(self, shared: Any, pid: tuple[str, str, str]) -> None:
        self._ids[id(shared)] = pid
        self._resolve[pid] = shared

    # -- dump -------------------------------------------------------------------------------------
    def dump(self, detector: SiteDetector) -> bytes:
        """The site's state as bytes; shared objects are written as ``(kind, name, fingerprint)``."""
        metrics = detector.metrics
        state = (
            FORMAT,
            _site_of(detector),
            (detector.clock, detector.ticks, detector.tick_max, detector.dues),
            tuple((runner.rule, tuple(getattr(runner, name) for name in RUNNER_FIELDS)) for runner in detector.runners),
            None if metrics is None else (metrics.metrics, metrics.clock, metrics.late, metrics.named()),
        )
        buffer = io.BytesIO()
        _Pickler(buffer, self._ids).dump(state)
        return buffer.getvalue()

    # -- load -------------------------------------------------------------------------------------
    def load(self, data: bytes) -> SiteDetector | None:
        """The detector a snapshot describes, rebuilt for the running rules; None if it cannot be read."""
        try:
            state = _Unpickler(data, self._resolved).load()
            if state[0] not in (2, FORMAT):
                raise ValueError(f"snapshot format {state[0]}, this version reads 2 and {FORMAT}")
            _, snapshot_site, site_fields, runners, metrics_state = state
            if state[0] == 2:  # runners pickled as they were: their rule, and their values with real engine objects
                runners = tuple((runner.rule, tuple(_real(getattr(runner, name)) for name in RUNNER_FIELDS)) for runner in runners)
            detector = self._rebuild(snapshot_site, site_fields, runners, metrics_state)
        except Exception as error:  # any shape we cannot read: start fresh, loudly
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            self._once(f"unreadable:{reason}", f"recovery: a site's snapshot cannot be read ({reason}): that site starts fresh")
            return None
        return detector

    def _resolved(self, kind: str, name: str, fingerprint: str) -> Any:
        found = self._resolve.get((kind, name, fingerprint))
        return Stale(kind, name) if found is None else found

    def _rebuild(self, site: str, site_fields: tuple[Any, ...], runners: tuple[tuple[Any, tuple[Any, ...]], ...],
                 metrics_state: Any) -> SiteDetector:
        fresh = SiteDetector(self.table, site, self.lateness, self.metrics or None)
        fresh.clock, fresh.ticks, fresh.tick_max, dues = site_fields
        kept: dict[str, tuple[Any, ...]] = {}
        for rule, values in runners:
            if isinstance(rule, Stale):
                self._once(f"rule:{rule.name}", f"recovery: rule {rule.name!r} changed or was removed since the "
                           "snapshot: its state is not restored (a changed rule starts fresh)")
            elif len(values) != len(RUNNER_FIELDS):
                raise ValueError(f"a runner had {len(values)} fields, it has {len(RUNNER_FIELDS)} now")
            else:
                kept[rule.id] = values
        for runner in fresh.runners:
            state = kept.get(runner.rule.id)
            if state is None:
                runner.synced = fresh.ticks  # a new or changed rule starts at the restore point, not at the site's first tick
                continue
            for name, value in zip(RUNNER_FIELDS, state, strict=True):  # the site's indexes point at the fresh runner
                setattr(runner, name, value)
            runner.lateness = self.lateness
        old_ids = [rule.name if isinstance(rule, Stale) else rule.id for rule, _ in runners]
        fresh.dues = [(due, fresh.index[old_ids[index]]) for due, index in dues if old_ids[index] in kept]
        heapify(fresh.dues)
        fresh.started = all(runner.clock is not None for runner in fresh.runners)
        if fresh.metrics is not None and metrics_state is not None:
            self._restore_metrics(fresh.metrics, *metrics_state)
        return fresh

    def _restore_metrics(self, metrics: SiteMetrics, used: tuple[Any, ...], clock: int | None, late: int, open_: dict[Any, Any]) -> None:
        current = {id(metric) for metric in self.metrics}
        unchanged = set()
        for metric in used:
            if id(metric) in current:
                unchanged.add(metric.name)
            else:
                self._once(f"metric:{metric.name}", f"recovery: metric {metric.name!r} changed or was removed since the "
                           "snapshot: its open buckets are dropped")
        metrics.clock = clock
        metrics.late = late
        metrics.restore({key: bucket for key, bucket in open_.items() if key[1] in unchanged})

    def _once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(message)


def shared(kind: str, name: str, fingerprint: str) -> Any:
    """Stands for a shared object in a snapshot; only :meth:`SnapshotCodec.load` can resolve it."""
    raise SnapshotError(f"{kind} {name!r} is resolved by SnapshotCodec.load, not by plain unpickling")


class _Pickler(pickle.Pickler):
    """Writes every shared object as ``shared(kind, name, fingerprint)``, every engine object as its class and values.

    This is what ``persistent_id`` is for, but pickle asks ``persistent_id``
    about every object (each int, string and tuple), and ``reducer_override``
    only about instances of non-builtin classes: measured 250 → 140 µs per
    site on the bench corpus.
    """

    def __init__(self, file: io.BytesIO, ids: dict[int, tuple[str, str, str]]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._ids = ids

    def reducer_override(self, obj: Any) -> Any:
        pid = self._ids.get(id(obj))
        if pid is not None:
            return shared, pid
        names = ENGINE_CLASSES.get(type(obj))
        if names is not None:
            return _engine_object, (type(obj), tuple(getattr(obj, name) for name in names))
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    """Resolves ``shared(...)`` against the running flow's rules and metrics (the inverse of :class:`_Pickler`)."""

    def __init__(self, data: bytes, resolve: Callable[[str, str, str], Any]) -> None:
        super().__init__(io.BytesIO(data))  # only our own recovery store, written by SnapshotCodec.dump
        self._resolve = resolve

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name == "shared":
            return self._resolve
        found = super().find_class(module, name)
        return _LEGACY.get(found, found)


def _site_of(detector: SiteDetector) -> str:
    """The site a detector is for (it keeps the name in its runners and metrics, not in a field of its own)."""
    if detector.runners:
        return detector.runners[0].site
    return detector.metrics.site if detector.metrics is not None else ""
