"""``--link-base``: checked at start (one line, exit 2), and the links built from it are valid URIs (alerts.md ``link``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.alerts import NotificationRecord
from tests.cli.test_cli import assert_usage_error, mail, rules_dir, run  # noqa: F401 - rules_dir is a fixture

pytestmark = pytest.mark.process

SIGNALS = mail("sig-00000001", "2026-11-28T10:00:00.000Z") + "\n"


@pytest.mark.process
@pytest.mark.parametrize(("base", "expected"), [
    ("https://müller.example/konsole", "https://xn--mller-kva.example/konsole"),
    ("https://ops.example/alert console/ü/", "https://ops.example/alert%20console/%C3%BC"),
    ("http://[::1]:8080/", "http://[::1]:8080"),
], ids=["idna-host", "encoded-path", "ipv6"])
def test_replay_links_are_valid_uris(tmp_path: Path, rules_dir: Path, base: str, expected: str) -> None:  # noqa: F811
    signals = tmp_path / "signals.jsonl"
    signals.write_text(SIGNALS, encoding="utf-8")
    result = run("replay", str(signals), "--rules", str(rules_dir), "--link-base", base)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    assert record["link"] == f"{expected}/alerts/{record['alert_id']}"
    NotificationRecord.model_validate(record)  # what deliver accepts


@pytest.mark.process
@pytest.mark.parametrize(("base", "reason"), [
    ("https://ops.example/\x01", "contains a control character"),
    ("https://ops.example/a\tb", "contains a control character"),
    ("https://ops example", "has an invalid host 'ops example'"),
    ("ops.example", "is not an http(s) URL like https://logystera.example"),
    ("https://user:secret@ops.example", "must not carry a user name or password"),
    ("https://ops.example/?x=1", "must not have a query or a fragment (the link appends /alerts/<alert_id> to it)"),
    ("https://ops.example:http", "has an invalid port"),
], ids=["control", "tab", "space-in-host", "no-scheme", "credentials", "query", "port"])
@pytest.mark.parametrize("command", ["replay", "detect"])
def test_an_unusable_link_base_is_one_line_and_exit_2(tmp_path: Path, rules_dir: Path, command: str, base: str,  # noqa: F811
                                                       reason: str) -> None:
    signals = tmp_path / "signals.jsonl"
    signals.write_text(SIGNALS, encoding="utf-8")
    source = [str(signals)] if command == "replay" else ["--bootstrap", "127.0.0.1:1"]
    result = run(command, *source, "--rules", str(rules_dir), "--link-base", base)
    assert_usage_error(result, f"logystera: error: --link-base: {reason}")
