"""ClickHouse storage through clickhouse-connect: embedded chDB or a server, one code path.

DSNs:

- ``chdb:///path/to/dir`` (optionally ``?database=NAME``) — the embedded
  default: the ClickHouse engine in this process, data in ``dir``. chDB opens one data directory per process, and a
  directory is meant for one process at a time: the process that runs the flow
  is the single writer; analysts read through ``logystera sql`` while no flow
  runs, or query a copy of the directory. A directory another process holds
  is :class:`StoreLocked` at once, never retried.
- ``http://user:password@host:8123/database`` (or ``https://``) — a ClickHouse
  server, as in production.

Delivery guarantee: at least once, made idempotent by the schema (rows carry
their identity; see :mod:`schemas.store`). The flow's sinks insert from a
writer thread while the worker goes on; the worker waits for it when a few
batches are already waiting (backpressure), at the end of every epoch and at
the end of the run. A failed insert is retried with bounded exponential
backoff, and after ``give_up_after`` seconds the run stops with
:class:`StoreUnavailable`, raised on the worker. Rows of batches written
before that stay stored; nothing is dropped silently. Passwords never appear
in errors or logs.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition
from typing_extensions import override

from schemas.errors import Failure, LogysteraError, UsageError
from schemas.store import MIGRATIONS, MIGRATIONS_TABLE, ROW_COLUMNS, Columns

DEFAULT_DATABASE = "logystera"
INSERT_SETTINGS = {"optimize_on_insert": 0}
"""Every table is a ReplacingMergeTree read through FINAL, which already replaces rows with the same key;
replacing them within each inserted block as well took about a quarter of chDB's insert time (measured on
200k signal rows in 50k batches: 0.37 → 0.27 s of chDB CPU), and a third of its CPU in a replay with the store."""
_LOW_CARDINALITY = re.compile(r"LowCardinality\((\w+(?:\([^()]*\))?)\)")


class StoreError(LogysteraError):
    """Root of storage errors: a bad DSN, a store that stays unavailable, one that refuses, one locked elsewhere."""


class StoreConfigError(StoreError, UsageError):
    """The DSN cannot be used."""


class StoreUnavailable(StoreError, Failure):
    """The store kept failing for longer than the configured patience."""


class StoreRefused(StoreError, Failure):
    """The store answered with an error that asking again would only repeat: reported at once, not retried.

    A syntax error, data it cannot parse, an unknown setting, wrong credentials (:data:`REFUSED_CODES`): retrying them
    until the patience runs out (60 s by default) only delayed the same message.
    """


REFUSED_CODES: frozenset[int] = frozenset({
    # The request itself: SYNTAX_ERROR, UNKNOWN_IDENTIFIER, UNKNOWN_FUNCTION, ILLEGAL_TYPE_OF_ARGUMENT,
    # TYPE_MISMATCH, ILLEGAL_COLUMN, NO_SUCH_COLUMN_IN_TABLE, BAD_ARGUMENTS, NOT_IMPLEMENTED,
    # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO, UNKNOWN_QUERY_PARAMETER, BAD_QUERY_PARAMETER.
    62, 47, 46, 43, 53, 44, 16, 36, 48, 395, 456, 457,
    # Its data: CANNOT_PARSE_TEXT, CANNOT_PARSE_INPUT_ASSERTION_FAILED, CANNOT_CONVERT_TYPE, INCORRECT_DATA.
    6, 27, 70, 117,
    # Its settings and who sends it: UNKNOWN_SETTING, READONLY, SETTING_CONSTRAINT_VIOLATION, ACCESS_DENIED,
    # AUTHENTICATION_FAILED.
    115, 164, 452, 497, 516,
})
"""ClickHouse error codes that are the same answer however often the request is made. Every other error is retried
for the store's patience: a connection lost or refused, a busy or overloaded server, a replica or Keeper away, and a
table or database missing for a while (being restored or attached again)."""


def _refused(error: Exception) -> bool:
    """Whether ``error`` is an answer of the server's that retrying would repeat (:data:`REFUSED_CODES`)."""
    return getattr(error, "code", None) in REFUSED_CODES


def _first_line(error: Exception) -> str:
    """The error's first line, at most 300 characters (a server's message can carry the whole statement and a stack)."""
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__


class StoreLocked(StoreError, Failure):
    """The chDB directory is open in another process: not retried, since only that process can let go of it."""


@dataclass(frozen=True)
class StoreAddress:
    """Where the store is; ``str()`` never shows the password."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 8123
    username: str = "default"
    password: str = field(default="", repr=False)
    database: str = DEFAULT_DATABASE
    secure: bool = False
    ttl_days: int = 30
    give_up_after: float = 60.0

    def __str__(self) -> str:
        if self.kind == "chdb":
            suffix = "" if self.database == DEFAULT_DATABASE else f"?database={self.database}"
            return f"chdb://{self.path}{suffix}"
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{self.database}"


def _checked_database(name: str) -> str:
    # The name is spliced into SQL, so it must be a plain identifier.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise StoreConfigError(f"store database {name!r} must be letters, digits and underscores")
    return name


_TUNING = {"ttl_days": int, "give_up_after": float}
"""DSN options that tune the store: data retention in days, and how long a failing store is retried (s)."""


def _options(query: str, known: set[str]) -> dict[str, str]:
    options = {name: values[-1] for name, values in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise StoreConfigError(f"store DSN option {unknown[0]!r} is unknown (known: {', '.join(sorted(known))})")
    return options


def _tuning(options: dict[str, str]) -> dict[str, Any]:
    tuned: dict[str, Any] = {}
    for name, kind in _TUNING.items():
        if name in options:
            try:
                tuned[name] = kind(options[name])
            except ValueError:
                raise StoreConfigError(f"store DSN option {name} must be a number, not {options[name]!r}") from None
            if tuned[name] <= 0 or (name == "ttl_days" and tuned[name] > 36_500):
                raise StoreConfigError(f"store DSN option {name} is out of range")
    return tuned


def parse_dsn(dsn: str) -> StoreAddress:
    """Parse ``chdb:///dir`` or ``http(s)://user:pass@host:port/db``; raise :class:`StoreConfigError`."""
    if dsn.startswith("chdb://"):
        path, _, query = dsn[len("chdb://"):].partition("?")
        if not path:
            raise StoreConfigError("chdb DSN needs a directory, e.g. chdb:///var/lib/logystera")
        options = _options(query, {"database", *_TUNING})
        database = options.get("database", DEFAULT_DATABASE)
        return StoreAddress(kind="chdb", path=path, database=_checked_database(database), **_tuning(options))
    parts = urlsplit(dsn)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreConfigError("store DSN must be chdb:///path or http(s)://user:password@host:8123/database")
    try:
        port = parts.port or (8443 if parts.scheme == "https" else 8123)
    except ValueError as error:
        raise StoreConfigError(f"store DSN has a bad port: {error}") from None
    database = _checked_database(parts.path.strip("/") or DEFAULT_DATABASE)
    return StoreAddress(
        kind="http",
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=database,
        secure=parts.scheme == "https",
        **_tuning(_options(parts.query, set(_TUNING))),
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: ``initial`` doubling up to ``ceiling``, for at most ``give_up_after`` s."""

    initial: float = 0.2
    ceiling: float = 5.0
    give_up_after: float = 60.0


def _locked_by_another_process(directory: Path) -> bool:
    """Whether another process holds the lock chDB (like ClickHouse) takes on the directory's ``status`` file."""
    import fcntl
    import os

    try:
        descriptor = os.open(directory / "status", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # also releases the lock if it was free and just taken
    return False


def _open_in_this_process(path: Path) -> bool:
    """Whether this process holds ``path`` open (Linux's ``/proc/self/fd``; elsewhere: not known, False)."""
    import os

    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/self/fd/{descriptor}") == str(path):
                return True
        except OSError:  # closed since the listing
            continue
    return False


def _held_elsewhere(address: StoreAddress, directory: Path) -> StoreLocked | None:
    """The error to raise if another process holds ``directory`` (retrying cannot help while it runs).

    The lock is on the ``status`` file chDB keeps open; when this process has it open, the lock is its own
    (another store on the same directory, or chDB used directly) and chDB itself decides.
    """
    if _open_in_this_process(directory / "status") or not _locked_by_another_process(directory):
        return None
    return StoreLocked(f"store {address}: {directory} is in use by another process "
                       "(a chDB directory is opened by one process at a time)")


def _without_pandas() -> None:
    """Keep clickhouse-connect from importing pandas at the first insert.

    Every insert asks clickhouse-connect's ``options.pd`` whether its data is
    a pandas DataFrame, and the first ask imports pandas: 0.35 s of CPU and
    +107 MB of peak RSS on an idle machine (1.6–2.8 s under load), in the
    writer thread holding the GIL, for a store that only ever inserts lists.
    Unless pandas is already imported, clickhouse-connect is told it is
    absent, as when it is not installed (a case it supports: pandas is
    optional): only its DataFrame methods (``query_df``, ``insert_df``),
    which Logystera does not use, would then say so.
    """
    import sys

    from clickhouse_connect.driver import options

    if "pandas" not in sys.modules and "pd" not in vars(options):
        options.pd = None  # type: ignore[attr-defined]
        options.pd_time_test = None  # type: ignore[attr-defined]


def _connect(address: StoreAddress) -> Any:
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError

    _without_pandas()

    if address.kind == "chdb":
        # clickhouse-connect reads chdb://a/b as host "a": hand it an absolute path.
        directory = Path(address.path).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        # Checked before chDB tries, which would log its failure in a dozen lines and say only
        # "Error initializing EmbeddedServer".
        locked = _held_elsewhere(address, directory)
        if locked is not None:
            raise locked
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{directory}")
        except ClickHouseError:
            locked = _held_elsewhere(address, directory)  # taken between the check and the open
            if locked is not None:
                raise locked from None
            raise
    return clickhouse_connect.get_client(
        host=address.host, port=address.port, username=address.username, password=address.password,
        secure=address.secure, database="default",
    )


class Store:
    """A connected store: migrations, retried inserts and queries, safe to share between worker threads."""

    def __init__(
        self,
        address: StoreAddress,
        ttl_days: int | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        connect: Callable[[StoreAddress], Any] = _connect,
    ) -> None:
        self.address = address
        self.database = address.database
        self.ttl_days = ttl_days if ttl_days is not None else address.ttl_days
        self.retry = retry or RetryPolicy(give_up_after=address.give_up_after)
        self.attempts_failed = 0
        self._sleep = sleep
        self._clock = clock
        self._connect = connect
        self._client: Any = None
        self._lock = threading.Lock()
        self._wire_types: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self._ready = False  # the database exists: unqualified names in queries resolve in it

    @classmethod
    def open(cls, dsn: str, **options: Any) -> Store:
        """Parse the DSN, connect, and apply pending migrations."""
        store = cls(parse_dsn(dsn), **options)
        store.migrate()
        return store

    def _with_retry(self, what: str, action: Callable[[Any], Any]) -> Any:
        """Run ``action(client)``, retrying with backoff; raise StoreUnavailable when patience runs out."""
        from clickhouse_connect.driver.exceptions import ClickHouseError  # here: a flow without a store never loads it
        started = self._clock()
        delay = self.retry.initial
        while True:
            try:
                with self._lock:
                    if self._client is None:
                        self._client = self._connect(self.address)
                        if self._ready:
                            self._client.database = self.database
                    return action(self._client)
            except (ClickHouseError, OSError) as error:  # refused, unreachable, locked, rejected: not stored
                self.attempts_failed += 1
                self._client = None if self.address.kind == "http" else self._client
                elapsed = self._clock() - started
                if _refused(error):
                    raise StoreRefused(f"store {self.address} refused to {what}: {_first_line(error)} (not retried: "
                                       "the same request would be refused again)") from error
                if elapsed + delay > self.retry.give_up_after:
                    raise StoreUnavailable(
                        f"store {self.address} failed to {what} for {elapsed:.1f}s "
                        f"({self.attempts_failed} failed attempts); last error: {_first_line(error)}"
                    ) from error
                self._sleep(delay)
                delay = min(delay * 2, self.retry.ceiling)

    def command(self, sql: str) -> Any:
        """Run one statement (DDL or admin)."""
        return self._with_retry("run a command", lambda client: client.command(sql))

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Run a query and return clickhouse-connect's result (``column_names``, ``result_rows``, ``summary``).

        ``parameters`` are bound by the server (``{name:Type}`` placeholders): values from a request or a
        signal never become SQL text.
        """
        return self._with_retry("query", lambda client: client.query(sql, parameters=parameters))

    def wire_types(self, table: str, columns: Sequence[str]) -> list[str]:
        """The column types to encode ``columns`` of ``table`` with.

        ``LowCardinality(T)`` columns are sent as plain ``T``: the server builds
        the dictionary itself, which measured twice as fast as clickhouse-connect
        building it in Python.
        """
        key = (table, tuple(columns))
        types = self._wire_types.get(key)
        if types is None:
            described = self.query(f"DESCRIBE TABLE {self.database}.{table}")
            declared = {row[0]: row[1] for row in described.result_rows}
            types = self._wire_types[key] = [_LOW_CARDINALITY.sub(r"\1", declared[name]) for name in columns]
        return types

    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]]) -> int:
        """Insert column-oriented ``data`` (one sequence per column); return the row count."""
        if not data or not data[0]:
            return 0
        types = self.wire_types(table, columns)
        self._with_retry(
            f"insert into {table}",
            lambda client: client.insert(
                f"{self.database}.{table}", data, column_names=list(columns), column_oriented=True,
                column_type_names=types, settings=INSERT_SETTINGS,
            ),
        )
        return len(data[0])

    def migrate(self) -> list[int]:
        """Create the database and apply every migration not yet recorded; return the versions applied."""
        self.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        self.command(MIGRATIONS_TABLE.format(db=self.database))
        versions = self.query(f"SELECT version FROM {self.database}.schema_migrations FINAL")  # noqa: S608 - checked name
        done = {row[0] for row in versions.result_rows}
        applied = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements:
                self.command(statement.format(db=self.database, ttl_days=self.ttl_days))
            self.insert("schema_migrations", ("version", "description"), [[migration.version], [migration.description]])
            applied.append(migration.version)
        self._ready = True
        if self._client is not None:
            self._client.database = self.database
        return applied

    def check(self) -> None:
        """Fail at start, not at the first alert, when the store cannot be reached."""
        self.query("SELECT 1")


StoreRows = list[tuple[Any, ...]] | Columns
"""Rows for one table, as tuples or as :class:`~schemas.store.Columns`."""
StoreItem = tuple[str, StoreRows]
"""What the flow hands the store: a table name and rows for it."""


class _StorePartition(StatelessSinkPartition[StoreItem]):
    """Buffers rows per table; a writer thread of its own inserts the batches, in the order they were handed over.

    The worker only buffers and hands over: chDB runs an insert without the
    GIL, so while the writer waits for it the worker goes on with the flow.
    Measured on a 200k-signal replay: the worker thread runs as many
    instructions as with a store that keeps nothing; the writer's 0.37 s of
    CPU (about 0.2 s of it holding the GIL: clickhouse-connect's encoding)
    and chDB's own threads (~0.45 s) can use another core. Every
    place that promises rows are stored waits for the writer: ``flush``
    (Bytewax's epoch end, through :class:`_TablePartition`) and ``close``.
    At most ``pending`` full batches' rows (``pending × batch_rows``) wait
    for it, the batch being written included: past that the worker blocks
    until one is written, which bounds memory when the store is slower than
    the flow. Rows, not batches: every ``max_delay`` each table hands over
    what it has, mostly a few hundred rows of alerts, evidence and rejected
    lines, and counted as batches these filled the queue behind one large
    insert (on a 200k-signal replay the worker waited 0.1–1 s there). What stops the writer (the store
    gave up: :class:`StoreUnavailable`, or any other error of an insert) is
    raised on the worker at its next call; the writer writes nothing after
    it, as a worker that had written itself would have stopped there.
    """

    def __init__(
        self, store: Store, batch_rows: int, max_delay: float, clock: Callable[[], float], pending: int,
        flush_every: float | None = None,
    ) -> None:
        self._store = store
        self._batch_rows = batch_rows
        self._max_delay = max_delay
        self._clock = clock
        self._room = pending * batch_rows  # rows that may wait for the writer
        self._waiting = 0  # rows in the batches handed over and not yet written
        self._flush_every = flush_every
        self._buffers: dict[str, list[list[Any]]] = {}  # per table, one list per column: inserted as they are
        self._oldest: float | None = None
        self._batches: deque[tuple[str, list[list[Any]]]] = deque()  # handed to the writer; the first is being written
        self._failure: Exception | None = None  # what stopped the writer, raised on the worker
        self._closing = False
        # One lock for the buffers, the batches and the failure: the worker and the writer both use them.
        self._changed = threading.Condition(threading.Lock())
        self._writer = threading.Thread(target=self._write, name="store-writer", daemon=True)
        self._writer.start()

    @override
    def write_batch(self, items: list[StoreItem]) -> None:
        with self._changed:
            self._raise_failure()
            for table, rows in items:
                if not rows:
                    continue
                buffer = self._buffers.get(table)
                if buffer is None:
                    buffer = self._buffers[table] = [[] for _ in ROW_COLUMNS[table]]
                for column, values in zip(buffer, rows.data if isinstance(rows, Columns) else zip(*rows, strict=True), strict=True):
                    column.extend(values)
                if self._oldest is None:
                    self._oldest = self._clock()
                if len(buffer[0]) >= self._batch_rows:
                    self._hand_over(table)
            if self._oldest is not None and self._clock() - self._oldest >= self._max_delay:
                self._hand_over_all()

    def flush(self) -> None:
        """Write everything buffered now; return once it is in the store."""
        with self._changed:
            self._raise_failure()
            self._hand_over_all()
        self.wait_written()

    def wait_written(self) -> None:
        """Return once every batch handed to the writer is in the store; raise what stopped the writer, if anything did."""
        with self._changed:
            self._changed.wait_for(lambda: not self._batches or self._failure is not None)
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _hand_over(self, table: str, wait: bool = True) -> None:
        """Give the writer a table's buffered rows (the lock held); with ``wait``, first wait for room (``pending`` batches' rows)."""
        if wait:
            self._changed.wait_for(lambda: self._waiting < self._room or self._failure is not None)
            self._raise_failure()
        columns = self._buffers.pop(table, None)
        if columns:
            self._batches.append((table, columns))
            self._waiting += len(columns[0])
            self._changed.notify_all()
        if not self._buffers:  # a buffer exists only while it holds rows
            self._oldest = None

    def _hand_over_all(self, wait: bool = True) -> None:
        for table in list(self._buffers):
            self._hand_over(table, wait)

    def _write(self) -> None:
        """The writer thread: insert the batches handed over, oldest first, until close or the first failure.

        With ``flush_every``, it also hands itself the rows that are ``max_delay`` old while no item arrives (a quiet
        live stream calls nothing), checking every ``flush_every`` seconds. It does not wait for room: it is what
        makes room, and a partition of the epoch sink holds one table.
        """
        while True:
            with self._changed:
                while not self._batches:
                    if self._closing:
                        return
                    if not self._changed.wait(self._flush_every) and self._oldest is not None \
                            and self._clock() - self._oldest >= self._max_delay:
                        self._hand_over_all(wait=False)
                table, columns = self._batches[0]
            try:
                self._store.insert(table, ROW_COLUMNS[table], columns)
            except Exception as error:  # the store gave up (or refused the rows): the worker raises it
                with self._changed:
                    self._failure = error
                    self._batches.clear()  # never written: the run stops at the failure
                    self._waiting = 0
                    self._changed.notify_all()
                return
            with self._changed:
                self._batches.popleft()
                self._waiting -= len(columns[0])
                self._changed.notify_all()

    @override
    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._changed:
                self._closing = True
                self._changed.notify_all()
            self._writer.join()


class StoreSink(DynamicSink[StoreItem]):
    """Bytewax sink writing ``(table, rows)`` items to a :class:`Store` in columnar batches.

    Rows are buffered per table and written when a table has ``batch_rows``
    rows, when the oldest buffered row is ``max_delay`` seconds old, and at the
    end of the run. Each partition has a writer thread that inserts its
    batches in order while the worker goes on; the worker waits for it only
    when ``pending × batch_rows`` rows are already waiting, and at the end of the run
    until everything is written. A store that fails for longer than its
    patience (:class:`StoreUnavailable`) stops the run at the worker's next
    write, or at the end of the run; nothing after the failed batch is written.

    ``max_delay`` is checked when items arrive, which suits replay (its input
    never pauses); the live path wraps this sink in :class:`EpochStoreSink`.
    """

    def __init__(
        self, store: Store, batch_rows: int = 50_000, max_delay: float = 2.0, clock: Callable[[], float] = time.monotonic,
        pending: int = 4,
    ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.max_delay = max_delay
        self._clock = clock
        self.pending = pending

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return self._partition()

    def _partition(self, flush_every: float | None = None) -> _StorePartition:
        return _StorePartition(self.store, self.batch_rows, self.max_delay, self._clock, self.pending, flush_every)


class _TablePartition(StatefulSinkPartition[StoreRows, None]):
    """The rows of one table, and a flush at the end of every epoch."""

    def __init__(self, table: str, rows: _StorePartition) -> None:
        self._table = table
        self._rows = rows

    @override
    def write_batch(self, values: list[StoreRows]) -> None:
        self._rows.write_batch([(self._table, rows) for rows in values])

    @override
    def snapshot(self) -> None:
        # Bytewax commits an epoch only after this returns: what recovery counts as done must be stored by then
        # (flush waits for the writer thread).
        self._rows.flush()

    @override
    def close(self) -> None:
        self._rows.close()


class EpochStoreSink(FixedPartitionedSink[StoreRows, None]):
    """The store sink for runs with Bytewax recovery: at least once across a crash.

    A :class:`StoreSink` buffers rows for up to ``max_delay``; after a crash,
    recovery replays the input from the last completed epoch only, so rows of
    an earlier epoch still in a buffer would be lost. This sink writes every
    buffered row before its epoch completes (Bytewax snapshots a partitioned
    sink at the end of each epoch it wrote in, and commits the epoch after
    that), besides the ``batch_rows`` / ``max_delay`` writes of the wrapped
    :class:`StoreSink` (the epoch's end waits until its writer thread has
    written them); and that thread checks ``max_delay`` every ``flush_every``
    seconds, so that rows do not wait for the next item on a quiet stream. It
    takes the same ``(table, rows)`` items, keyed by table: one partition per
    table, so each table has one writer.

    In a cluster, ``local`` says whether this process may write: a chDB
    directory is opened by one process, so there only the owner (process 0)
    lists the partitions and every row is exchanged to it; a ClickHouse
    server takes writes from every process, and the tables' partitions are
    spread over the cluster's workers.
    """

    def __init__(self, sink: StoreSink, flush_every: float = 0.5, local: bool = True) -> None:
        self.sink = sink
        self.flush_every = flush_every
        self.local = local
        self._tables = sorted(ROW_COLUMNS)  # Bytewax indexes partitions in sorted order

    @override
    def list_parts(self) -> list[str]:
        return list(self._tables) if self.local else []

    @override
    def part_fn(self, item_key: str) -> int:
        return self._tables.index(item_key)

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _TablePartition:
        return _TablePartition(for_part, self.sink._partition(self.flush_every))
