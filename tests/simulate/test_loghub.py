"""Real sshd logs (loghub OpenSSH_2k.log) as auth signals: privacy, validity, counts, detections."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

import simulate
from dispatcher import network_prefix
from flows.replay import replay
from schemas.factory import identity_hash
from schemas.records import parse_record
from schemas.rule_loader import load_rules
from simulate.loghub import OPENSSH_SAMPLE, ConversionStats, convert_file, convert_openssh, main, network_source

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
SITE = "labsz-ssh"
YEAR = 2026


@pytest.fixture(scope="module")
def raw_lines() -> list[str]:
    return OPENSSH_SAMPLE.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def converted(raw_lines: list[str]) -> tuple[list[dict[str, Any]], ConversionStats]:
    stats = ConversionStats()
    return list(convert_openssh(raw_lines, SITE, YEAR, stats=stats)), stats


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def test_every_line_is_accounted_for(converted: tuple[list[dict[str, Any]], ConversionStats]) -> None:
    envelopes, stats = converted
    assert stats.lines == 2000
    assert stats.emitted_lines == 527
    assert stats.folded == 872
    assert stats.not_auth == {
        "disconnect": 471, "reverse mapping warning": 85, "connection closed": 34, "no identification": 10, "connection error": 1,
    }
    assert stats.unparsed == 0
    assert stats.skipped == 601
    assert stats.lines == stats.emitted_lines + stats.folded + stats.not_auth_lines + stats.unparsed
    assert stats.outcomes == {"failure": 533, "success": 1, "logout": 1}
    assert stats.signals == 535
    assert stats.ticks == 1496
    assert Counter(e["type"] for e in envelopes) == {"auth": 535, "tick": 1496}


def test_attacking_networks_are_what_the_log_shows(converted: tuple[list[dict[str, Any]], ConversionStats]) -> None:
    envelopes, _ = converted
    failures: Counter[str] = Counter()
    users: dict[str, set[str]] = defaultdict(set)
    for e in envelopes:
        if e["type"] == "auth" and e["data"]["outcome"] == "failure":
            failures[e["data"]["source"]] += 1
            users[e["data"]["source"]].add(e["data"]["user_hash"])
    assert len(failures) == 22
    assert failures.most_common(3) == [("183.62.140.0/24", 287), ("187.141.143.0/24", 80), ("103.99.0.0/24", 46)]
    assert {source: len(users[source]) for source, _ in failures.most_common(3)} == {
        "183.62.140.0/24": 10, "187.141.143.0/24": 28, "103.99.0.0/24": 19,
    }
    root = identity_hash("root", SITE)
    assert sum(1 for e in envelopes if e["type"] == "auth" and e["data"].get("user_hash") == root) == 379
    assert all(e["data"].get("privileged") is True for e in envelopes if e["type"] == "auth" and e["data"].get("user_hash") == root)


def test_no_address_or_user_name_survives(raw_lines: list[str], converted: tuple[list[dict[str, Any]], ConversionStats]) -> None:
    envelopes, _ = converted
    text = "\n".join(raw_lines)
    addresses = set(re.findall(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", text))
    names = set(re.findall(r"(?:Invalid user|(?:Failed|Accepted) \S+ for(?: invalid user)?) (.*?) from ", text))
    names |= set(re.findall(r" user=(\S+)", text)) | set(re.findall(r"session \w+ for user (\S+)", text))
    names.discard("invalid user")
    hosts = {h for h in re.findall(r"rhost=(\S+)", text) if re.search(r"[a-z]", h)}
    assert (len(addresses), len(names), len(hosts)) == (30, 64, 2)  # what the checks below must not find
    values = [value for e in envelopes for value in _strings(e)]
    assert not set(values) & names
    output = "\n".join(json.dumps(e) for e in envelopes)
    for host in hosts:
        assert host not in output
    for name in names:
        if len(name) >= 5 and re.search(r"[g-z]", name, re.IGNORECASE):
            assert name not in output, name
    for quad in re.finditer(r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(\S{0,3})", output):
        assert quad.group(1).endswith(".0") and quad.group(2) == "/24", quad.group(0)
        assert quad.group(1) not in addresses
    sources = {e["data"]["source"] for e in envelopes if e["type"] == "auth" and "source" in e["data"]}
    assert all(source.endswith(".0/24") for source in sources)


def test_every_signal_validates_in_time_order(converted: tuple[list[dict[str, Any]], ConversionStats], tmp_path: Path) -> None:
    envelopes, _ = converted
    last = 0
    ids = Counter()
    for number, envelope in enumerate(envelopes, start=1):
        record = parse_record(json.dumps(envelope, separators=(",", ":")).encode(), number)
        assert not isinstance(record, str), f"{envelope}: {record}"
        assert record.ts >= last
        last = record.ts
        ids[record.id] += 1
    assert max(count for id_, count in ids.items() if not id_.startswith("tick-")) == 1
    assert envelopes[0]["ts"] == "2026-12-10T06:55:40.000Z"
    assert envelopes[-1]["ts"] == "2026-12-10T11:04:50.000Z"
    written = convert_file(OPENSSH_SAMPLE, tmp_path / "ssh.jsonl", SITE, YEAR)
    assert written.signals + written.ticks == len((tmp_path / "ssh.jsonl").read_text(encoding="utf-8").splitlines())


def test_echo_lines_fold_into_the_attempt_and_lone_probes_count() -> None:
    lines = [
        "Dec 31 23:59:50 host sshd[10]: Invalid user bob from 198.51.100.7",
        "Dec 31 23:59:50 host sshd[10]: input_userauth_request: invalid user bob [preauth]",
        "Dec 31 23:59:51 host sshd[10]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
        "rhost=198.51.100.7 ",
        "Dec 31 23:59:53 host sshd[10]: Failed password for invalid user bob from 198.51.100.7 port 4000 ssh2",
        "Dec 31 23:59:54 host sshd[11]: Invalid user eve from 203.0.113.9",
        "Dec 31 23:59:55 host sshd[11]: Connection closed by 203.0.113.9 [preauth]",
        "Jan  1 00:00:02 host sshd[12]: message repeated 2 times: [ Failed password for root from 2001:db8:1:2::5 port 22 ssh2]",
        "not a syslog line",
        "Feb 30 00:00:02 host sshd[12]: Failed password for root from 192.0.2.1 port 22 ssh2",
    ]
    stats = ConversionStats()
    out = [e for e in convert_openssh(lines, "t-site", 2026, stats=stats, ticks=False)]
    summary = [(e["ts"], e["data"]["outcome"], e["data"]["method"], e["data"]["source"], e["data"]["user_len"]) for e in out]
    assert summary == [
        ("2026-12-31T23:59:53.000Z", "failure", "password", "198.51.100.0/24", 3),
        ("2026-12-31T23:59:54.000Z", "failure", "other", "203.0.113.0/24", 3),
        ("2027-01-01T00:00:02.000Z", "failure", "password", "2001:db8:1::/48", 4),
        ("2027-01-01T00:00:02.000Z", "failure", "password", "2001:db8:1::/48", 4),
    ]
    assert stats.folded == 3
    assert stats.emitted_lines == 3
    assert stats.not_auth == {"connection closed": 1}
    assert stats.unparsed == 2  # the non-syslog line and the impossible date
    assert stats.lines == len(lines)


def test_network_source_never_keeps_the_host_part() -> None:
    assert network_source("173.234.31.186", "k") == "173.234.31.0/24"
    assert network_source("2001:db8:abcd:12::1", "k") == "2001:db8:abcd::/48"
    hashed = network_source("ec2-52-80-34-196.cn-north-1.compute.amazonaws.com.cn", "k")
    assert re.fullmatch(r"[0-9a-f]{64}", hashed)


def test_real_attacks_fire_the_auth_rules(tmp_path: Path) -> None:
    path = tmp_path / "ssh.jsonl"
    convert_file(OPENSSH_SAMPLE, path, SITE, YEAR)
    wanted = {"credential-stuffing", "auth-behaviour-shifted", "login-lockouts"}
    rules = [rule for rule in load_rules(RULES_DIR).enabled_rules if rule.id in wanted]
    assert {rule.id for rule in rules} == wanted
    result = replay(str(path), rules)
    assert result.rejects == []
    alerts = [json.loads(line) for line in result.alerts]
    firing = defaultdict(list)
    for alert in alerts:
        if alert["status"] == "firing" and alert["seq"] == 1:
            firing[alert["rule"]["id"]].append((alert["started_at"][11:19], alert["group"]["source"]))
    # 187.141.143.0/24 tried 28 different users in 25 minutes; 103.99.0.0/24 peaked at 19 (< 20).
    assert firing["credential-stuffing"] == [("09:19:00", "187.141.143.0/24")]
    # New sources failing 20+ times in 10 minutes, once the site has 2h10m of history.
    assert sorted(firing["auth-behaviour-shifted"]) == [
        ("09:12:18", "103.99.0.0/24"), ("09:14:32", "187.141.143.0/24"), ("10:55:07", "183.62.140.0/24"),
    ]
    assert "login-lockouts" not in firing  # sshd disconnects after MaxAuthTries; it does not lock accounts


@pytest.mark.parametrize("address", [
    "203.0.113.7", "::ffff:203.0.113.7", "[::ffff:203.0.113.7]", "2001:db8:1234:5678::1", "fe80::1%eth0", "10.0.0.255",
])
def test_the_converter_and_the_dispatcher_keep_the_same_network_of_an_address(address: str) -> None:
    # One privacy contract, one implementation: an IPv4-mapped IPv6 address is its IPv4 /24 in both.
    assert network_source(address, SITE) == network_prefix(address)
    assert network_source("::ffff:203.0.113.7", SITE) == "203.0.113.0/24"


def test_a_host_name_is_hashed_not_kept() -> None:
    assert network_source("Host.Example", SITE) == identity_hash("host.example", SITE)


def test_the_samples_ship_inside_the_package_unchanged_with_their_notice() -> None:
    folder = Path(simulate.__file__).resolve().parent / "data" / "loghub"
    assert OPENSSH_SAMPLE.parent == folder
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "The above license notice shall be included in all copies of the datasets." in readme
    listed = dict(re.findall(r"^\| `(\S+\.log)` \|.*\| `([0-9a-f]{64})` \|$", readme, re.MULTILINE))
    assert listed.keys() == {path.name for path in folder.glob("*.log")} == {"OpenSSH_2k.log", "Linux_2k.log"}
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_the_command_reports_a_missing_log_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.log"), str(tmp_path / "out.jsonl")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'missing.log'}: No such file or directory\n"


def test_the_command_converts_the_sample_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "out.jsonl")]) == 0
    assert capsys.readouterr().out.startswith("2000 lines: 527 became 535 auth signals")
