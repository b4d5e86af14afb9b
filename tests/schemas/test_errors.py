"""The one error tree: which branch each error is on (its exit code), how it is printed, and ``root_cause``."""

from __future__ import annotations

import pytest

from cli.main import main
from cli.rule_tests import RuleTestError
from dispatcher import InvalidSignal
from flows.live import KafkaReadError, LiveConfigError
from gateway.command import ConfigProblems
from gateway.registry import RegistryError
from operators.snapshot import SnapshotError
from schemas.errors import EXIT_FAILED, EXIT_USAGE, Failure, LogysteraError, Problems, UsageError, root_cause
from schemas.rule_loader import RuleLoadError
from schemas.timestamps import TimestampError
from sinks.channel import ChannelConfigError
from sinks.clickhouse import StoreConfigError, StoreUnavailable
from sinks.kafka import KafkaDeliveryError
from sinks.kafka_client import KafkaUnreachable


@pytest.mark.parametrize(("error", "code"), [
    (RuleLoadError(["r.yaml: rule r: kind: required"]), EXIT_USAGE),
    (RegistryError(["sites.yaml: (file): not UTF-8 text"]), EXIT_USAGE),
    (ConfigProblems(["logystera: error: --port: must be 0–65535"]), EXIT_USAGE),
    (RuleTestError("t.yaml: tests: required"), EXIT_USAGE),
    (LiveConfigError("topic 'x' does not exist"), EXIT_USAGE),
    (StoreConfigError("store DSN must be chdb:///path"), EXIT_USAGE),
    (ChannelConfigError("channel c: url_env: environment variable U is not set"), EXIT_USAGE),
    (TimestampError("2026-02-30 is not a calendar date"), EXIT_USAGE),
    (InvalidSignal("data.outcome: must be one of ..."), EXIT_USAGE),
    (StoreUnavailable("store gave up"), EXIT_FAILED),
    (KafkaUnreachable("127.0.0.1:1", 10, "timed out"), EXIT_FAILED),
    (KafkaReadError("broker went away"), EXIT_FAILED),
    (KafkaDeliveryError("topic 'alerts': 1 of 1 records not acknowledged"), EXIT_FAILED),
    (SnapshotError("unknown detector fields"), EXIT_FAILED),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None)
def test_every_error_is_on_one_branch_of_the_tree(error: LogysteraError, code: int) -> None:
    assert isinstance(error, UsageError if code == EXIT_USAGE else Failure)
    assert error.exit_code == code


def test_errors_some_code_catches_as_value_errors_still_are() -> None:
    assert isinstance(TimestampError("x"), ValueError)  # raised inside pydantic validators
    assert isinstance(InvalidSignal("x"), ValueError)  # the dispatcher's documented API


def test_one_line_or_every_problem() -> None:
    assert KafkaUnreachable("127.0.0.1:1", 10, "timed out").lines() == [
        "logystera: error: Kafka at 127.0.0.1:1 did not answer within 10s (timed out)"]
    assert Problems(["a.yaml: one", "a.yaml: two"]).lines() == ["a.yaml: one", "a.yaml: two"]


def test_root_cause_finds_the_error_inside_wrappers_and_survives_a_cycle() -> None:
    inner = StoreUnavailable("store gave up")
    try:
        try:
            raise inner
        except StoreUnavailable as error:
            raise RuntimeError("a step failed") from error
    except RuntimeError as outer:
        assert root_cause(outer, LogysteraError) is inner
        assert root_cause(outer, KafkaReadError) is None
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert root_cause(first, LogysteraError) is None


@pytest.mark.parametrize(("args", "message"), [
    (["detect", "--bootstrap", "127.0.0.1:1", "--epoch-interval", "often"],
     "logystera: error: argument --epoch-interval: 'often' is not a duration like 90s, 15m, 1h or 1d"),
    (["replay", "-", "--allowed-lateness", "1y"],
     "logystera: error: argument --allowed-lateness: '1y' is not a duration like 90s, 15m, 1h or 1d"),
    (["deliver", "-", "--timeout", "9" * 30 + "d"],
     "logystera: error: argument --timeout: '" + "9" * 30 + "d' is longer than 2^53 − 1 milliseconds"),
    (["detect", "--bootstrap", "127.0.0.1:1", "--delivery-timeout", "500ms"],
     "logystera: error: --epoch-interval and --delivery-timeout must be at least 1s"),
])
def test_duration_options_are_one_argparse_type(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(args) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [message]
