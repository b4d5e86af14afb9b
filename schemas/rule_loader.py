"""Load a rules directory: every rule, metric, channel, mute time and inhibit rule, every problem reported.

A YAML document in the directory is one rule (a mapping with ``id``), a list
of rules, or a mapping with any of ``rules:``, ``metrics:``, ``channels:``,
``mute_times:`` and ``inhibit:`` (the last two are delivery's: docs/silences.md).
Loading never stops at the first problem: the point is that a rule author
sees all of them at once, each as ``FILE: rule <id>: <field>: <message>``
(``metric <name>``, ``channel <name>``, ``mute time <name>`` and ``inhibit rule <name>`` likewise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.conditions import check_conditions, field_specs
from schemas.durations import parse_duration
from schemas.errors import Problems
from schemas.excerpt import clip, excerpt
from schemas.matchers import check_field, parse_matcher
from schemas.problems import StrictYamlLoader, validation_problems
from schemas.rules import (
    KIND_PARAMS,
    MAX_METRIC_SERIES,
    Channel,
    InhibitRule,
    MetricDefinition,
    MuteTime,
    Rule,
    kind_block_problems,
)

_CHANNEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(Channel)


MAX_FILE_BYTES = 1 << 20
"""A rule file holds at most 1 MiB: a few hundred rules, and a bound on the time PyYAML takes to read it."""
MAX_FILES = 1000
"""Rule files a rules directory may hold."""
MAX_DEFINITIONS = 10_000
"""Rules, metrics and channels a rules directory may define, together."""


_SECTIONS = ("rules", "metrics", "channels", "mute_times", "inhibit")
"""The top-level keys of a mapping document."""


class _TooMany(Exception):
    """The rules directory passed :data:`MAX_DEFINITIONS`: loading stops (the problem line is already recorded)."""


class RuleLoadError(Problems):
    """The rule set has problems; ``problems`` holds one formatted line each (all printed, exit 2)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems, f"{len(problems)} problem(s) in the rules")


@dataclass
class RuleSet:
    """Everything a rules directory defines, validated."""

    rules: list[Rule] = field(default_factory=list)
    metrics: list[MetricDefinition] = field(default_factory=list)
    channels: list[Any] = field(default_factory=list)
    mute_times: list[MuteTime] = field(default_factory=list)
    inhibit: list[InhibitRule] = field(default_factory=list)

    @property
    def enabled_rules(self) -> list[Rule]:
        """The rules the engine runs (``enabled: false`` ones are checked, not run)."""
        return [rule for rule in self.rules if rule.enabled]


def _bundles(value: Any) -> bool:
    """Whether a raw ``bundle`` value asks for a real (non-zero) bundle; bad spellings are reported elsewhere."""
    try:
        return value is not None and parse_duration(value) > 0
    except ValueError:
        return False


def _label(kind: str, raw: Any, position: int) -> str:
    key = "id" if kind == "rule" else "name"
    if isinstance(raw, dict) and isinstance(raw.get(key), str) and raw.get(key):
        return f"{kind} {clip(raw[key])}"
    return f"{kind} #{position}"


def _signal_types(raw: dict[str, Any], failed: _Failed) -> tuple[str, ...] | None:
    """The raw ``signal`` as a tuple of types, when it validated (else None: skip the field checks)."""
    if failed("signal"):
        return None
    signal = raw.get("signal")
    return (signal,) if isinstance(signal, str) else tuple(signal or ())


class _Failed:
    """The field paths the model validation already reported, so context checks do not repeat them."""

    def __init__(self, paths: set[str]) -> None:
        self.paths = paths

    def __call__(self, path: str) -> bool:
        return any(p == path or p.startswith(path + ".") or path.startswith(p + ".") for p in self.paths)


@dataclass
class _Delivery:
    """A rule's ``deliver`` list, checked against every declared channel once all files are read."""

    file: str
    label: str
    names: list[str]
    rule: Rule | None


class _Loader:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.ruleset = RuleSet()
        self.rule_files: dict[str, str] = {}
        self.names: dict[str, set[str]] = {"metric": set(), "channel": set(), "mute time": set(), "inhibit rule": set()}
        self.deliveries: list[_Delivery] = []
        self.mutes: list[tuple[str, str, list[str]]] = []  # (file, label, names) of every `mute:` list, checked at the end
        self.definitions = 0

    def count(self, file: str) -> None:
        """One more rule, metric or channel; past :data:`MAX_DEFINITIONS` the load stops with one line."""
        self.definitions += 1
        if self.definitions > MAX_DEFINITIONS:
            self.problems.append(
                f"{file}: (file): definitions: more than {MAX_DEFINITIONS} rules, metrics and channels; "
                f"that is the limit for a rules directory",
            )
            raise _TooMany

    def report(self, file: str, label: str, field_name: str, message: str) -> None:
        self.problems.append(f"{file}: {label}: {field_name}: {message}")

    def load_file(self, path: Path, shown: str) -> None:
        try:
            with path.open("rb") as stream:
                data = stream.read(MAX_FILE_BYTES + 1)
        except OSError as error:
            self.problems.append(f"{shown}: (file): read: {error.strerror or error}")
            return
        if len(data) > MAX_FILE_BYTES:
            self.problems.append(f"{shown}: (file): size: larger than 1 MiB ({MAX_FILE_BYTES} bytes), the limit for a rule file")
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            self.problems.append(f"{shown}: (file): encoding: not UTF-8 ({error.reason} at byte {error.start})")
            return
        try:
            documents = list(yaml.load_all(text, Loader=StrictYamlLoader))
        except yaml.YAMLError as error:
            where = ""
            mark = getattr(error, "problem_mark", None)
            if mark is not None:
                where = f" at line {mark.line + 1}, column {mark.column + 1}"
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            self.problems.append(f"{shown}: (file): yaml: {clip(problem, 200)}{where}")
            return
        position = 0
        for document in documents:
            if document is None:
                continue
            if isinstance(document, list):
                for raw in document:
                    position += 1
                    self.load_rule(raw, shown, position)
            elif isinstance(document, dict) and "id" not in document and document.keys() & set(_SECTIONS):
                unknown = sorted(map(str, set(document) - set(_SECTIONS)))
                for name in unknown:
                    self.problems.append(f"{shown}: (file): {clip(name)}: unknown top-level key")
                loaders = (("rules", self.load_rule), ("metrics", self.load_metric), ("channels", self.load_channel),
                           ("mute_times", self.load_mute_time), ("inhibit", self.load_inhibit))
                for kind, loader in loaders:
                    entries = document.get(kind)
                    if entries is None:
                        continue
                    if not isinstance(entries, list):
                        self.problems.append(f"{shown}: (file): {kind}: must be a list")
                        continue
                    for index, raw in enumerate(entries, start=1):
                        if kind == "rules":
                            position += 1
                            index = position
                        loader(raw, shown, index)
            elif isinstance(document, dict):
                position += 1
                self.load_rule(document, shown, position)
            else:
                self.problems.append(f"{shown}: (file): document: must be a rule, a list of rules, "
                                     f"or a mapping of {'/'.join(_SECTIONS)}")

    def _validate(self, model: type[BaseModel] | TypeAdapter[Any], raw: Any, file: str, label: str) -> tuple[Any, _Failed]:
        """The validated model (or None) and the field paths whose problems were reported."""
        failed: set[str] = set()
        if not isinstance(raw, dict):
            self.report(file, label, "(document)", "must be a mapping")
            return None, _Failed({"(document)"})
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_python(raw), _Failed(failed)
            return model.model_validate(raw), _Failed(failed)
        except ValidationError as error:
            for name, message in validation_problems(error):
                failed.add(name)
                self.report(file, label, name, message)
            return None, _Failed(failed)

    def load_rule(self, raw: Any, file: str, position: int) -> None:
        """Validate one rule, then check it in context (payload fields, ids, channels).

        The context checks read the raw mapping, so they run even when the
        model rejected some other field: every problem is reported at once.
        """
        self.count(file)
        label = _label("rule", raw, position)
        rule, failed = self._validate(Rule, raw, file, label)
        if not isinstance(raw, dict):
            return
        before = len(self.problems)
        kind = raw.get("kind")
        if not failed("kind") and isinstance(kind, str):
            present = {name for name in KIND_PARAMS if raw.get(name) is not None}
            for name, message in kind_block_problems(kind, present, _bundles(raw.get("bundle"))):
                self.report(file, label, name, message)
        types = _signal_types(raw, failed)
        if types is not None:
            self.check_fields(raw, kind, types, failed, file, label)
        rule_id = raw.get("id")
        if not failed("id") and isinstance(rule_id, str):
            if rule_id in self.rule_files:
                self.report(file, label, "id", f"duplicate rule id (first defined in {self.rule_files[rule_id]})")
            else:
                self.rule_files[rule_id] = file
        if not failed("mute"):
            self.mutes.append((file, label, list(raw.get("mute") or [])))
        valid = rule if rule is not None and len(self.problems) == before else None
        if not failed("deliver"):
            # A rule whose own checks passed is kept once its channels are known to exist.
            self.deliveries.append(_Delivery(file, label, list(raw.get("deliver") or []), valid))

    def check_fields(self, raw: dict[str, Any], kind: Any, types: tuple[str, ...], failed: _Failed, file: str, label: str) -> None:
        """The checks that need the payload schemas of the rule's signal types."""
        if len(set(types)) != len(types):
            self.report(file, label, "signal", "lists a type twice")
        if not failed("where"):
            for name, message in check_conditions(raw.get("where"), types, "where"):
                self.report(file, label, name, message)
        ratio = raw.get("ratio")
        if kind == "ratio" and isinstance(ratio, dict) and not failed("ratio.of"):
            for name, message in check_conditions(ratio.get("of"), types, "ratio.of"):
                self.report(file, label, name, message)
        distinct = raw.get("distinct")
        if kind == "distinct" and isinstance(distinct, dict) and not failed("distinct.field") and isinstance(distinct.get("field"), str):
            specs = field_specs(distinct["field"], types)
            if isinstance(specs, str):
                self.report(file, label, "distinct.field", specs)
        group_by = raw.get("group_by") or []
        if not failed("group_by"):
            if len(set(group_by)) != len(group_by):
                self.report(file, label, "group_by", "names a field twice")
            for index, name in enumerate(group_by):
                specs = field_specs(name, types)
                if isinstance(specs, str):
                    self.report(file, label, f"group_by.{index}", f"{clip(name)}: {specs}")

    def load_metric(self, raw: Any, file: str, position: int) -> None:
        self.count(file)
        label = _label("metric", raw, position)
        metric, failed = self._validate(MetricDefinition, raw, file, label)
        if not isinstance(raw, dict):
            return
        before = len(self.problems)
        types = _signal_types(raw, failed)
        labels = raw.get("labels") or {}
        if types is not None:
            if not failed("where"):
                for name, message in check_conditions(raw.get("where"), types, "where"):
                    self.report(file, label, name, message)
            if not failed("labels"):
                for name, values in labels.items():
                    specs = field_specs(name, types)
                    if isinstance(specs, str):
                        self.report(file, label, f"labels.{clip(name)}", specs)
                        continue
                    for value in values:
                        if not any(spec.can_equal(value) for spec in specs):
                            reason = f"{excerpt(value)} can never occur: the field is {specs[0].describe()}"
                            self.report(file, label, f"labels.{clip(name)}", reason)
                    # Values compare as conditions do: 200 and 200.0 are one value, true and 1 are two.
                    if len({(type(value) is bool, value) for value in values}) != len(values):
                        self.report(file, label, f"labels.{clip(name)}", "declares a value twice")
            value = raw.get("value")
            if isinstance(value, dict) and not failed("value"):
                specs = field_specs(value["sum"], types)
                if isinstance(specs, str):
                    self.report(file, label, "value.sum", specs)
                elif not all(spec.kind == "int" for spec in specs):
                    self.report(file, label, "value.sum", "must be a numeric field")
        if not failed("labels"):
            bound = 1
            for values in labels.values():
                bound *= len(values) + 2
            if bound > MAX_METRIC_SERIES:
                self.report(
                    file, label, "labels",
                    f"up to {bound} series (declared values + other + none, multiplied); the bound is {MAX_METRIC_SERIES}",
                )
        metric_name = raw.get("name")
        if not failed("name") and isinstance(metric_name, str):
            if metric_name in self.names["metric"]:
                self.report(file, label, "name", "duplicate metric name")
            self.names["metric"].add(metric_name)
        if metric is not None and len(self.problems) == before:
            self.ruleset.metrics.append(metric)

    def load_channel(self, raw: Any, file: str, position: int) -> None:
        self.count(file)
        label = _label("channel", raw, position)
        channel, failed = self._validate(_CHANNEL_ADAPTER, raw, file, label)
        if not isinstance(raw, dict):
            return
        if not failed("mute"):
            self.mutes.append((file, label, list(raw.get("mute") or [])))
        if not self.unique("channel", raw, failed, file, label):
            return
        if channel is not None:
            self.ruleset.channels.append(channel)

    def unique(self, kind: str, raw: dict[str, Any], failed: _Failed, file: str, label: str) -> bool:
        """Records the ``name`` of a channel, mute time or inhibit rule; False (and a problem) if it is taken."""
        name = raw.get("name")
        if not failed("name") and isinstance(name, str):
            if name in self.names[kind]:
                self.report(file, label, "name", f"duplicate {kind} name")
                return False
            self.names[kind].add(name)
        return True

    def load_mute_time(self, raw: Any, file: str, position: int) -> None:
        """A maintenance window: its shape (weekdays, times, days, months, zone) and a unique name."""
        self.count(file)
        label = _label("mute time", raw, position)
        mute_time, failed = self._validate(MuteTime, raw, file, label)
        if isinstance(raw, dict) and self.unique("mute time", raw, failed, file, label) and mute_time is not None:
            self.ruleset.mute_times.append(mute_time)

    def load_inhibit(self, raw: Any, file: str, position: int) -> None:
        """An inhibit rule: its matchers parse (fields known, regexes compile), its ``equal`` fields exist."""
        self.count(file)
        label = _label("inhibit rule", raw, position)
        inhibit, failed = self._validate(InhibitRule, raw, file, label)
        if not isinstance(raw, dict):
            return
        before = len(self.problems)
        for side in ("source", "target"):
            if failed(side):
                continue
            for index, text in enumerate(raw.get(side) or []):
                try:
                    parse_matcher(text)
                except ValueError as error:
                    self.report(file, label, f"{side}.{index}", str(error))
        if not failed("equal"):
            for index, name in enumerate(raw.get("equal") or []):
                try:
                    check_field(name)
                except ValueError as error:
                    self.report(file, label, f"equal.{index}", str(error))
        if self.unique("inhibit rule", raw, failed, file, label) and inhibit is not None and len(self.problems) == before:
            self.ruleset.inhibit.append(inhibit)

    def check_references(self) -> None:
        """Every ``deliver`` name must be a declared channel, every ``mute`` name a declared mute time (declared anywhere)."""
        for file, label, names in self.mutes:
            for name in names:
                if name not in self.names["mute time"]:
                    self.report(file, label, "mute", f"unknown mute time {excerpt(name)}")
        for delivery in self.deliveries:
            unknown = [name for name in delivery.names if name not in self.names["channel"]]
            for name in unknown:
                self.report(delivery.file, delivery.label, "deliver", f"unknown channel {excerpt(name)}")
            if delivery.rule is not None and not unknown:
                self.ruleset.rules.append(delivery.rule)


def rule_files(directory: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` file anywhere under ``directory``, in a stable order; at most one past :data:`MAX_FILES`."""
    found: list[Path] = []
    for pattern in ("*.yaml", "*.yml"):
        for path in directory.rglob(pattern):
            if path.is_file():
                found.append(path)
                if len(found) > MAX_FILES:
                    return found
    return sorted(found)


def load_rules(directory: str | Path) -> RuleSet:
    """Load and cross-check a rules directory (or a single file); raise :class:`RuleLoadError` on any problem."""
    root = Path(directory)
    if not root.exists():
        raise RuleLoadError([f"{root}: (file): path: no such file or directory"])
    files = [root] if root.is_file() else rule_files(root)
    if len(files) > MAX_FILES:
        raise RuleLoadError([f"{root}: (directory): files: more than {MAX_FILES} rule files (*.yaml, *.yml); that is the limit"])
    loader = _Loader()
    try:
        for path in files:
            loader.load_file(path, str(path))
        loader.check_references()
    except _TooMany:
        pass  # the problem is recorded; checking references against a partial load would only add noise
    if loader.problems:
        raise RuleLoadError(loader.problems)
    return loader.ruleset
