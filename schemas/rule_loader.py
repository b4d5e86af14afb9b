"""Load a rules directory: every rule, metric and channel, every problem reported.

A YAML document in the directory is one rule (a mapping with ``id``), a list
of rules, or a mapping with any of ``rules:``, ``metrics:`` and ``channels:``.
Loading never stops at the first problem: the point is that a rule author
sees all of them at once, each as ``FILE: rule <id>: <field>: <message>``
(``metric <name>`` and ``channel <name>`` likewise).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.conditions import check_conditions, field_specs
from schemas.rules import MAX_METRIC_SERIES, Channel, MetricDefinition, Rule

_CHANNEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(Channel)


class RuleLoadError(Exception):
    """The rule set has problems; ``problems`` holds one formatted line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the rules")
        self.problems = problems


@dataclass
class RuleSet:
    """Everything a rules directory defines, validated."""

    rules: list[Rule] = field(default_factory=list)
    metrics: list[MetricDefinition] = field(default_factory=list)
    channels: list[Any] = field(default_factory=list)

    @property
    def enabled_rules(self) -> list[Rule]:
        """The rules the engine runs (``enabled: false`` ones are checked, not run)."""
        return [rule for rule in self.rules if rule.enabled]


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
}


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind in ("less_than_equal", "less_than", "greater_than", "greater_than_equal"):
        sign = {"less_than_equal": "≤", "less_than": "<", "greater_than": ">", "greater_than_equal": "≥"}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {sign} {bound}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the listed values')}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} {'characters' if kind == 'string_too_long' else 'items'}"
    if kind in ("too_short", "string_too_short"):
        return f"must have at least {ctx.get('min_length')} {'character' if kind == 'string_too_short' else 'item'}(s)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    text = str(error["msg"])
    return text[0].lower() + text[1:]


def _field_path(loc: tuple[Any, ...]) -> str:
    # Union branches appear in pydantic locations (e.g. `str`, `list[...]`, `webhook`); drop them.
    parts = [str(part) for part in loc if not str(part).startswith(("list[", "function-", "literal["))]
    parts = [p for p in parts if p not in ("str", "int", "float", "bool", "SumValue", "webhook", "slack", "teams", "email")]
    return ".".join(parts).replace("for_", "for") or "(document)"


def _validation_problems(error: ValidationError) -> Iterator[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    for item in error.errors(include_url=False):
        loc = item["loc"]
        message = _message(dict(item))
        if not loc and item["type"] == "value_error":
            # Cross-field checks join "field: message" pairs with "; ".
            for part in message.split("; "):
                name, _, text = part.partition(": ")
                pair = (name, text)
                if pair not in seen:
                    seen.add(pair)
                    yield pair
            continue
        pair = (_field_path(tuple(loc)), message)
        if pair not in seen:
            seen.add(pair)
            yield pair


def _label(kind: str, raw: Any, position: int) -> str:
    key = "id" if kind == "rule" else "name"
    if isinstance(raw, dict) and isinstance(raw.get(key), str) and raw.get(key):
        return f"{kind} {raw[key]}"
    return f"{kind} #{position}"


class _Loader:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.ruleset = RuleSet()
        self.rule_files: dict[str, str] = {}
        self.names: dict[str, set[str]] = {"metric": set(), "channel": set()}
        self.rule_sources: list[str] = []

    def report(self, file: str, label: str, field_name: str, message: str) -> None:
        self.problems.append(f"{file}: {label}: {field_name}: {message}")

    def load_file(self, path: Path, shown: str) -> None:
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            where = ""
            mark = getattr(error, "problem_mark", None)
            if mark is not None:
                where = f" at line {mark.line + 1}, column {mark.column + 1}"
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            self.problems.append(f"{shown}: (file): yaml: {problem}{where}")
            return
        position = 0
        for document in documents:
            if document is None:
                continue
            if isinstance(document, list):
                for raw in document:
                    position += 1
                    self.load_rule(raw, shown, position)
            elif isinstance(document, dict) and "id" not in document and document.keys() & {"rules", "metrics", "channels"}:
                unknown = sorted(set(document) - {"rules", "metrics", "channels"})
                for name in unknown:
                    self.problems.append(f"{shown}: (file): {name}: unknown top-level key")
                for kind, loader in (("rules", self.load_rule), ("metrics", self.load_metric), ("channels", self.load_channel)):
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
                self.problems.append(f"{shown}: (file): document: must be a rule, a list of rules, or a mapping of rules/metrics/channels")

    def _validate(self, model: type[BaseModel] | TypeAdapter[Any], raw: Any, file: str, label: str) -> Any:
        if not isinstance(raw, dict):
            self.report(file, label, "(document)", "must be a mapping")
            return None
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_python(raw)
            return model.model_validate(raw)
        except ValidationError as error:
            for name, message in _validation_problems(error):
                self.report(file, label, name, message)
            return None

    def load_rule(self, raw: Any, file: str, position: int) -> None:
        label = _label("rule", raw, position)
        rule = self._validate(Rule, raw, file, label)
        if rule is None:
            return
        before = len(self.problems)
        types = rule.signal_types
        for name, message in rule.kind_problems():
            self.report(file, label, name, message)
        if len(set(types)) != len(types):
            self.report(file, label, "signal", "lists a type twice")
        for name, message in check_conditions(rule.where, types, "where"):
            self.report(file, label, name, message)
        if rule.kind == "ratio" and rule.ratio is not None:
            for name, message in check_conditions(rule.ratio.of, types, "ratio.of"):
                self.report(file, label, name, message)
        if rule.kind == "distinct" and rule.distinct is not None:
            specs = field_specs(rule.distinct.field, types)
            if isinstance(specs, str):
                self.report(file, label, "distinct.field", specs)
        if len(set(rule.group_by)) != len(rule.group_by):
            self.report(file, label, "group_by", "names a field twice")
        for index, name in enumerate(rule.group_by):
            specs = field_specs(name, types)
            if isinstance(specs, str):
                self.report(file, label, f"group_by.{index}", f"{name}: {specs}")
        if rule.id in self.rule_files:
            self.report(file, label, "id", f"duplicate rule id (first defined in {self.rule_files[rule.id]})")
        else:
            self.rule_files[rule.id] = file
        if len(self.problems) == before:
            self.ruleset.rules.append(rule)
            self.rule_sources.append(file)

    def load_metric(self, raw: Any, file: str, position: int) -> None:
        label = _label("metric", raw, position)
        metric = self._validate(MetricDefinition, raw, file, label)
        if metric is None:
            return
        before = len(self.problems)
        types = metric.signal_types
        for name, message in check_conditions(metric.where, types, "where"):
            self.report(file, label, name, message)
        for name, values in metric.labels.items():
            specs = field_specs(name, types)
            if isinstance(specs, str):
                self.report(file, label, f"labels.{name}", specs)
                continue
            for value in values:
                if not any(spec.can_equal(value) for spec in specs):
                    self.report(file, label, f"labels.{name}", f"{value!r} can never occur: the field is {specs[0].describe()}")
            if len(set(map(repr, values))) != len(values):
                self.report(file, label, f"labels.{name}", "declares a value twice")
        if not isinstance(metric.value, str):
            specs = field_specs(metric.value.sum, types)
            if isinstance(specs, str):
                self.report(file, label, "value.sum", specs)
            elif not all(spec.kind == "int" for spec in specs):
                self.report(file, label, "value.sum", "must be a numeric field")
        if metric.series_bound > MAX_METRIC_SERIES:
            self.report(
                file, label, "labels",
                f"up to {metric.series_bound} series (declared values + other + none, multiplied); the bound is {MAX_METRIC_SERIES}",
            )
        if metric.name in self.names["metric"]:
            self.report(file, label, "name", "duplicate metric name")
        self.names["metric"].add(metric.name)
        if len(self.problems) == before:
            self.ruleset.metrics.append(metric)

    def load_channel(self, raw: Any, file: str, position: int) -> None:
        label = _label("channel", raw, position)
        channel = self._validate(_CHANNEL_ADAPTER, raw, file, label)
        if channel is None:
            return
        if channel.name in self.names["channel"]:
            self.report(file, label, "name", "duplicate channel name")
            return
        self.names["channel"].add(channel.name)
        self.ruleset.channels.append(channel)

    def check_references(self) -> None:
        channels = {channel.name for channel in self.ruleset.channels}
        kept = []
        for rule, file in zip(self.ruleset.rules, self.rule_sources, strict=True):
            unknown = [name for name in rule.deliver if name not in channels]
            for name in unknown:
                self.report(file, f"rule {rule.id}", "deliver", f"unknown channel {name!r}")
            if not unknown:
                kept.append(rule)
        self.ruleset.rules = kept


def rule_files(directory: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` file anywhere under ``directory``, in a stable order."""
    found = [path for pattern in ("*.yaml", "*.yml") for path in directory.rglob(pattern) if path.is_file()]
    return sorted(found)


def load_rules(directory: str | Path) -> RuleSet:
    """Load and cross-check a rules directory (or a single file); raise :class:`RuleLoadError` on any problem."""
    root = Path(directory)
    if not root.exists():
        raise RuleLoadError([f"{root}: (file): path: no such file or directory"])
    files = [root] if root.is_file() else rule_files(root)
    loader = _Loader()
    for path in files:
        loader.load_file(path, str(path))
    loader.check_references()
    if loader.problems:
        raise RuleLoadError(loader.problems)
    return loader.ruleset
