"""Loading a rules directory (rules.md "Fields", alerts.md "Channels").

Every failure mode has its own fixture directory under ``invalid/`` and the
test asserts the exact ``FILE: rule <id>: <field>: <message>`` lines.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from schemas.rule_loader import RuleLoadError, load_rules
from schemas.rules import EmailChannel, SlackChannel, TeamsChannel, WebhookChannel

INVALID = Path(__file__).parent / "invalid"

MAIL = "DIR/rule.yaml: rule mail-delivery-failing: "
BACKUP = "DIR/rule.yaml: rule nightly-backup: "
OPERATORS = "(eq, ne, in, not_in, gt, gte, lt, lte, prefix, exists, contains)"
SIGNAL_TYPES = "auth, mail, cron, php_error, config_change, db_event, request, plugin, file_edit, integration"
SEVERITIES = "'critical', 'high', 'medium', 'low' or 'info'"

EXPECTED: dict[str, list[str]] = {
    "yaml-syntax": ["DIR/rule.yaml: (file): yaml: expected ',' or ']', but got ':' at line 6, column 5"],
    "duplicate-yaml-key": ["DIR/rule.yaml: (file): yaml: duplicate key 'kind' at line 8, column 1"],
    "not-utf8": ["DIR/rule.yaml: (file): encoding: not UTF-8 (invalid continuation byte at byte 7)"],
    "scalar-document": ["DIR/rule.yaml: (file): document: must be a rule, a list of rules, "
                        "or a mapping of rules/metrics/channels/mute_times/inhibit"],
    "list-with-scalar": ["DIR/rules.yaml: rule #2: (document): must be a mapping"],
    "unknown-top-level-key": ["DIR/rules.yaml: (file): alerts: unknown top-level key"],
    "unknown-field": [MAIL + "labels: unknown field"],
    "missing-field": [MAIL + "subsystem: required"],
    "bad-id": ["DIR/rule.yaml: rule Mail_Delivery: id: must match ^[a-z0-9][a-z0-9-]{0,63}$"],
    "title-too-long": [MAIL + "title: must have at most 120 characters"],
    "bad-severity": [MAIL + f"severity: must be {SEVERITIES}"],
    "signal-tick": [MAIL + f"signal: tick is not allowed (ticks only advance the clock); use one of {SIGNAL_TYPES}"],
    "signal-unknown": [MAIL + f"signal: 'email' is not a signal type; use one of {SIGNAL_TYPES}"],
    "unknown-kind": [MAIL + "kind: must be 'match', 'threshold', 'ratio', 'distinct', 'absence' or 'shift'"],
    "missing-kind-params": [MAIL + "threshold: required for kind threshold"],
    "params-of-another-kind": [MAIL + "ratio: not allowed for kind threshold"],
    "bundle-on-non-match": [MAIL + "bundle: only match rules bundle (kind is threshold)"],
    "window-zero": [MAIL + "threshold.window: must be > 0"],
    "window-eight-days": [MAIL + "threshold.window: must be ≤ 7d"],
    "absence-after-eight-days": ["DIR/rule.yaml: rule cron-job-stopped: absence.after: must be ≤ 7d"],
    "absence-after-and-schedule": [BACKUP + "absence.schedule: not allowed with after: give exactly one of after and schedule"],
    "absence-neither": [BACKUP + "absence.after: required: give after (a fixed silence) or schedule (with grace)"],
    "absence-schedule-without-grace": [BACKUP + "absence.grace: required with schedule"],
    "absence-grace-eight-days": [BACKUP + "absence.grace: must be ≤ 7d"],
    "absence-grace-with-after": [BACKUP + "absence.grace: only with schedule"],
    "absence-schedule-rejected-by-cronsim": [
        BACKUP + "absence.schedule: '0 3 31 2 *' is not a cron expression cronsim accepts: Bad day-of-month",
    ],
    "absence-schedule-six-fields": [
        BACKUP + "absence.schedule: '0 0 3 * * *' has 6 field(s); a schedule has five (minute, hour, day of month, month, day of week)",
    ],
    "absence-unknown-timezone": [
        BACKUP + "absence.timezone: unknown time zone 'Europe/Berln'; use an IANA name such as Europe/Berlin or UTC",
    ],
    "bad-duration": [MAIL + "threshold.window: '10 minutes' is not a duration like 90s, 15m, 1h or 1d"],
    "ratio-at-least-zero": [MAIL + "ratio.at_least: must be > 0.0"],
    "ratio-at-least-over-one": [MAIL + "ratio.at_least: must be ≤ 1.0"],
    "evidence-zero": [MAIL + "evidence: must be ≥ 1"],
    "evidence-over-100": [MAIL + "evidence: must be ≤ 100"],
    "max-groups-zero": [MAIL + "max_groups: must be ≥ 1"],
    "group-by-too-many": ["DIR/rule.yaml: rule login-failures: group_by: must have at most 3 items"],
    "group-by-unknown-field": [MAIL + "group_by.0: recipient: unknown field for signal type mail"],
    "where-unknown-field": [MAIL + "where.recipient: unknown field for signal type mail"],
    "where-unknown-enum": [MAIL + "where.outcome.in: 'rejected' can never match: the field is one of bounced, deferred, failed, sent"],
    "where-unknown-operator": [MAIL + f"where.outcome: unknown operator 'is' (one of {OPERATORS[1:-1]})"],
    "where-two-operators": [MAIL + f"where.outcome: a test has exactly one operator {OPERATORS}"],
    "where-gt-on-string": [MAIL + "where.transport.gt: gt needs a numeric field; the field is a string"],
    "where-contains-on-non-list": [MAIL + "where.transport.contains: contains needs a list field; the field is a string"],
    "where-eq-on-list": [
        "DIR/rule.yaml: rule suspicious-file-edit: where.flags: 'eval_call' can never match: "
        "the field is a list (test its items with contains)",
    ],
    "where-contains-a-list": ["DIR/rule.yaml: rule suspicious-file-edit: where.flags.contains: contains takes one item value"],
    "where-prefix-never-matches": [
        "DIR/rule.yaml: rule php-errors: where.level.prefix: 'Fatal' can never match: "
        "the field is one of deprecated, error, fatal, notice, parse, warning",
    ],
    "where-null": [MAIL + "where.error_class: null never matches; use {exists: false}"],
    "multi-type-missing-field": ["DIR/rule.yaml: rule background-failures: where.outcome: unknown field for signal type cron"],
    "ratio-of-unknown-field": [MAIL + "ratio.of.result: unknown field for signal type mail"],
    "distinct-unknown-field": ["DIR/rule.yaml: rule credential-stuffing: distinct.field: unknown field for signal type auth"],
    "duplicate-id": ["DIR/b.yaml: rule mail-delivery-failing: id: duplicate rule id (first defined in DIR/a.yaml)"],
    "unknown-channel": [MAIL + "deliver: unknown channel 'pager'"],
    "metric-cardinality": [
        "DIR/metrics.yaml: metric requests: labels: up to 5100 series (declared values + other + none, multiplied); the bound is 5000",
    ],
    "metric-undeclared-label-field": [
        "DIR/metrics.yaml: metric mail_outcomes: labels.recipient_domain: unknown field for signal type mail",
    ],
    "metric-sum-non-numeric": ["DIR/metrics.yaml: metric mail_transport_total: value.sum: must be a numeric field"],
    "channel-url-and-url-env": ["DIR/channels.yaml: channel oncall: url: give exactly one of url or url_env"],
    "channel-unknown-type": ["DIR/channels.yaml: channel oncall: type: must be 'webhook', 'slack', 'teams' or 'email'"],
    "duplicate-channel": ["DIR/channels.yaml: channel ops: name: duplicate channel name"],
    "metric-label-value-twice": ["DIR/metrics.yaml: metric http_requests: labels.status: declares a value twice"],
    "smtp-credential-not-env-name": ["DIR/channels.yaml: channel ops-mail: smtp.username_env: must match ^[A-Z_][A-Z0-9_]*$"],
    "yaml-boolean-for-string": [
        "DIR/rule.yaml: rule maintenance-window: title: must be a string, got false "
        "(YAML reads unquoted yes/no/on/off as booleans: quote the value)",
    ],
    # Hostile files: bounded work, one line each (tests/schemas/test_rule_file_bounds.py runs them through the CLI).
    "yaml-alias-bomb": ["DIR/rule.yaml: (file): yaml: aliases expand to more than 10000 nodes at line 14, column 11"],
    "yaml-alias-cycle": ["DIR/rule.yaml: (file): yaml: alias 'where' is inside its own anchor at line 7, column 25"],
    "yaml-deep-list": ["DIR/rule.yaml: (file): yaml: nested deeper than 64 levels at line 2, column 71"],
    "yaml-deep-mapping": ["DIR/rule.yaml: (file): yaml: nested deeper than 64 levels at line 7, column 257"],
    "yaml-bad-explicit-tag": ["DIR/rule.yaml: (file): yaml: 'five' is not a valid !!int at line 7, column 20"],
    "int-huge": [f"DIR/rule.yaml: (file): yaml: integer {'9' * 59}… is outside ±(2^53 − 1) at line 7, column 17"],
    "int-out-of-range": ["DIR/rule.yaml: (file): yaml: integer 9007199254740992 is outside ±(2^53 − 1) at line 7, column 27"],
    "duration-out-of-range": [MAIL + "suppress: '999999999999999999999d' is longer than 2^53 − 1 milliseconds"],
    "long-value-quoted": [
        MAIL + f"where.outcome: {(repr('rejected-' * 7))[:59]}… can never match: the field is one of bounced, deferred, failed, sent",
    ],
    "long-field-name": [MAIL + f"{'x' * 59}…: unknown field"],
    "long-id": [f"DIR/rule.yaml: rule {'Mail-' * 11}Mail…: id: must match ^[a-z0-9][a-z0-9-]{{0,63}}$"],
    # All problems are collected: three independent mistakes, three lines.
    "three-mistakes": [
        MAIL + f"severity: must be {SEVERITIES}",
        MAIL + "threshold.count: must be ≥ 1",
        MAIL + "owner: unknown field",
    ],
    # ...also across the stages of the check: the model, the kind's block, the payload fields, the channels.
    "mistakes-of-every-stage": [
        MAIL + f"severity: must be {SEVERITIES}",
        MAIL + "threshold: required for kind threshold",
        MAIL + "where.recipient: unknown field for signal type mail",
        MAIL + "deliver: unknown channel 'pager'",
    ],
}


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(RuleLoadError) as info:
        load_rules(directory)
    assert str(info.value) == f"{len(info.value.problems)} problem(s) in the rules"
    return [line.replace(f"{directory}/", "DIR/") for line in info.value.problems]


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_invalid_fixture_reports_exact_problems(mode: str) -> None:
    assert problems_of(INVALID / mode) == EXPECTED[mode]


def test_every_fixture_directory_is_checked() -> None:
    assert sorted(path.name for path in INVALID.iterdir() if path.is_dir()) == sorted(EXPECTED)


# --- valid directories -----------------------------------------------------------------------

RULE = """\
id: {id}
title: {title}
severity: high
subsystem: mail
signal: mail
kind: match
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_one_rule_per_file(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", RULE.format(id="bounce-burst", title="Bounces"))
    write(tmp_path / "a.yaml", RULE.format(id="any-mail-failure", title="Mail failed") + "where: {outcome: failed}\n")
    ruleset = load_rules(tmp_path)
    assert [rule.id for rule in ruleset.rules] == ["any-mail-failure", "bounce-burst"]
    first = ruleset.rules[0]
    assert first.where == {"outcome": "failed"}
    assert (first.for_, first.resolve_after, first.suppress, first.bundle) == (0, 0, 3_600_000, None)
    assert (first.evidence, first.max_groups, first.group_by, first.deliver, first.enabled) == (10, 1000, [], [], True)
    assert first.signal_types == ("mail",)


def test_top_level_list(tmp_path: Path) -> None:
    write(tmp_path / "mail.yaml", """\
        - id: mail-failed
          title: Mail failed
          severity: medium
          subsystem: mail
          signal: mail
          kind: threshold
          threshold: {count: 5, window: 10m}
        - id: php-fatal
          title: PHP fatal errors
          severity: critical
          subsystem: php
          signal: [php_error]
          where: {level: fatal}
          group_by: [component]
          kind: shift
          shift: {window: 15m, baseline: 1d, factor: 3, min_count: 5}
        """)
    rules = load_rules(tmp_path).rules
    assert [rule.id for rule in rules] == ["mail-failed", "php-fatal"]
    assert (rules[0].params.count, rules[0].params.window) == (5, 600_000)
    assert (rules[1].params.window, rules[1].params.baseline, rules[1].params.factor) == (900_000, 86_400_000, 3)
    assert rules[1].signal_types == ("php_error",)


def test_mapping_of_rules_metrics_and_channels(tmp_path: Path) -> None:
    write(tmp_path / "all.yaml", """\
        rules:
          - id: mail-delivery-failing
            title: Mail delivery is failing
            description: Most outbound mail failed over the last 15 minutes.
            severity: high
            subsystem: mail
            signal: mail
            where: {outcome: {in: [failed, bounced]}}
            group_by: [transport]
            kind: ratio
            ratio: {of: {outcome: {in: [sent, failed, bounced, deferred]}}, at_least: 0.5, min_total: 10, window: 15m}
            for: 0s
            resolve_after: 0s
            suppress: 1h
            evidence: 10
            max_groups: 1000
            deliver: [oncall]
            enabled: true
        metrics:
          - name: auth_attempts
            signal: auth
            where: {}
            labels:
              outcome: [success, failure, lockout, logout]
              method: [password, app_password, cookie, xmlrpc, rest, sso, other]
            value: count
            resolution: 1m
          - name: request_time
            signal: request
            labels: {status: [200, 500]}
            value: {sum: duration_ms}
            resolution: 10s
        channels:
          - name: oncall
            type: webhook
            url: https://oncall.example/hooks/logystera
            secret_env: ONCALL_WEBHOOK_SECRET
            rate_limit: {per: 1m, max: 30}
            send_resolved: true
          - name: ops-slack
            type: slack
            url_env: OPS_SLACK_WEBHOOK_URL
          - name: ops-teams
            type: teams
            url_env: OPS_TEAMS_WEBHOOK_URL
          - name: ops-mail
            type: email
            to: [ops@example.com]
            smtp: {host: localhost, port: 25, starttls: false, username_env: null, password_env: null}
        """)
    ruleset = load_rules(tmp_path)
    (rule,) = ruleset.rules
    assert rule.params.at_least == 0.5 and rule.params.window == 900_000
    assert rule.deliver == ["oncall"]
    assert [metric.name for metric in ruleset.metrics] == ["auth_attempts", "request_time"]
    assert ruleset.metrics[0].series_bound == (4 + 2) * (7 + 2)
    assert ruleset.metrics[1].value.sum == "duration_ms"  # type: ignore[union-attr]
    assert [type(channel) for channel in ruleset.channels] == [WebhookChannel, SlackChannel, TeamsChannel, EmailChannel]
    assert ruleset.channels[0].rate_limit.per == 60_000 and ruleset.channels[0].rate_limit.max == 30
    assert ruleset.channels[1].rate_limit.max == 60  # the default


def test_yml_files_in_subdirectories_and_other_files_ignored(tmp_path: Path) -> None:
    write(tmp_path / "mail" / "deep" / "bounces.yml", RULE.format(id="bounces", title="Bounces"))
    write(tmp_path / "top.yaml", RULE.format(id="top", title="Top"))
    write(tmp_path / "README.md", "id: [not a rule\n")
    write(tmp_path / "notes.json", "{")
    assert sorted(rule.id for rule in load_rules(tmp_path).rules) == ["bounces", "top"]


def test_disabled_rules_are_loaded_and_checked_but_not_enabled(tmp_path: Path) -> None:
    write(tmp_path / "on.yaml", RULE.format(id="running", title="Running"))
    write(tmp_path / "off.yaml", RULE.format(id="switched-off", title="Switched off") + "enabled: false\n")
    ruleset = load_rules(tmp_path)
    assert sorted(rule.id for rule in ruleset.rules) == ["running", "switched-off"]
    assert [rule.id for rule in ruleset.enabled_rules] == ["running"]


def test_disabled_rule_with_a_problem_still_fails_the_load(tmp_path: Path) -> None:
    write(tmp_path / "off.yaml", RULE.format(id="switched-off", title="Switched off") + "enabled: false\nwhere: {recipient: x}\n")
    assert problems_of(tmp_path) == ["DIR/off.yaml: rule switched-off: where.recipient: unknown field for signal type mail"]


def test_channels_may_be_declared_in_another_file(tmp_path: Path) -> None:
    write(tmp_path / "rules" / "mail.yaml", RULE.format(id="mail", title="Mail") + "deliver: [ops-slack]\n")
    write(tmp_path / "zz-channels.yaml", "channels:\n  - {name: ops-slack, type: slack, url_env: OPS_SLACK_WEBHOOK_URL}\n")
    assert load_rules(tmp_path).rules[0].deliver == ["ops-slack"]


def test_several_documents_empty_files_and_comments(tmp_path: Path) -> None:
    write(tmp_path / "two.yaml", RULE.format(id="one", title="One") + "---\n" + RULE.format(id="two", title="Two"))
    write(tmp_path / "empty.yaml", "")
    write(tmp_path / "comment.yaml", "# rules go here\n")
    assert [rule.id for rule in load_rules(tmp_path).rules] == ["one", "two"]


def test_a_single_file_can_be_loaded(tmp_path: Path) -> None:
    path = write(tmp_path / "one.yaml", RULE.format(id="one", title="One"))
    assert [rule.id for rule in load_rules(path).rules] == ["one"]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RuleLoadError) as info:
        load_rules(tmp_path / "nope")
    assert info.value.problems == [f"{tmp_path / 'nope'}: (file): path: no such file or directory"]


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "locked.yaml", RULE.format(id="locked", title="Locked"))

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)  # chmod would not stop a test run as root
    assert problems_of(tmp_path) == ["DIR/locked.yaml: (file): read: Permission denied"]


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    write(tmp_path / "merge.yaml", """\
        rules:
          - <<: {id: merged, title: Merged, severity: high, subsystem: mail, signal: mail, kind: threshold}
            kind: match
        """)
    assert load_rules(tmp_path).rules[0].kind == "match"


def test_multi_type_condition_needs_the_field_everywhere_and_a_match_somewhere(tmp_path: Path) -> None:
    # `failed` is a mail outcome but not an auth outcome: valid, it can match in one type.
    write(tmp_path / "a.yaml", RULE.format(id="a", title="A").replace("signal: mail", "signal: [mail, auth]")
          + "where: {outcome: failed}\n")
    write(tmp_path / "b.yaml", RULE.format(id="b", title="B").replace("signal: mail", "signal: [cron, db_event]")
          + "where: {duration_ms: {gte: 1000}}\n")
    assert sorted(rule.id for rule in load_rules(tmp_path).rules) == ["a", "b"]


def test_prefix_on_enum_and_string_fields(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", RULE.format(id="a", title="A").replace("signal: mail", "signal: php_error")
          + "where: {level: {prefix: dep}, component: {prefix: 'plugin:'}}\n")
    assert load_rules(tmp_path).rules[0].where == {"level": {"prefix": "dep"}, "component": {"prefix": "plugin:"}}


def test_numbers_compare_by_value(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", RULE.format(id="a", title="A").replace("signal: mail", "signal: request")
          + "where: {status: 500.0, duration_ms: {gt: 2.5}}\n")
    assert load_rules(tmp_path).rules[0].where == {"status": 500.0, "duration_ms": {"gt": 2.5}}


def test_metric_at_exactly_5000_series_accepted(tmp_path: Path) -> None:
    values = ", ".join(f"ua{i}" for i in range(48))
    write(tmp_path / "m.yaml", f"""\
        metrics:
          - name: requests
            signal: request
            labels:
              method: [GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS, OTHER]
              status: [200, 201, 204, 301, 302, 304, 400, 401]
              ua_family: [{values}]
            resolution: 1m
        """)
    assert load_rules(tmp_path).metrics[0].series_bound == 5000


def test_problems_from_every_file_are_reported_in_file_order(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", RULE.format(id="b", title="B").replace("severity: high", "severity: urgent"))
    write(tmp_path / "a.yaml", RULE.format(id="a", title="A") + "evidence: 0\n")
    write(tmp_path / "ok.yaml", RULE.format(id="ok", title="Fine"))
    assert problems_of(tmp_path) == [
        "DIR/a.yaml: rule a: evidence: must be ≥ 1",
        f"DIR/b.yaml: rule b: severity: must be {SEVERITIES}",
    ]


def test_channel_with_problems_is_still_a_known_delivery_target(tmp_path: Path) -> None:
    # One mistake, one line: the rule delivering to the broken channel is not blamed too.
    write(tmp_path / "a.yaml", """\
        rules:
          - {id: a, title: A, severity: low, subsystem: mail, signal: mail, kind: match, deliver: [oncall]}
        channels:
          - {name: oncall, type: webhook}
        """)
    assert problems_of(tmp_path) == ["DIR/a.yaml: channel oncall: url: give exactly one of url or url_env"]


def test_the_examples_of_the_spec_load() -> None:
    """rules.md's full field list (with `bundle: 0s` on a ratio rule) and alerts.md's channels load as written."""
    ruleset = load_rules(Path(__file__).parent / "spec_example")
    assert [rule.id for rule in ruleset.rules] == ["mail-delivery-failing"]
    assert ruleset.rules[0].bundle == 0
    assert [channel.name for channel in ruleset.channels] == ["oncall", "ops-slack", "ops-teams", "ops-mail"]
    assert [metric.name for metric in ruleset.metrics] == ["auth_attempts"]
