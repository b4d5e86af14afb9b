"""The console's foundations: condition sentences, the viewer's site filter, scoped parameter-bound reads, refusals at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from schemas.rule_loader import load_rules
from schemas.store import SIGNAL_COLUMNS, signal_rows
from sinks.clickhouse import RetryPolicy, Store, parse_dsn
from tests.support.ports import free_port
from tests.support.processes import LOGYSTERA
from tests.support.store import TTL_DAYS, HttpFront, database_name
from tests.web.console import console_client
from web.access import EVERYONE, Viewer, pattern_is_valid
from web.reads import Reads
from web.sentence import condition_sentence

PACK = {rule.id: rule for rule in load_rules("rules").rules}


@pytest.mark.parametrize(("rule_id", "sentence"), [
    ("php-fatal-spike", "at least 5 `php_error` signals with `level` in fatal, parse within 5 minutes, per `component`; "
                        "pending 0s, resolve after 10m, suppress 1h"),
    ("http-5xx-ratio", "at least 20% of `request` signals have `status` ≥ 500 within 5 minutes (at least 50 signals); "
                       "pending 1m, resolve after 5m, suppress 1h"),
    ("credential-stuffing", "at least 20 distinct `user_hash` values among `auth` signals with `outcome` = failure within "
                            "10 minutes, per `source`; pending 0s, resolve after 10m, suppress 1h"),
    ("backup-missed", "no `cron` signal with `job` = backup/nightly and `event` = finished by the run of `0 2 * * *` "
                      "(Europe/Berlin) plus 2 hours grace; pending 0s, suppress 1d"),
    ("integration-silent", "no `integration` signal with `event` = heartbeat for 5 minutes; pending 0s, resolve after 2m, suppress 2h"),
    ("auth-behaviour-shifted", "`auth` signals with `outcome` = failure within 10 minutes at least 4× the rate of the 2 hours "
                               "before (at least 20 signals), per `source`; pending 0s, resolve after 10m, suppress 1h"),
    ("plugin-lifecycle-burst", "any `plugin` signal; bundled over 10 minutes, suppress 0s"),
])
def test_a_rule_reads_as_the_sentence_its_fields_make(rule_id: str, sentence: str) -> None:
    assert condition_sentence(PACK[rule_id]) == sentence


def test_every_rule_of_the_pack_has_a_sentence_naming_its_signal_types() -> None:
    for rule in PACK.values():
        types = rule.signal if isinstance(rule.signal, list) else [rule.signal]
        assert all(f"`{name}`" in condition_sentence(rule) for name in types), rule.id


SITES = ["shop-eu", "shop-us", "blog", "shop-eu.staging", "shopx"]


@pytest.mark.parametrize(("patterns", "visible"), [
    (("shop-eu",), {"shop-eu"}),
    (("shop-*",), {"shop-eu", "shop-us", "shop-eu.staging"}),
    (("shop-??",), {"shop-eu", "shop-us"}),
    (("blog", "shop-us"), {"blog", "shop-us"}),
    ((), set()),
])
def test_the_viewer_filter_means_the_same_in_python_and_in_the_store(store: Store, patterns: tuple[str, ...], visible: set[str]) -> None:
    viewer = Viewer(name="ana", sites=patterns)
    assert {site for site in SITES if viewer.may_see(site)} == visible
    rows = store.query("SELECT site FROM (SELECT arrayJoin({sites:Array(String)}) AS site) WHERE match(site, {p:String})",
                       parameters={"sites": SITES, "p": viewer.site_pattern}).result_rows
    assert {row[0] for row in rows} == visible


def test_everyone_sees_every_site_and_patterns_are_checked() -> None:
    assert EVERYONE.sees_everything and EVERYONE.may_see("anything")
    assert pattern_is_valid("shop-*") and pattern_is_valid("a.b_c-1")
    assert not pattern_is_valid("") and not pattern_is_valid("Shop") and not pattern_is_valid("a|b") and not pattern_is_valid("(.*)")


def _signals_of(store: Store, sites: list[str]) -> None:
    from schemas.factory import make_signal, signal_line
    from schemas.records import parse_lines

    lines = [signal_line(make_signal(site, "mail", f"2026-03-01T10:00:0{i}Z", f"sig-{i:05d}", transport="smtp", outcome="sent"))
             for i, site in enumerate(sites)]
    records, rejects = parse_lines(enumerate((line.encode() for line in lines), 1))
    assert rejects == []
    rows = signal_rows(records)
    store.insert("signals", SIGNAL_COLUMNS, [list(column) for column in zip(*rows, strict=True)])


def test_reads_keep_to_the_viewers_sites_and_bind_request_values(store: Store) -> None:
    _signals_of(store, ["shop-eu", "shop-us", "blog"])
    scoped = Reads(store, Viewer(name="ana", sites=("shop-*",)))
    sql = "SELECT site FROM signals_final WHERE $scope ORDER BY site"
    assert [row["site"] for row in scoped.rows("sites", sql)] == ["shop-eu", "shop-us"]
    assert [row["site"] for row in Reads(store, EVERYONE).rows("sites", sql)] == ["blog", "shop-eu", "shop-us"]
    # A value from the request is data, never SQL: a quote, a comment or markup matches nothing.
    for hostile in ("' OR 1=1 --", "blog' OR '1'='1", "<script>alert(1)</script>"):
        assert scoped.rows("one", "SELECT site FROM signals_final WHERE $scope AND site = {site:String}", {"site": hostile}) == []
    assert scoped.stats.queries == 4 and scoped.stats.rows_read > 0


def test_a_query_without_the_viewer_filter_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match=r"does not filter by the viewer's sites"):
        Reads(store, EVERYONE).rows("leak", "SELECT count() FROM signals_final")


def test_scoped_reads_work_over_the_http_interface(http_front: HttpFront, request: pytest.FixtureRequest) -> None:
    dsn = f"http://ana%2Bops:p%40ss%3Aw%2Frd@127.0.0.1:{http_front.port}/{database_name(request.node.name)}"
    store = Store.open(dsn, ttl_days=TTL_DAYS)
    _signals_of(store, ["shop-eu", "blog"])
    scoped = Reads(store, Viewer(name="ana", sites=("blog",)))
    assert scoped.rows("sites", "SELECT site, {x:String} AS x FROM signals_final WHERE $scope", {"x": "it's"}) == [
        {"site": "blog", "x": "it's"},
    ]


def _web(*args: str) -> subprocess.CompletedProcess[str]:
    assert LOGYSTERA is not None
    return subprocess.run([LOGYSTERA, "web", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.process
def test_without_users_the_console_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    result = _web("--store", f"chdb://{tmp_path}/store", "--host", "0.0.0.0")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("logystera: error: --host 0.0.0.0: without --users the console listens on loopback only "
                             "(it shows every site)\n")


@pytest.mark.process
def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _web("--store", f"chdb://{tmp_path}/store", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.startswith(f"logystera: error: --host/--port 127.0.0.1:{port}: ") and result.stderr.count("\n") == 1


def test_a_store_that_is_down_is_a_503_page_not_a_traceback() -> None:
    from schemas.rule_loader import RuleSet
    from web.app import ConsoleConfig

    store = Store(parse_dsn(f"http://127.0.0.1:{free_port()}/logystera"), retry=RetryPolicy(initial=0.01, give_up_after=0.05))
    with console_client(ConsoleConfig(store=store, ruleset=RuleSet(), store_dsn="http://127.0.0.1/x")) as client:
        health = client.get("/healthz")
        missing = client.get("/no/such/page")
    assert health.status_code == 503 and health.json() == {"status": "store unavailable"}
    assert missing.status_code == 404 and 'data-status="404"' in missing.text and "Traceback" not in missing.text
    assert missing.headers["content-security-policy"].startswith("default-src 'none'")
