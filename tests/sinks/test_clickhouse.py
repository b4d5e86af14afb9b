"""ClickHouse storage against real engines: embedded chDB in this process, chDB in subprocesses, and a server over HTTP.

Nothing here mocks ClickHouse. Faults are real: a data directory held by
another process, a table detached while a flow writes, a server that answers
an insert with an error, a port nobody listens on. Waiting is made instant by
handing the store a fake clock and sleep where a test counts retries.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from flows.replay import replay
from schemas.errors import root_cause
from schemas.factory import make_signal, signal_line
from schemas.records import Record, compact_json, parse_lines
from schemas.rule_loader import load_rules
from schemas.store import MIGRATIONS, REJECTED_COLUMNS, SIGNAL_COLUMNS, TABLES, rejected_row, signal_rows
from simulate.corpus import write_corpus
from sinks.clickhouse import (
    DEFAULT_DATABASE,
    EpochStoreSink,
    RetryPolicy,
    Store,
    StoreAddress,
    StoreConfigError,
    StoreError,
    StoreRefused,
    StoreSink,
    StoreUnavailable,
    parse_dsn,
)
from tests.support.ports import free_port
from tests.support.store import TTL_DAYS, HttpFront, database_name

LOGYSTERA = shutil.which("logystera", path=str(Path(sys.executable).parent)) or shutil.which("logystera")
RULES = Path(__file__).resolve().parents[2] / "rules"
TIMEOUT = 60
VIEWS = ("signals_final", "alerts_final", "evidence_final", "metrics_final", "rejected_hourly", "deliveries_final")
ALERT_LOOKUP = ("alerts_by_id", "alerts_by_id_writer")  # migration 3: the table and the materialized view filling it
SILENCES = ("silences", "silences_current")  # migration 4: silences in the store, their newest versions

# Everything an analyst reads, as (section, key, value) strings: the same query in this process and through `logystera sql`.
SNAPSHOT_SQL = " UNION ALL ".join([
    *(f"SELECT 'count' AS section, '{view}' AS key, toString(count()) AS value FROM {view}" for view in VIEWS),
    "SELECT 'rejected_hourly', concat(toString(hour), ' ', site, ' ', reason), toString(rejected) FROM rejected_hourly",
    "SELECT 'metric', metric, concat(toString(round(sum(value), 3)), ' ', toString(sum(signals))) FROM metrics_final GROUP BY metric",
    "SELECT 'alert', concat(alert_id, '/', toString(seq)), record FROM alerts_final",
    "SELECT 'evidence', concat(alert_id, '/', toString(seq), '/', toString(position)), signal_id FROM evidence_final",
    "SELECT 'distinct', 'signal ids', toString(uniqExact(id)) FROM signals_final",
])

Snapshot = list[tuple[str, str, str]]


def snapshot(store: Store) -> Snapshot:
    return sorted(tuple(row) for row in store.query(SNAPSHOT_SQL).result_rows)


def counts(rows: Snapshot) -> dict[str, int]:
    return {key: int(value) for section, key, value in rows if section in ("count", "distinct")}


def section(rows: Snapshot, name: str) -> dict[str, str]:
    return {key: value for kind, key, value in rows if kind == name}


class FakeTime:
    """The store's clock and sleep: sleeping advances the clock at once; ``on_sleep(n)`` runs at the n-th sleep."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep
        self.readings = 0

    def clock(self) -> float:
        self.readings += 1
        assert self.readings < 10_000, "the clock is read again and again but time never passes: a retry loop that never sleeps"
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


class RecordingStore(Store):
    """A real store that remembers every acknowledged insert, and can run a fault just before an insert."""

    def __init__(self, *args: Any, before_insert: Callable[[RecordingStore, str], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acknowledged: list[tuple[str, int]] = []
        self.before_insert = before_insert

    def insert(self, table: str, *args: Any, **kwargs: Any) -> int:
        if self.before_insert is not None:
            self.before_insert(self, table)
        count = super().insert(table, *args, **kwargs)
        self.acknowledged.append((table, count))
        return count

    def acknowledged_rows(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for table, count in self.acknowledged:
            total[table] += count
        return total


def table_rows(store: Store, table: str) -> int:
    """Rows physically in a table (no FINAL): what was written, duplicates included."""
    return int(store.query(f"SELECT count() FROM {store.database}.{table}").result_rows[0][0])


def records_of(lines: list[str]) -> list[Record]:
    records, rejects = parse_lines((number, line.encode()) for number, line in enumerate(lines, 1))
    assert not rejects, rejects
    return records


def mail_lines(count: int, start_second: int = 0, site: str = "shop-a") -> list[str]:
    return [
        signal_line(make_signal(site, "mail", f"2026-11-28T10:{(start_second + i) // 60:02d}:{(start_second + i) % 60:02d}Z",
                                f"mail-{site}-{start_second + i:06d}", seq=start_second + i, outcome="sent", transport="smtp"))
        for i in range(count)
    ]


# -- corpora -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    path: Path
    records: list[Record]
    rejected: int

    @property
    def signals(self) -> list[Record]:
        return [record for record in self.records if record.type != "tick"]

    def of_type(self, type_: str) -> list[Record]:
        return [record for record in self.records if record.type == type_]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Ten minutes of three sites: alerts with evidence, rejected lines, every metric."""
    path = tmp_path_factory.mktemp("corpus") / "signals.jsonl"
    write_corpus(path, 3000, 3, seed=11, duration_s=600)
    with open(path, "rb") as lines:
        records, rejects = parse_lines(enumerate((line.rstrip(b"\n") for line in lines), 1))
    assert rejects and records
    return Corpus(path, records, len(rejects))


@pytest.fixture(scope="module")
def ruleset() -> Any:
    return load_rules(RULES)


# -- DSNs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dsn", "path", "database", "text"), [
    ("chdb:///var/lib/logystera", "/var/lib/logystera", DEFAULT_DATABASE, "chdb:///var/lib/logystera"),
    ("chdb://.logystera/store", ".logystera/store", DEFAULT_DATABASE, "chdb://.logystera/store"),
    ("chdb://store", "store", DEFAULT_DATABASE, "chdb://store"),
    ("chdb:///data/ch?database=analytics_2", "/data/ch", "analytics_2", "chdb:///data/ch?database=analytics_2"),
    ("chdb:///data/ch?database=logystera", "/data/ch", "logystera", "chdb:///data/ch"),
])
def test_chdb_dsns(dsn: str, path: str, database: str, text: str) -> None:
    address = parse_dsn(dsn)
    assert (address.kind, address.path, address.database) == ("chdb", path, database)
    assert str(address) == text
    assert parse_dsn(str(address)) == address


@pytest.mark.parametrize(("dsn", "expected", "text"), [
    ("http://alice:s3cret@ch.internal:9000/events",
     StoreAddress("http", host="ch.internal", port=9000, username="alice", password="s3cret", database="events"),
     "http://alice@ch.internal:9000/events"),
    ("https://alice:s3cret@ch.example.com/events",
     StoreAddress("http", host="ch.example.com", port=8443, username="alice", password="s3cret", database="events", secure=True),
     "https://alice@ch.example.com:8443/events"),
    ("http://localhost",
     StoreAddress("http", host="localhost", port=8123, username="default", password="", database=DEFAULT_DATABASE),
     "http://default@localhost:8123/logystera"),
    ("http://ana%2Bops:p%40ss%3Aw%2Frd%25@127.0.0.1:8123/",
     StoreAddress("http", host="127.0.0.1", port=8123, username="ana+ops", password="p@ss:w/rd%", database=DEFAULT_DATABASE),
     "http://ana+ops@127.0.0.1:8123/logystera"),
])
def test_http_dsns(dsn: str, expected: StoreAddress, text: str) -> None:
    address = parse_dsn(dsn)
    assert address == expected
    assert str(address) == text


@pytest.mark.parametrize(("dsn", "message"), [
    ("", "store DSN must be chdb:///path or http(s)://user:password@host:8123/database"),
    ("chdb://", "chdb DSN needs a directory"),
    ("chdb://?database=x", "chdb DSN needs a directory"),
    ("chdb:///data?db=x", "store DSN option 'db' is unknown (known: database, give_up_after, ttl_days)"),
    ("chdb:///data?database=x&compress=1", "store DSN option 'compress' is unknown"),
    ("chdb:///data?database=a-b", "store database 'a-b' must be letters, digits and underscores"),
    ("chdb:///data?database=1abc", "store database '1abc' must be"),
    ("chdb:///data?database=x;DROP%20TABLE%20y", "store database 'x;DROP TABLE y' must be"),
    ("chdb:///data?database=" + "a" * 64, "store database 'aaaa"),
    ("ftp://host/db", "store DSN must be chdb:///path or http(s)://"),
    ("clickhouse://host:9000/db", "store DSN must be chdb:///path or http(s)://"),
    ("/var/lib/logystera", "store DSN must be chdb:///path or http(s)://"),
    ("http:///events", "store DSN must be chdb:///path or http(s)://"),
    ("http://user:Sekr1t@host:99999/db", "store DSN has a bad port"),
    ("http://user:Sekr1t@host:port/db", "store DSN has a bad port"),
    ("ftp://user:Sekr1t@host/db", "store DSN must be chdb:///path or http(s)://"),
    ("http://host/events-2026", "store database 'events-2026' must be"),
    ("http://host/db/table", "store database 'db/table' must be"),
])
def test_bad_dsns_are_config_errors(dsn: str, message: str) -> None:
    with pytest.raises(StoreConfigError) as caught:
        parse_dsn(dsn)
    assert str(caught.value).startswith(message)
    assert "Sekr1t" not in str(caught.value)
    assert isinstance(caught.value, StoreError)


def test_the_password_never_shows_in_text_of_an_address() -> None:
    address = parse_dsn("https://ops:Hunter2-Sekret@ch.example.com:8443/prod")
    assert address.password == "Hunter2-Sekret"
    for text in (str(address), repr(address), f"{address}", f"{address!r}"):
        assert "Hunter2-Sekret" not in text
        assert "ch.example.com" in text


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LOGYSTERA is not None, "the logystera console script is not installed"
    return subprocess.run([LOGYSTERA, *args], capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT, cwd=cwd, check=False)


@pytest.mark.process
def test_cli_reports_a_bad_dsn_as_one_usage_line(tmp_path: Path) -> None:
    result = run_cli("db", "migrate", "--store", f"chdb://{tmp_path}/store?dbname=x")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "logystera: error: --store: store DSN option 'dbname' is unknown (known: database, give_up_after, ttl_days)\n"
    assert not (tmp_path / "store").exists()


# -- the HTTP interface --------------------------------------------------------------------------------

HTTP_USER, HTTP_PASSWORD_ENCODED = "ana%2Bops", "p%40ss%3Aw%2Frd"


def http_dsn(front: HttpFront, database: str, password: str = HTTP_PASSWORD_ENCODED) -> str:
    return f"http://{HTTP_USER}:{password}@127.0.0.1:{front.port}/{database}"


def test_http_store_connects_with_the_decoded_credentials_and_works_in_its_database(
    http_front: HttpFront, chdb_dir: Path, request: pytest.FixtureRequest,
) -> None:
    database = database_name(request.node.name)
    store = Store(parse_dsn(http_dsn(http_front, database)), ttl_days=TTL_DAYS)
    assert str(store.address) == f"http://ana+ops@127.0.0.1:{http_front.port}/{database}"
    assert store.migrate() == [migration.version for migration in MIGRATIONS]
    assert store.migrate() == []
    assert http_front.requests, "the client never reached the server"
    assert {(user, password) for user, password, _, _ in http_front.requests} == {("ana+ops", "p@ss:w/rd")}
    # The first run creates the database from the server's default one; once it exists, statements run in it.
    create = [db for _, _, db, sql in http_front.requests if sql.startswith("CREATE DATABASE")]
    assert create == ["default", database]
    assert store.query("SELECT currentDatabase()").result_rows == [(database,)]
    assert http_front.requests[-1][2] == database
    rows = signal_rows(records_of(mail_lines(3)))
    assert store.insert("signals", SIGNAL_COLUMNS, [list(column) for column in zip(*rows, strict=True)]) == 3
    assert store.query("SELECT id FROM signals_final ORDER BY id").result_rows == [(row[3],) for row in rows]
    # Everything landed in the real engine behind the server.
    embedded = Store(parse_dsn(f"chdb://{chdb_dir}?database={database}"))
    tables = {row[0] for row in embedded.query(f"SELECT name FROM system.tables WHERE database = '{database}'").result_rows}
    assert tables == {*TABLES, *VIEWS, *ALERT_LOOKUP, *SILENCES, "schema_migrations"}
    assert table_rows(embedded, "signals") == 3


def test_a_replay_through_the_server_stores_what_the_embedded_store_stores(
    http_front: HttpFront, store: Store, corpus: Corpus, ruleset: Any, request: pytest.FixtureRequest,
) -> None:
    over_http = Store.open(http_dsn(http_front, database_name(request.node.name)), ttl_days=TTL_DAYS)
    by_http = replay(str(corpus.path), ruleset.enabled_rules, store=over_http, metrics=ruleset.metrics)
    embedded = replay(str(corpus.path), ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    assert by_http.alerts == embedded.alerts and by_http.alerts
    stored = snapshot(over_http)
    assert stored == snapshot(store)
    assert counts(stored)["signals_final"] == len(corpus.signals)
    assert sum(1 for _, _, _, sql in http_front.requests if sql.startswith("INSERT INTO")) >= 5


def test_a_wrong_password_fails_at_once_without_showing_any_password(http_front: HttpFront, request: pytest.FixtureRequest) -> None:
    # AUTHENTICATION_FAILED is the same answer the next time: reported at once, not after the patience (decision 144).
    fake = FakeTime()
    database = database_name(request.node.name)
    store = Store(parse_dsn(http_dsn(http_front, database, password="Wr0ngHorse")),
                  retry=RetryPolicy(initial=0.1, ceiling=0.4, give_up_after=1.0), sleep=fake.sleep, clock=fake.clock)
    with pytest.raises(StoreRefused) as caught:
        store.migrate()
    message = str(caught.value)
    assert message.startswith(f"store http://ana+ops@127.0.0.1:{http_front.port}/{database} refused to run a command: ")
    assert "Code: 516." in message
    assert message.endswith("(not retried: the same request would be refused again)")
    assert "Wr0ngHorse" not in message and "p@ss" not in message
    assert "\n" not in message
    assert store.attempts_failed == 1 and fake.sleeps == []
    assert ("ana+ops", "Wr0ngHorse") in {(user, password) for user, password, _, _ in http_front.requests}


def test_an_unreachable_server_fails_after_the_configured_retries() -> None:
    port = free_port()
    fake = FakeTime()
    store = Store(parse_dsn(f"http://ops:Sekr1t-Value@127.0.0.1:{port}/events"),
                  retry=RetryPolicy(initial=0.1, ceiling=0.4, give_up_after=1.0), sleep=fake.sleep, clock=fake.clock)
    with pytest.raises(StoreUnavailable) as caught:
        store.check()
    message = str(caught.value)
    assert message.startswith(f"store http://ops@127.0.0.1:{port}/events failed to query for 0.7s (4 failed attempts); last error: ")
    assert "Sekr1t-Value" not in message
    assert store.attempts_failed == 4 and fake.sleeps == [0.1, 0.2, 0.4]
    with pytest.raises(StoreUnavailable):  # Store.open reports the same way
        Store.open(f"http://ops:Sekr1t-Value@127.0.0.1:{port}/events",
                   retry=RetryPolicy(initial=0.1, ceiling=0.1, give_up_after=0.15), sleep=fake.sleep, clock=fake.clock)


def test_a_request_the_engine_refuses_is_not_retried_and_a_missing_table_is(store_dsn: str) -> None:
    # The real engine's answers: a syntax error and an unknown setting come back the same every time; a table that is
    # missing may be attached again (restored) while the store retries (decision 144).
    fake = FakeTime()
    store = Store.open(store_dsn, retry=RetryPolicy(initial=0.1, ceiling=0.4, give_up_after=1.0), sleep=fake.sleep, clock=fake.clock)
    for sql, code in (("SELEC 1", 62), ("SELECT 1 SETTINGS no_such_setting = 1", 115)):
        failed_before = store.attempts_failed
        with pytest.raises(StoreRefused, match=f"refused to query: Code: {code}\\."):
            store.query(sql)
        assert store.attempts_failed == failed_before + 1 and fake.sleeps == []
    with pytest.raises(StoreUnavailable, match=r"failed to query for 0\.7s \(6 failed attempts\); last error: Code: 60\."):
        store.query("SELECT * FROM no_such_table")
    assert fake.sleeps == [0.1, 0.2, 0.4]  # the two refused requests before: one attempt each


def test_an_insert_the_server_rejects_twice_is_retried_on_a_new_connection_and_lands_once(
    http_front: HttpFront, request: pytest.FixtureRequest,
) -> None:
    database = database_name(request.node.name)
    fake = FakeTime()
    store = Store.open(http_dsn(http_front, database), ttl_days=TTL_DAYS,
                       retry=RetryPolicy(initial=0.1, ceiling=0.4, give_up_after=5.0), sleep=fake.sleep, clock=fake.clock)
    connects = sum(1 for *_, sql in http_front.requests if sql.startswith("SELECT version()"))
    http_front.fail_inserts = 2
    rows = signal_rows(records_of(mail_lines(4)))
    assert store.insert("signals", SIGNAL_COLUMNS, [list(column) for column in zip(*rows, strict=True)]) == 4
    assert (store.attempts_failed, fake.sleeps, http_front.fail_inserts) == (2, [0.1, 0.2], 0)
    assert sum(1 for *_, sql in http_front.requests if sql.startswith("SELECT version()")) == connects + 2
    assert store.query("SELECT count() FROM signals").result_rows == [(4,)]
    assert http_front.requests[-1][2] == database  # the new connection still works in the store's database


# -- migrations ----------------------------------------------------------------------------------------


def test_migrations_apply_once(store_dsn: str) -> None:
    store = Store(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    assert store.migrate() == [migration.version for migration in MIGRATIONS]
    assert store.migrate() == []
    assert Store(parse_dsn(store_dsn)).migrate() == []
    assert Store.open(store_dsn).migrate() == []
    database = store.database
    assert store.query(f"SELECT version, description FROM {database}.schema_migrations ORDER BY version").result_rows == [
        (1, "signals, alerts, evidence, metrics, rejected, deliveries and their deduplicated views"),
        (2, "retention (TTL) of signals and metrics without wrap-around for event times after 2106"),
        (3, "alerts_by_id: the notifications sorted by alert id, for the web console's alert page"),
        (4, "silences, and what held a notification back (deliveries.held_by)"),
    ]
    tables = {row[0] for row in store.query(f"SELECT name FROM system.tables WHERE database = '{database}'").result_rows}
    assert tables == {*TABLES, *VIEWS, *ALERT_LOOKUP, *SILENCES, "schema_migrations"}
    ttl = store.query(f"SELECT create_table_query FROM system.tables WHERE database = '{database}' AND name = 'signals'")
    assert f"toIntervalDay({TTL_DAYS})" in ttl.result_rows[0][0]


@pytest.mark.process
def test_cli_db_migrate_twice(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path}/store?database=ops"
    first = run_cli("db", "migrate", "--store", dsn)
    versions = ", ".join(str(migration.version) for migration in MIGRATIONS)
    assert (first.returncode, first.stdout) == (0, f"{dsn}: applied migration(s) {versions}\n"), first.stderr
    second = run_cli("db", "migrate", "--store", dsn)
    assert (second.returncode, second.stdout) == (0, f"{dsn}: schema already up to date\n"), second.stderr
    listed = run_cli("sql", "SELECT version FROM schema_migrations ORDER BY version", "--store", dsn, "--format", "json")
    expected = "".join(f'{{"version": {migration.version}}}\n' for migration in MIGRATIONS)
    assert (listed.returncode, listed.stdout) == (0, expected), listed.stderr



@pytest.mark.process
def test_inserts_and_queries_never_import_pandas(tmp_path: Path) -> None:
    # clickhouse-connect checks every insert's data for a DataFrame, which imported pandas (0.35 s, +107 MB) at the first.
    script = textwrap.dedent("""
        import sys, time
        from sinks.clickhouse import Store
        from schemas.store import METRIC_COLUMNS
        store = Store.open(sys.argv[1])  # a fresh directory: migrations insert too
        now = int(time.time() * 1000)  # within the retention
        store.insert("metrics", METRIC_COLUMNS, [["shop"], ["m"], ["{}"], [{"k": "v"}], [now], [60], [1.0], [1]])
        store.insert("schema_migrations", ("version", "description"), [[99], ["again"]])
        rows = store.query("SELECT count() FROM metrics").result_rows
        print(rows[0][0], "pandas" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script, f"chdb://{tmp_path}/store"],
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert (result.returncode, result.stdout) == (0, "1 False\n"), result.stderr

# -- the Bytewax sink ----------------------------------------------------------------------------------


def some_signal_rows(count: int) -> list[tuple[Any, ...]]:
    return signal_rows(records_of(mail_lines(count)))


def test_sink_writes_a_table_when_it_has_batch_rows_and_the_rest_at_close(store_dsn: str) -> None:
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    store.migrate()
    store.acknowledged.clear()
    fake = FakeTime()
    partition = StoreSink(store, batch_rows=3, max_delay=60.0, clock=fake.clock).build("store", 0, 1)
    rows = some_signal_rows(7)
    rejected = [rejected_row("signals.jsonl", 9, "shop-a", "data.email: field not allowed", rows[0][2])]
    partition.write_batch([("signals", rows[0:2])])
    partition.wait_written()
    assert (store.acknowledged, table_rows(store, "signals")) == ([], 0)
    partition.write_batch([("signals", rows[2:3]), ("rejected", rejected), ("signals", [])])
    partition.wait_written()
    assert (store.acknowledged, table_rows(store, "signals")) == ([("signals", 3)], 3)
    partition.write_batch([("signals", rows[3:7])])
    partition.wait_written()
    assert store.acknowledged == [("signals", 3), ("signals", 4)]
    assert table_rows(store, "rejected") == 0
    partition.close()
    assert store.acknowledged == [("signals", 3), ("signals", 4), ("rejected", 1)]
    assert store.query(f"SELECT id FROM {store.database}.signals ORDER BY id").result_rows == [(row[3],) for row in rows]
    stored = store.query(f"SELECT {', '.join(REJECTED_COLUMNS)} FROM {store.database}.rejected").result_rows
    assert [(source, line, site, reason) for source, line, site, reason, _ in stored] == [
        ("signals.jsonl", 9, "shop-a", "data.email: field not allowed"),
    ]
    partition.close()
    assert len(store.acknowledged) == 3


def test_sink_writes_everything_buffered_once_the_oldest_row_is_max_delay_old(store_dsn: str) -> None:
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    store.migrate()
    store.acknowledged.clear()
    fake = FakeTime()
    partition = StoreSink(store, batch_rows=1000, max_delay=2.0, clock=fake.clock).build("store", 0, 1)
    rows = some_signal_rows(4)
    rejected = [rejected_row("in.jsonl", 1, "", "invalid JSON", rows[0][2])]
    partition.write_batch([("signals", rows[0:1])])
    fake.now = 1.9
    partition.write_batch([("signals", rows[1:2])])
    partition.wait_written()
    assert store.acknowledged == []
    fake.now = 2.0
    partition.write_batch([("rejected", rejected)])
    partition.wait_written()
    assert store.acknowledged == [("signals", 2), ("rejected", 1)]
    fake.now = 2.5
    partition.write_batch([("signals", rows[2:3])])
    fake.now = 4.4  # the oldest buffered row is 1.9 s old
    partition.write_batch([("signals", rows[3:4])])
    partition.wait_written()
    assert store.acknowledged == [("signals", 2), ("rejected", 1)]
    partition.close()
    assert store.acknowledged == [("signals", 2), ("rejected", 1), ("signals", 2)]
    assert table_rows(store, "signals") == 4


def test_sink_in_a_bytewax_run_writes_every_row_in_batches(store_dsn: str) -> None:
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    store.migrate()
    store.acknowledged.clear()
    rows = some_signal_rows(10)
    flow = Dataflow("sink_batches")
    op.output("store", op.input("rows", flow, TestingSource([("signals", [row]) for row in rows])),
              StoreSink(store, batch_rows=4, max_delay=3600.0))
    run_main(flow)
    assert store.acknowledged == [("signals", 4), ("signals", 4), ("signals", 2)]
    assert store.query(f"SELECT id FROM {store.database}.signals ORDER BY id").result_rows == [(row[3],) for row in rows]


def gated(store: RecordingStore, inserts: int) -> threading.Event:
    """Hold the store's first ``inserts`` inserts (in the sink's writer thread) until the returned event is set."""
    gate = threading.Event()
    held = [0]

    def before_insert(_store: RecordingStore, _table: str) -> None:
        held[0] += 1
        if held[0] <= inserts:
            assert gate.wait(TIMEOUT), "the test never opened the gate"

    store.before_insert = before_insert
    return gate


def stored_ids(store: Store) -> list[tuple[str]]:
    return store.query(f"SELECT id FROM {store.database}.signals ORDER BY id").result_rows


def test_an_epochs_end_waits_until_the_writer_has_written_every_row(store_dsn: str) -> None:
    # Bytewax commits an epoch once the sink's snapshot returns: the rows recovery counts as done must be in the store by then.
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    store.migrate()
    store.acknowledged.clear()
    gate = gated(store, 1)
    partition = EpochStoreSink(StoreSink(store, batch_rows=3, max_delay=3600.0), flush_every=3600.0).build_part("store", "signals", None)
    rows = some_signal_rows(5)
    partition.write_batch([rows[0:3]])  # batch_rows: handed to the writer, held at the gate; the worker goes on
    partition.write_batch([rows[3:5]])  # buffered
    ended = threading.Event()
    epoch_end = threading.Thread(target=lambda: (partition.snapshot(), ended.set()))
    epoch_end.start()
    assert not ended.wait(0.5)
    assert store.acknowledged == []
    gate.set()
    assert ended.wait(TIMEOUT)
    assert store.acknowledged == [("signals", 3), ("signals", 2)]
    assert stored_ids(store) == [(row[3],) for row in rows]
    partition.close()


def test_a_slow_store_holds_the_worker_once_pending_batches_wait(store_dsn: str) -> None:
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    store.migrate()
    store.acknowledged.clear()
    gate = gated(store, 1)
    partition = StoreSink(store, batch_rows=2, max_delay=3600.0, pending=2).build("store", 0, 1)
    rows = some_signal_rows(8)
    partition.write_batch([("signals", rows[0:2])])  # being written (held at the gate)
    partition.write_batch([("signals", rows[2:4])])  # waiting: two batches pending
    third = threading.Thread(target=partition.write_batch, args=([("signals", rows[4:6])],))
    third.start()
    third.join(0.5)
    assert third.is_alive()  # the worker waits: what a slow store leaves in memory stays bounded
    assert store.acknowledged == []
    gate.set()
    third.join(TIMEOUT)
    assert not third.is_alive()
    partition.write_batch([("signals", rows[6:8])])
    partition.close()
    assert store.acknowledged == [("signals", 2)] * 4
    assert stored_ids(store) == [(row[3],) for row in rows]


def test_small_batches_hold_the_worker_by_their_rows_not_their_number(store_dsn: str) -> None:
    # Every max_delay each table hands over what it has, often a few rows (alerts, evidence, rejected lines): counted as
    # batches, they filled the queue behind one large insert and held the worker.
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    store.migrate()
    store.acknowledged.clear()
    gate = gated(store, 1)
    partition = StoreSink(store, batch_rows=4, max_delay=0.0, pending=2).build("store", 0, 1)  # every write hands over
    rows = some_signal_rows(9)
    eight = threading.Thread(target=lambda: [partition.write_batch([("signals", [row])]) for row in rows[:8]])
    eight.start()
    eight.join(10)
    assert not eight.is_alive()  # eight batches of one row: what two batches of batch_rows hold
    ninth = threading.Thread(target=partition.write_batch, args=([("signals", rows[8:])],))
    ninth.start()
    ninth.join(0.5)
    assert ninth.is_alive()  # and no more: memory stays bounded
    assert store.acknowledged == []
    gate.set()
    ninth.join(TIMEOUT)
    assert not ninth.is_alive()
    partition.close()
    assert store.acknowledged == [("signals", 1)] * 9
    assert stored_ids(store) == sorted((row[3],) for row in rows)


def test_an_insert_that_fails_in_the_writer_is_raised_on_the_worker_and_nothing_after_it_is_written(store_dsn: str) -> None:
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    store.migrate()
    rows = some_signal_rows(8)
    bad = (*rows[2][:4], "not a number", rows[2][5])  # seq is a UInt64: clickhouse-connect refuses to encode it
    with pytest.raises(ValueError) as direct:  # what an insert of that row raises where it is called
        store.insert("signals", SIGNAL_COLUMNS, [[value] for value in bad])
    store.acknowledged.clear()
    gate = gated(store, 1)
    partition = StoreSink(store, batch_rows=2, max_delay=3600.0).build("store", 0, 1)
    partition.write_batch([("signals", rows[0:2])])  # held at the gate while the next two batches are handed over
    partition.write_batch([("signals", [bad, rows[3]]), ("signals", rows[4:6])])
    gate.set()
    with pytest.raises(ValueError) as waited:
        partition.wait_written()
    assert str(waited.value) == str(direct.value)
    with pytest.raises(ValueError) as next_write:
        partition.write_batch([("signals", rows[6:8])])
    assert next_write.value is waited.value
    with pytest.raises(ValueError) as closed:
        partition.close()
    assert closed.value is waited.value
    assert store.acknowledged == [("signals", 2)]  # the batch after the failed one was never written
    assert stored_ids(store) == [(row[3],) for row in rows[0:2]]


# -- replay with a store -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliReplays:
    dsn: str
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    alerts: list[str]
    alerts_again: list[str]
    stored: Snapshot
    stored_again: Snapshot


def cli_snapshot(dsn: str) -> Snapshot:
    result = run_cli("sql", SNAPSHOT_SQL, "--store", dsn, "--format", "json")
    assert result.returncode == 0, result.stderr
    return sorted((row["section"], row["key"], row["value"]) for row in map(json.loads, result.stdout.splitlines()))


@pytest.fixture(scope="module")
def cli_replays(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> CliReplays:
    """`logystera replay --store` twice over the same corpus, and what an analyst reads after each run."""
    directory = tmp_path_factory.mktemp("cli-store")
    dsn = f"chdb://{directory}/store?database=analytics"
    # The schema is created first with a long TTL, so that the dated corpus is not expired by a merge; replay migrates nothing more.
    prepare = subprocess.run(
        [sys.executable, "-c", f"import sys; from sinks.clickhouse import Store; Store.open(sys.argv[1], ttl_days={TTL_DAYS})", dsn],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert prepare.returncode == 0, prepare.stderr
    runs = []
    for name in ("first", "second"):
        out = directory / f"{name}.jsonl"
        result = run_cli("replay", str(corpus.path), "--rules", str(RULES), "--store", dsn, "--out", str(out))
        assert result.returncode == 0, result.stderr
        runs.append((result, out.read_text(encoding="utf-8").splitlines(), cli_snapshot(dsn)))
    (first, alerts, stored), (second, alerts_again, stored_again) = runs
    return CliReplays(dsn, first, second, alerts, alerts_again, stored, stored_again)


@pytest.mark.slow
@pytest.mark.process
def test_replay_with_a_store_fills_every_table(cli_replays: CliReplays, corpus: Corpus) -> None:
    totals = cli_replays.first.stderr.splitlines()[-1]
    assert totals == f"replayed {len(corpus.records)} signals, {corpus.rejected} invalid, 0 late"
    stored = cli_replays.stored
    seen = counts(stored)
    assert seen["signals_final"] == seen["signal ids"] == len(corpus.signals)
    assert seen["alerts_final"] == len(cli_replays.alerts) > 0
    assert sorted(section(stored, "alert").values()) == sorted(cli_replays.alerts)
    assert seen["evidence_final"] == sum(len(json.loads(line)["evidence"]) for line in cli_replays.alerts) > 0
    assert seen["metrics_final"] > 0
    assert seen["rejected_hourly"] > 0
    assert sum(int(value) for value in section(stored, "rejected_hourly").values()) == corpus.rejected
    assert seen["deliveries_final"] == 0
    # Each metric without `where` counts every signal of its type; sums add up the field.
    metrics = {name: tuple(map(float, value.split())) for name, value in section(stored, "metric").items()}
    requests = corpus.of_type("request")
    expected = {
        "auth_attempts": (len(corpus.of_type("auth")),) * 2,
        "mail_outcomes": (len(corpus.of_type("mail")),) * 2,
        "http_requests": (len(requests),) * 2,
        "http_request_duration_ms": (sum(record.data.duration_ms for record in requests), len(requests)),
        "php_errors": (len(corpus.of_type("php_error")),) * 2,
        "cron_events": (len(corpus.of_type("cron")),) * 2,
        "db_events": (len(corpus.of_type("db_event")),) * 2,
    }
    assert {name: metrics[name] for name in expected} == expected
    assert all(count > 0 for count, _ in expected.values())


@pytest.mark.slow
@pytest.mark.process
def test_replaying_the_same_corpus_again_changes_no_analyst_count(cli_replays: CliReplays) -> None:
    assert cli_replays.second.stderr == cli_replays.first.stderr
    assert cli_replays.alerts_again == cli_replays.alerts
    assert cli_replays.stored_again == cli_replays.stored
    # The second run did write: the raw table holds the rows of both runs until a merge folds them.
    raw = run_cli("sql", "SELECT count() AS n FROM signals", "--store", cli_replays.dsn, "--format", "json")
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["n"] >= counts(cli_replays.stored)["signals_final"]


def test_storing_changes_nothing_the_flow_decides(store: Store, corpus: Corpus, ruleset: Any) -> None:
    plain = replay(str(corpus.path), ruleset.enabled_rules)
    stored = replay(str(corpus.path), ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    assert (stored.alerts, stored.rejects, stored.totals_line) == (plain.alerts, plain.rejects, plain.totals_line)
    assert plain.alerts


@pytest.mark.slow
def test_a_replay_into_chdb_inserts_a_table_when_it_has_a_batch_or_at_the_end_not_by_time(
    store_dsn: str, corpus: Corpus, ruleset: Any,
) -> None:
    # No other process can read the directory while the replay holds it: a small insert every few seconds (each ~10 ms
    # of chDB) bought nothing. The flow is held up at its first notifications, past the sink's default max_delay (2 s).
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS)
    store.migrate()
    store.acknowledged.clear()
    batches: list[int] = []

    def slow_start(alerts: list[Any]) -> None:
        batches.append(len(alerts))
        if len(batches) <= 5:
            time.sleep(0.6)

    replay(str(corpus.path), ruleset.enabled_rules, store=store, metrics=ruleset.metrics, chunk_lines=500, on_alerts=slow_start)
    assert len(batches) > 5  # rows came after the waits: with a time limit, those so far would have been inserted then
    assert sorted(table for table, _ in store.acknowledged) == ["alerts", "evidence", "metrics", "rejected", "signals"]
    assert store.acknowledged_rows()["signals"] == table_rows(store, "signals") == len(corpus.signals)


METRIC_RULES = """\
- id: lockouts
  title: Lockouts
  severity: high
  subsystem: auth
  signal: auth
  where: {outcome: lockout}
  kind: match
"""
METRICS = """\
metrics:
  - name: mail_outcomes
    signal: mail
    labels:
      transport: [smtp, api]
      error_class: [auth, timeout]
    value: count
    resolution: 1m
  - name: privileged_logins
    signal: auth
    labels:
      privileged: [true]
    value: count
    resolution: 1m
  - name: request_ms
    signal: request
    labels:
      status: [200, 404]
    value: {sum: duration_ms}
    resolution: 5m
"""


def test_label_values_outside_the_declared_ones_are_other_and_nulls_none(store: Store, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "auth.yaml").write_text(METRIC_RULES, encoding="utf-8")
    (rules / "metrics.yaml").write_text(METRICS, encoding="utf-8")
    ruleset = load_rules(rules)

    def mail(second: int, transport: str, error_class: str | None) -> str:
        extra = {} if error_class is None else {"error_class": error_class}
        return signal_line(make_signal("shop", "mail", f"2026-11-28T10:{second // 60:02d}:{second % 60:02d}Z", f"mail-{second:05d}",
                                       outcome="failed", transport=transport, **extra))

    def auth(second: int, privileged: bool | None) -> str:
        extra = {} if privileged is None else {"privileged": privileged}
        return signal_line(make_signal("shop", "auth", f"2026-11-28T10:00:{second:02d}Z", f"auth-{second:05d}",
                                       outcome="success", method="password", **extra))

    def request(minute: int, status: int, duration_ms: int) -> str:
        return signal_line(make_signal("shop", "request", f"2026-11-28T10:{minute:02d}:00Z", f"request-{minute:05d}", method="GET",
                                       path="/", route_group="frontend", status=status, duration_ms=duration_ms))

    lines = [
        auth(1, True), auth(2, False), auth(3, None), request(0, 200, 120),
        mail(5, "smtp", None), mail(10, "smtp", None), mail(20, "ses", "auth"), mail(30, "api", "quota"),
        mail(65, "smtp", "timeout"), request(2, 500, 30), request(3, 503, 70), request(4, 404, 5),
    ]  # in time order: a signal more than the allowed lateness behind its site's clock would not be counted
    path = tmp_path / "signals.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = replay(str(path), ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    assert result.totals_line == "replayed 12 signals, 0 invalid, 0 late"

    stored = store.query(
        f"SELECT metric, labels_key, labels, toString(bucket_start), resolution_s, value, signals FROM {store.database}.metrics_final"
    ).result_rows

    def row(metric: str, labels: dict[str, str], bucket: str, resolution: int, value: float, signals: int) -> tuple[Any, ...]:
        return (metric, compact_json(labels), labels, f"2026-11-28 {bucket}.000", resolution, value, signals)

    assert sorted(stored) == sorted([
        row("mail_outcomes", {"error_class": "none", "transport": "smtp"}, "10:00:00", 60, 2.0, 2),
        row("mail_outcomes", {"error_class": "auth", "transport": "other"}, "10:00:00", 60, 1.0, 1),
        row("mail_outcomes", {"error_class": "other", "transport": "api"}, "10:00:00", 60, 1.0, 1),
        row("mail_outcomes", {"error_class": "timeout", "transport": "smtp"}, "10:01:00", 60, 1.0, 1),
        row("privileged_logins", {"privileged": "true"}, "10:00:00", 60, 1.0, 1),
        row("privileged_logins", {"privileged": "other"}, "10:00:00", 60, 1.0, 1),
        row("privileged_logins", {"privileged": "none"}, "10:00:00", 60, 1.0, 1),
        row("request_ms", {"status": "200"}, "10:00:00", 300, 120.0, 1),
        row("request_ms", {"status": "other"}, "10:00:00", 300, 100.0, 2),
        row("request_ms", {"status": "404"}, "10:00:00", 300, 5.0, 1),
    ])
    assert stored[0][1] == compact_json(dict(sorted(stored[0][2].items())))


# -- a store that fails --------------------------------------------------------------------------------

HOLD = textwrap.dedent("""\
    import sys, chdb
    connection = chdb.connect(sys.argv[1])
    connection.query("SELECT 1")
    print("ready", flush=True)
    sys.stdin.read()
""")


@contextmanager
def held_by_another_process(directory: Path) -> Iterator[subprocess.Popen[str]]:
    """Open a chDB directory in another process (which locks it) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=TIMEOUT)


@pytest.mark.process
@pytest.mark.parametrize("command", [["replay", "{corpus}", "--rules", str(RULES)], ["db", "migrate"]], ids=["replay", "migrate"])
def test_a_directory_locked_by_another_process_stops_the_command_at_once_with_one_line(
    tmp_path: Path, corpus: Corpus, command: list[str],
) -> None:
    directory = tmp_path / "store"
    assert LOGYSTERA is not None
    with held_by_another_process(directory):
        started = time.monotonic()
        result = subprocess.run(
            # The default patience (a minute): the lock is not waited for, whatever it is.
            [LOGYSTERA, *(part.format(corpus=corpus.path) for part in command), "--store", f"chdb://{directory}"],
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )
        elapsed = time.monotonic() - started
    assert (result.returncode, result.stdout) == (1, "")
    # One line, ours: chDB was not asked to open the directory, so it logged nothing.
    assert result.stderr == (f"logystera: error: store chdb://{directory}: {directory} is in use by another process "
                             "(a chDB directory is opened by one process at a time)\n")
    assert elapsed < 20


def detach_once(table: str, done: list[str]) -> Callable[[RecordingStore, str], None]:
    """A fault: just before the first insert into ``table``, the table disappears (DETACH TABLE)."""

    def before_insert(store: RecordingStore, target: str) -> None:
        if target == table and not done:
            store.command(f"DETACH TABLE {store.database}.{table}")
            done.append(table)

    return before_insert


def test_a_table_lost_during_a_replay_stops_it_with_a_clear_error_and_acknowledged_rows_stay(
    store_dsn: str, corpus: Corpus, ruleset: Any,
) -> None:
    fake = FakeTime()
    detached: list[str] = []
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS, retry=RetryPolicy(initial=0.1, ceiling=0.4, give_up_after=1.0),
                           sleep=fake.sleep, clock=fake.clock, before_insert=detach_once("metrics", detached))
    store.migrate()
    store.acknowledged.clear()
    with pytest.raises(StoreUnavailable) as caught:
        replay(str(corpus.path), ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    message = str(caught.value)
    assert re.fullmatch(rf"store {re.escape(str(store.address))} failed to \w[\w ]* for 0\.7s \(4 failed attempts\); "
                        r"last error: .*metrics.*UNKNOWN_TABLE.*", message), message
    assert (detached, fake.sleeps) == (["metrics"], [0.1, 0.2, 0.4])
    store.command(f"ATTACH TABLE {store.database}.metrics")
    acknowledged = store.acknowledged_rows()
    assert acknowledged["signals"] == len(corpus.signals)  # signals are buffered first, so written before metrics
    assert acknowledged["metrics"] == 0
    for table in TABLES:
        assert table_rows(store, table) == acknowledged[table], table


def test_a_table_lost_in_the_middle_of_a_flow_keeps_every_batch_written_before(store_dsn: str) -> None:
    fake = FakeTime()
    store = RecordingStore(parse_dsn(store_dsn), ttl_days=TTL_DAYS, retry=RetryPolicy(initial=0.1, ceiling=0.4, give_up_after=1.0),
                           sleep=fake.sleep, clock=fake.clock)
    store.migrate()
    store.acknowledged.clear()

    def third_batch_fails(store: RecordingStore, table: str) -> None:
        if len(store.acknowledged) == 2 and not fake.sleeps:
            store.command(f"DETACH TABLE {store.database}.signals")

    store.before_insert = third_batch_fails
    rows = some_signal_rows(30)
    flow = Dataflow("sink_fails")
    op.output("store", op.input("rows", flow, TestingSource([("signals", [row]) for row in rows])),
              StoreSink(store, batch_rows=5, max_delay=3600.0))
    with pytest.raises(Exception) as caught:  # Bytewax wraps what a step raised
        run_main(flow)
    failure = root_cause(caught.value, StoreUnavailable)
    assert isinstance(failure, StoreUnavailable) and "insert into signals" in str(failure)
    assert store.acknowledged == [("signals", 5), ("signals", 5)]
    store.command(f"ATTACH TABLE {store.database}.signals")
    assert store.query(f"SELECT id FROM {store.database}.signals ORDER BY id").result_rows == [(row[3],) for row in rows[:10]]


def test_a_table_that_comes_back_while_the_store_retries_loses_nothing(
    store: Store, store_dsn: str, corpus: Corpus, ruleset: Any, request: pytest.FixtureRequest,
) -> None:
    clean = replay(str(corpus.path), ruleset.enabled_rules, store=store, metrics=ruleset.metrics)
    dsn = store_dsn.replace(store.database, database_name(request.node.name + "_flaky"))
    detached: list[str] = []
    fake = FakeTime()
    flaky = RecordingStore(parse_dsn(dsn), ttl_days=TTL_DAYS, retry=RetryPolicy(initial=0.1, ceiling=0.4, give_up_after=5.0),
                           sleep=fake.sleep, clock=fake.clock, before_insert=detach_once("signals", detached))
    fake.on_sleep = lambda n: flaky.command(f"ATTACH TABLE {flaky.database}.signals") if n == 2 else None
    flaky.migrate()
    result = replay(str(corpus.path), ruleset.enabled_rules, store=flaky, metrics=ruleset.metrics)
    assert (detached, fake.sleeps, flaky.attempts_failed) == (["signals"], [0.1, 0.2], 2)
    assert result.alerts == clean.alerts
    assert snapshot(flaky) == snapshot(store)
    assert flaky.acknowledged_rows()["signals"] == table_rows(flaky, "signals") == len(corpus.signals)



def test_dsn_options_tune_retention_and_patience() -> None:
    """`ttl_days` and `give_up_after` ride on the DSN, for both deployments."""
    embedded = parse_dsn("chdb:///data?ttl_days=90&give_up_after=5")
    server = parse_dsn("https://u:p@ch.example:8443/logs?ttl_days=7")
    assert (embedded.ttl_days, embedded.give_up_after) == (90, 5.0)
    assert (server.ttl_days, server.give_up_after, server.database) == (7, 60.0, "logs")
    for bad, message in [
        ("chdb:///data?ttl_days=ninety", "store DSN option ttl_days must be a number, not 'ninety'"),
        ("chdb:///data?give_up_after=0", "store DSN option give_up_after is out of range"),
    ]:
        with pytest.raises(StoreConfigError) as caught:
            parse_dsn(bad)
        assert str(caught.value) == message
