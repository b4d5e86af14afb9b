"""The `logystera` console script (cli.md), run for real in a subprocess."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from schemas.alerts import NotificationRecord
from schemas.factory import make_signal, signal_line
from schemas.records import compact_json
from schemas.signals import SIGNAL_TYPES

pytestmark = pytest.mark.process

LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or shutil.which("logystera")
TIMEOUT = 60

RULES = """\
- id: mail-failed
  title: Mail failed
  severity: high
  subsystem: mail
  signal: mail
  where: {outcome: failed}
  kind: match
  deliver: [oncall]
- id: mail-failing
  title: Mail keeps failing
  description: Repeated failures for one transport.
  severity: medium
  subsystem: mail
  signal: mail
  where: {outcome: failed}
  group_by: [transport]
  kind: threshold
  threshold: {count: 2, window: 1m}
"""
CHANNELS = """\
channels:
  - name: oncall
    type: webhook
    url_env: ONCALL_URL
"""


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LOGYSTERA is not None, "the logystera console script is not installed"
    return subprocess.run(
        [LOGYSTERA, *args], input=stdin, capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT, cwd=cwd, check=False,
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 2, nothing on stdout, exactly one line on stderr, and no traceback."""
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.rstrip("\n") == message


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "mail.yaml").write_text(RULES, encoding="utf-8")
    (directory / "channels.yml").write_text(CHANNELS, encoding="utf-8")
    return directory


def mail(id_: str, ts: str, site: str = "shop-a", transport: str = "smtp", outcome: str = "failed", **extra: Any) -> str:
    return signal_line(make_signal(site, "mail", ts, id_, outcome=outcome, transport=transport, **extra))


# Line numbers are file lines: blank lines count but are not reported.
SIGNALS_LINES = [
    mail("sig-00000001", "2026-11-28T10:00:00.000Z", site="shop-b"),                   # 1 match fires (shop-b)
    "not json",                                                                        # 2 invalid
    "",                                                                                # 3 blank: ignored
    mail("sig-00000002", "2026-11-28T10:00:01.000Z", email="alice@example.com"),       # 4 privacy violation
    mail("sig-00000003", "2026-11-28T10:00:02.000Z"),                                  # 5 match fires (shop-a)
    "   ",                                                                             # 6 whitespace only: ignored
    mail("sig-00000004", "2026-11-28T10:00:03.000Z"),                                  # 7 threshold fires (shop-a, smtp)
    signal_line({**make_signal("shop-a", "tick", "2026-11-28T10:00:04.000Z", "tick-shop-a-1"), "v": 2}),  # 8 invalid
    mail("sig-00000005", "2026-11-28T09:58:00.000Z"),                                  # 9 late for both rules
    signal_line(make_signal("shop-a", "tick", "2026-11-28T10:00:10.000Z", "tick-shop-a-2")),  # 10 tick: counted
    mail("sig-00000006", "2026-11-28T10:00:11.000Z", outcome="sent"),                  # 11 valid, matches nothing
]
SIGNALS = "\n".join(SIGNALS_LINES) + "\n"
EXPECTED_STDERR_TAIL = [
    "line 4: data.email: field not allowed",
    "line 8: v: input should be less than or equal to 1",
    "replayed 6 signals, 3 invalid, 1 late",
]


@pytest.fixture
def signals_file(tmp_path: Path) -> Path:
    path = tmp_path / "signals.jsonl"
    path.write_text(SIGNALS, encoding="utf-8")
    return path


def check_replay_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 4, stderr
    assert lines[0].startswith("line 2: not valid JSON: ")
    assert lines[1:] == EXPECTED_STDERR_TAIL


def sort_key(record: dict[str, Any]) -> tuple[Any, ...]:
    group = json.dumps(record["group"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (record["evaluated_at"], record["site"], record["rule"]["id"], group, record["seq"], record["alert_id"])


def check_output(stdout: str) -> list[dict[str, Any]]:
    """Every line a compact JSON notification record; the lines in cli.md order."""
    assert stdout.endswith("\n")
    lines = stdout[:-1].split("\n")
    records = []
    for line in lines:
        record = json.loads(line)
        assert line == compact_json(record), "not compact JSON"
        NotificationRecord.model_validate(record)
        records.append(record)
    assert [sort_key(r) for r in records] == sorted(sort_key(r) for r in records)
    return records


# --- rules check -----------------------------------------------------------------------------


def test_rules_check_valid(rules_dir: Path) -> None:
    result = run("rules", "check", str(rules_dir))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{rules_dir}: 2 rules (2 enabled), 0 metrics, 1 channels: ok\n"


def test_rules_check_defaults_to_rules_in_the_working_directory(rules_dir: Path) -> None:
    (rules_dir / "off.yaml").write_text(RULES.replace("mail-fail", "quiet-mail-fail").replace("  kind:", "  enabled: false\n  kind:"))
    result = run("rules", "check", cwd=rules_dir.parent)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "rules: 4 rules (2 enabled), 0 metrics, 1 channels: ok\n"


def test_rules_check_reports_every_problem_and_exits_2(rules_dir: Path) -> None:
    (rules_dir / "bad.yaml").write_text(textwrap.dedent("""\
        id: bad-rule
        title: Bad
        severity: urgent
        subsystem: mail
        signal: mail
        where: {recipient: admin}
        kind: match
        deliver: [pager]
        """))
    result = run("rules", "check", str(rules_dir))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    prefix = f"{rules_dir / 'bad.yaml'}: rule bad-rule: "
    assert result.stderr.splitlines() == [
        prefix + "severity: must be 'critical', 'high', 'medium', 'low' or 'info'",
        prefix + "where.recipient: unknown field for signal type mail",
        prefix + "deliver: unknown channel 'pager'",
    ]


def test_rules_check_odd_condition_is_a_problem_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("id: r\ntitle: R\nseverity: low\nsubsystem: files\nsignal: file_edit\nkind: match\n"
                                     "where: {flags: {contains: [eval_call, obfuscated]}}\n")
    message = f"{tmp_path / 'r.yaml'}: rule r: where.flags.contains: contains takes one item value"
    assert_usage_error(run("rules", "check", str(tmp_path)), message)


def test_rules_check_missing_directory(tmp_path: Path) -> None:
    assert_usage_error(run("rules", "check", str(tmp_path / "nope")), f"{tmp_path / 'nope'}: (file): path: no such file or directory")


def test_rules_check_without_rules_directory_in_cwd(tmp_path: Path) -> None:
    assert_usage_error(run("rules", "check", cwd=tmp_path), "rules: (file): path: no such file or directory")


# --- replay ----------------------------------------------------------------------------------


def test_replay_reports_invalid_lines_and_totals(rules_dir: Path, signals_file: Path) -> None:
    result = run("replay", str(signals_file), "--rules", str(rules_dir))
    assert result.returncode == 0, result.stderr
    check_replay_stderr(result.stderr)
    records = check_output(result.stdout)
    assert [(r["rule"]["id"], r["site"], r["group"], r["started_at"]) for r in records] == [
        ("mail-failed", "shop-b", {}, "2026-11-28T10:00:00.000Z"),
        ("mail-failed", "shop-a", {}, "2026-11-28T10:00:02.000Z"),
        ("mail-failing", "shop-a", {"transport": "smtp"}, "2026-11-28T10:00:03.000Z"),
    ]
    match, _, threshold = records
    assert match["deliver"] == ["oncall"] and threshold["deliver"] == []
    assert threshold["rule"] == {"id": "mail-failing", "title": "Mail keeps failing", "kind": "threshold",
                                 "description": "Repeated failures for one transport."}
    assert threshold["value"] == {"count": 2}
    assert [e["id"] for e in threshold["evidence"]] == ["sig-00000003", "sig-00000004"]
    # alert_id = first 32 hex of SHA-256 over rule, site, group, started_at (and the opener id for match).
    text = "mail-failed\nshop-b\n{}\n2026-11-28T10:00:00.000Z\nsig-00000001"
    assert match["alert_id"] == hashlib.sha256(text.encode()).hexdigest()[:32]
    assert match["link"] == f"http://localhost:8080/alerts/{match['alert_id']}"


def test_replay_skips_disabled_rules(rules_dir: Path, signals_file: Path) -> None:
    (rules_dir / "off.yaml").write_text("id: every-mail\ntitle: Every mail\nseverity: info\nsubsystem: mail\nsignal: mail\n"
                                        "kind: match\nsuppress: 0s\nenabled: false\n")
    result = run("replay", str(signals_file), "--rules", str(rules_dir))
    assert result.returncode == 0
    check_replay_stderr(result.stderr)
    assert [r["rule"]["id"] for r in check_output(result.stdout)] == ["mail-failed", "mail-failed", "mail-failing"]


def test_replay_from_stdin_matches_file(rules_dir: Path, signals_file: Path) -> None:
    from_file = run("replay", str(signals_file), "--rules", str(rules_dir))
    from_stdin = run("replay", "-", "--rules", str(rules_dir), stdin=SIGNALS)
    assert from_stdin.returncode == 0
    check_replay_stderr(from_stdin.stderr)
    assert from_stdin.stdout == from_file.stdout
    assert len(check_output(from_stdin.stdout)) == 3


def test_replay_out_file(rules_dir: Path, signals_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    result = run("replay", str(signals_file), "--rules", str(rules_dir), "--out", str(out))
    assert (result.returncode, result.stdout) == (0, "")
    check_replay_stderr(result.stderr)
    written = out.read_text(encoding="utf-8")
    assert len(check_output(written)) == 3
    assert written == run("replay", str(signals_file), "--rules", str(rules_dir)).stdout


def test_replay_output_is_the_same_for_any_number_of_workers(rules_dir: Path, signals_file: Path) -> None:
    one = run("replay", str(signals_file), "--rules", str(rules_dir), "--workers", "1")
    three = run("replay", str(signals_file), "--rules", str(rules_dir), "--workers", "3")
    assert three.returncode == 0
    assert three.stdout == one.stdout
    assert three.stderr == one.stderr


def test_replay_output_is_compact_unescaped_and_sorted(rules_dir: Path, tmp_path: Path) -> None:
    # Several sites, groups and rules firing at the same instants, written out of order.
    lines = []
    for index, (site, transport) in enumerate([("site-z", "smtp-ü"), ("site-a", "smtp"), ("site-a", "ses"), ("site-m", "smtp")]):
        for second in (0, 1):
            lines.append(mail(f"sig-{index}-{second}-abcd", f"2026-11-28T10:00:0{second}.000Z", site=site, transport=transport))
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run("replay", str(path), "--rules", str(rules_dir), "--workers", "2")
    assert result.returncode == 0
    assert result.stderr == "replayed 8 signals, 0 invalid, 0 late\n"
    records = check_output(result.stdout)
    assert [(r["evaluated_at"][17:19], r["site"], r["rule"]["id"], r["group"]) for r in records] == [
        ("00", "site-a", "mail-failed", {}),
        ("00", "site-m", "mail-failed", {}),
        ("00", "site-z", "mail-failed", {}),
        ("01", "site-a", "mail-failing", {"transport": "ses"}),
        ("01", "site-a", "mail-failing", {"transport": "smtp"}),
        ("01", "site-m", "mail-failing", {"transport": "smtp"}),
        ("01", "site-z", "mail-failing", {"transport": "smtp-ü"}),
    ]
    assert '"transport":"smtp-ü"' in result.stdout  # non-ASCII not escaped
    assert "\\u00fc" not in result.stdout


def test_replay_empty_input(rules_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    result = run("replay", str(path), "--rules", str(rules_dir))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "replayed 0 signals, 0 invalid, 0 late\n")


LAST_COLLECTION_PROBE = """
import sys
from cli.main import main
code = main(sys.argv[1:])
class Cycle:
    def __del__(self):
        sys.stderr.write("collected at exit\\n")
cycle = Cycle()
cycle.itself = cycle
del cycle  # garbage that only a collection frees: the interpreter's last one, if it runs
raise SystemExit(code)
"""


@pytest.mark.parametrize(("command", "collected"), [("replay", False), ("detect", False), ("rules", True)])
def test_replay_and_detect_end_without_the_interpreters_last_collection(
    command: str, collected: bool, rules_dir: Path, signals_file: Path,
) -> None:
    """Process 0 of a cluster waits for the others to exit: replay and detect skip the last collection (~50 ms each).

    ``rules check``, which leaves it in, shows that the probe sees a collection where one runs.
    """
    args = {
        "replay": ["replay", str(signals_file), "--rules", str(rules_dir)],
        "detect": ["detect", "--bootstrap", "127.0.0.1:9", "--rules", str(rules_dir), "--epoch-interval", "10ms"],
        "rules": ["rules", "check", str(rules_dir)],
    }[command]
    result = subprocess.run([sys.executable, "-c", LAST_COLLECTION_PROBE, *args], capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    assert "Traceback" not in result.stderr
    assert ("collected at exit" in result.stderr) is collected, result.stderr


# --- usage errors: one line, exit 2, never a traceback -----------------------------------------


def test_replay_missing_signals_file(rules_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    assert_usage_error(run("replay", str(missing), "--rules", str(rules_dir)), f"logystera: error: {missing}: no such file")


def test_replay_missing_rules_directory(signals_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-rules"
    assert_usage_error(run("replay", str(signals_file), "--rules", str(missing)), f"{missing}: (file): path: no such file or directory")


def test_replay_bad_rules_directory(signals_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-rules"
    bad.mkdir()
    (bad / "r.yaml").write_text("id: r\ntitle: R\nseverity: high\nsubsystem: mail\nsignal: tick\nkind: match\n")
    result = run("replay", str(signals_file), "--rules", str(bad))
    assert_usage_error(
        result,
        f"{bad / 'r.yaml'}: rule r: signal: tick is not allowed (ticks only advance the clock); use one of {', '.join(SIGNAL_TYPES)}",
    )


@pytest.mark.parametrize(("workers", "message"), [
    ("0", "logystera: error: --workers must be at least 1"),
    ("-2", "logystera: error: --workers must be at least 1"),
    ("two", "logystera: error: argument --workers: invalid int value: 'two'"),
])
def test_replay_bad_workers(rules_dir: Path, signals_file: Path, workers: str, message: str) -> None:
    assert_usage_error(run("replay", str(signals_file), "--rules", str(rules_dir), "--workers", workers), message)


def test_replay_unwritable_out(rules_dir: Path, signals_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "alerts.jsonl"
    result = run("replay", str(signals_file), "--rules", str(rules_dir), "--out", str(out))
    assert_usage_error(result, f"logystera: error: --out {out}: No such file or directory")


def test_unknown_subcommand() -> None:
    result = run("frobnicate")
    choices = "'rules', 'replay', 'detect', 'schema', 'demo', 'gateway', 'deliver', 'db', 'sql', 'web', 'silence'"
    assert_usage_error(result, f"logystera: error: argument command: invalid choice: 'frobnicate' (choose from {choices})")


@pytest.mark.parametrize("args", [[], ["rules"], ["rules", "lint"], ["schema"], ["schema", "metrics"], ["replay"]])
def test_incomplete_or_unknown_commands(args: list[str]) -> None:
    result = run(*args)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("logystera: error: "), result.stderr


# --- schema ----------------------------------------------------------------------------------


def schema(what: str) -> dict[str, Any]:
    result = run("schema", what)
    assert (result.returncode, result.stderr) == (0, "")
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_schema_signals() -> None:
    document = schema("signals")
    assert document["title"] == "Logystera signal (version 1)"
    assert document["discriminator"]["propertyName"] == "type"
    assert set(document["discriminator"]["mapping"]) == {*SIGNAL_TYPES, "tick"}
    mail_signal = document["$defs"]["MailSignal"]
    assert mail_signal["additionalProperties"] is False
    assert set(mail_signal["required"]) >= {"v", "id", "site", "type", "ts", "data"}
    assert document["$defs"]["MailData"]["additionalProperties"] is False


def test_schema_rules() -> None:
    document = schema("rules")
    rule = document["$defs"]["Rule"]
    assert rule["required"] == ["id", "title", "severity", "subsystem", "signal", "kind"]
    assert "for" in rule["properties"] and "for_" not in rule["properties"]
    assert rule["properties"]["id"]["pattern"] == "^[a-z0-9][a-z0-9-]{0,63}$"
    assert {"Rule", "RuleFileDocument", "MetricDefinition", "WebhookChannel"} <= set(document["$defs"])
    assert len(document["anyOf"]) == 3


def test_schema_alerts() -> None:
    document = schema("alerts")
    assert list(document["properties"]) == list(NotificationRecord.model_fields)
    assert document["properties"]["alert_id"]["pattern"] == "^[0-9a-f]{32}$"
    assert document["properties"]["status"]["enum"] == ["firing", "resolved"]


@pytest.mark.parametrize(("text", "problem"), [
    ("rules: .\ntests: []\n", "tests: must have at least 1 item(s)"),
    ("rules: .\nrules: ..\ntests: []\n", "not valid YAML: duplicate key 'rules'"),
    ("rules: .\ntest: []\n", "tests: required"),
])
def test_a_rule_test_file_that_cannot_run_is_one_line_in_the_loaders_words(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str) -> None:
    path = tmp_path / "broken_test.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["rules", "test", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"ERROR {path}: {problem}"), err
    assert len(err) == 1 and "Traceback" not in err[0]
