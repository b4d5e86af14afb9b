"""``logystera rules test``: unit tests for rules, written as YAML by rule authors.

A test file names a rules directory, optionally the rules whose notifications
are compared, and a list of cases: input signals (each with ``ts``; ``v``,
``id`` and ``site`` are filled in) and the expected notifications. An empty
``expect`` means "must not fire". Example::

    rules: ../../../rules
    rule: mail-delivery-failing
    tests:
      - name: most mail fails
        signals:
          - {ts: "2026-11-28T10:00:00Z", type: mail, data: {outcome: failed, transport: smtp}}
        expect:
          - {rule: mail-delivery-failing, status: firing, seq: 1, group: {transport: smtp},
             evaluated_at: "2026-11-28T10:00:00Z"}

Each expected notification compares ``rule``, ``status``, ``seq``, ``group``
and ``evaluated_at``, plus any of ``site``, ``started_at``, ``ended_at``,
``value``, ``suppressed_count`` and ``evidence_total`` it gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from operators.site import Detector
from schemas.errors import UsageError
from schemas.problems import StrictYamlLoader, validation_problems
from schemas.records import Record, compact_json, parse_record
from schemas.rule_loader import RuleLoadError, load_rules
from schemas.timestamps import TimestampError, format_ts, parse_ts_checked

_STRICT = ConfigDict(extra="forbid")


def _normalise_ts(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a timestamp string")
    try:
        return format_ts(parse_ts_checked(value))
    except TimestampError as error:
        raise ValueError(str(error)) from error


class ExpectedNotification(BaseModel):
    """The parts of a notification a rule test pins down."""

    model_config = _STRICT
    rule: str
    status: Literal["firing", "resolved"]
    seq: Annotated[int, Field(ge=1)]
    group: dict[str, Any] = {}
    evaluated_at: str
    site: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    value: dict[str, Any] | None = None
    suppressed_count: int | None = None
    evidence_total: int | None = None

    _ts = field_validator("evaluated_at", "started_at", "ended_at")(_normalise_ts)


class RuleTestCase(BaseModel):
    """Input signals and what must (or must not) come out."""

    model_config = _STRICT
    name: Annotated[str, Field(min_length=1)]
    signals: list[dict[str, Any]]
    expect: list[ExpectedNotification]


class RuleTestFile(BaseModel):
    """One YAML file of rule tests."""

    model_config = _STRICT
    rules: str
    rule: str | list[str] | None = None
    site: str = "test-site"
    tests: Annotated[list[RuleTestCase], Field(min_length=1)]


class RuleTestError(UsageError):
    """A test file that cannot be run (missing, malformed, naming unknown rules)."""


@dataclass
class CaseResult:
    """The outcome of one test case."""

    file: str
    name: str
    diff: list[str]

    @property
    def passed(self) -> bool:
        """True when actual and expected notifications agree."""
        return not self.diff


_BASE_KEYS = ("rule", "status", "seq", "group", "evaluated_at")


def _actual_view(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "rule": record["rule"]["id"], "status": record["status"], "seq": record["seq"], "group": record["group"],
        "evaluated_at": record["evaluated_at"], "site": record["site"], "started_at": record["started_at"],
        "ended_at": record["ended_at"], "value": record["value"], "suppressed_count": record["suppressed_count"],
        "evidence_total": record["evidence_total"],
    }


def _line(view: dict[str, Any]) -> str:
    return compact_json(view)


def _build_records(case: RuleTestCase, site: str, where: str) -> list[Record]:
    records = []
    for index, given in enumerate(case.signals, start=1):
        envelope = {"v": 1, "id": f"test-{index:06d}", "site": site, **given}
        parsed = parse_record(compact_json(envelope).encode("utf-8"), index)
        if isinstance(parsed, str):
            raise RuleTestError(f"{where}: signals.{index}: {parsed}")
        records.append(parsed)
    return records


def run_case(detector: Detector, case: RuleTestCase, selected: set[str] | None, site: str, file: str) -> CaseResult:
    """Run one case through a fresh detector and compare."""
    records = _build_records(case, site, f"{file}: test {case.name!r}")
    notifications = detector.run(records)
    actual = [
        _actual_view(json.loads(n.to_json())) for n in notifications if selected is None or n.rule.id in selected
    ]
    expected = [item.model_dump(exclude_none=True) for item in case.expect]
    shown_actual = []
    for index, view in enumerate(actual):
        keys = set(expected[index]) if index < len(expected) else set(_BASE_KEYS)
        shown_actual.append({key: view[key] for key in view if key in keys})
    if shown_actual == expected:
        return CaseResult(file, case.name, [])
    diff = ["    expected:"] + [f"      - {_line(item)}" for item in expected] or ["      (nothing)"]
    if not expected:
        diff.append("      (no notifications)")
    diff.append("    got:")
    diff += [f"      {'  ' if i < len(expected) and item == expected[i] else '≠ '}{_line(item)}"
             for i, item in enumerate(shown_actual)]
    if not shown_actual:
        diff.append("      (no notifications)")
    return CaseResult(file, case.name, diff)


def _load_test_file(path: Path) -> RuleTestFile:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as error:
        raise RuleTestError(f"{path}: cannot read: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise RuleTestError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from error
    try:
        return RuleTestFile.model_validate(raw)
    except ValidationError as error:
        name, message = next(validation_problems(error))
        raise RuleTestError(f"{path}: {name}: {message}") from error


def run_test_file(path: Path) -> list[CaseResult]:
    """Run every case of one test file; raise :class:`RuleTestError` if it cannot be run."""
    spec = _load_test_file(path)
    rules_dir = (path.parent / spec.rules).resolve()
    try:
        ruleset = load_rules(rules_dir)
    except RuleLoadError as error:
        raise RuleTestError(f"{path}: rules {spec.rules}: {error.problems[0]}") from error
    known = {rule.id for rule in ruleset.rules}
    selected = None
    if spec.rule is not None:
        selected = {spec.rule} if isinstance(spec.rule, str) else set(spec.rule)
        unknown = sorted(selected - known)
        if unknown:
            raise RuleTestError(f"{path}: rule: unknown rule id(s) {', '.join(unknown)}")
    rules = ruleset.enabled_rules
    if selected is not None:
        rules = [rule for rule in ruleset.rules if rule.id in selected]
    return [run_case(Detector(rules), case, selected, spec.site, str(path)) for case in spec.tests]
