"""``--kafka-option`` of ``detect`` and ``deliver``: checked before anything connects, then given to every consumer.

The checks need no broker (a mistake is found before the first connection);
that the setting changes what the consumers do is measured by ``bench/live.py``
(``fetch.wait.max.ms``: detect's p99 latency).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from flows.live import KafkaLinesSource
from schemas.errors import Problems
from sinks.kafka_client import CONSUMER_DEFAULTS, client_options, consumer_config

RULES = str(Path(__file__).resolve().parents[2] / "rules")
UNREACHABLE = "127.0.0.1:1"


@pytest.mark.parametrize(("option", "message"), [
    ("fetch.wait.max.ms", "'fetch.wait.max.ms' is not KEY=VALUE"),
    ("=5", "'=5' is not KEY=VALUE"),
    ("group.id=mine", "group.id: set by logystera, cannot be changed"),
    ("enable.auto.commit=true", "enable.auto.commit: set by logystera, cannot be changed"),
    ("acks=1", "acks: set by logystera, cannot be changed"),
    ("no.such.setting=1", 'No such configuration property: "no.such.setting"'),
    ("fetch.wait.max.ms=soon", 'Invalid value for configuration property "fetch.wait.max.ms"'),
], ids=["no-value", "no-key", "group", "commit", "guarantee", "unknown", "bad-value"])
@pytest.mark.parametrize("command", [
    ["detect", "--bootstrap", UNREACHABLE, "--rules", RULES],
    ["deliver", "--bootstrap", UNREACHABLE, "--rules", RULES],
], ids=["detect", "deliver"])
def test_a_bad_setting_is_one_line_and_exit_2_before_anything_connects(
        capsys: pytest.CaptureFixture[str], command: list[str], option: str, message: str) -> None:
    assert main([*command, "--kafka-option", option]) == 2
    assert capsys.readouterr().err == f"logystera: error: --kafka-option: {message}\n"


def test_deliver_from_a_file_takes_no_kafka_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("", encoding="utf-8")
    assert main(["deliver", str(alerts), "--rules", RULES, "--kafka-option", "fetch.wait.max.ms=5"]) == 2
    assert capsys.readouterr().err == "logystera: error: --kafka-option needs --bootstrap\n"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(Problems) as raised:
        client_options(["group.id=a", "linger.ms"])
    assert raised.value.lines() == ["logystera: error: --kafka-option: 'linger.ms' is not KEY=VALUE",
                                    "logystera: error: --kafka-option: group.id: set by logystera, cannot be changed"]


def test_settings_change_the_defaults_and_never_what_logystera_sets() -> None:
    options = client_options(["fetch.wait.max.ms=5", "security.protocol=PLAINTEXT", "client.id=ops"])
    assert options == {"fetch.wait.max.ms": "5", "security.protocol": "PLAINTEXT", "client.id": "ops"}
    config = consumer_config("kafka:9092", "deliverers", lambda _text: None, options)
    assert {key: config[key] for key in (*options, "group.id", "enable.auto.commit", "bootstrap.servers")} == {
        **options, "group.id": "deliverers", "enable.auto.commit": False, "bootstrap.servers": "kafka:9092"}
    assert consumer_config("kafka:9092", "deliverers", lambda _text: None)["fetch.wait.max.ms"] == CONSUMER_DEFAULTS["fetch.wait.max.ms"]


def test_detect_gives_the_settings_to_the_consumer_of_every_partition() -> None:
    options = {"fetch.wait.max.ms": "5", "client.id": "ops"}
    source = KafkaLinesSource(UNREACHABLE, "signals", options=options)
    assert {key: source.consumer_settings[key] for key in options} == options
    assert KafkaLinesSource(UNREACHABLE, "signals").consumer_settings["fetch.wait.max.ms"] == CONSUMER_DEFAULTS["fetch.wait.max.ms"]
