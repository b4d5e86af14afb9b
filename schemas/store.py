"""The ClickHouse schema: tables analysts query, as versioned migrations.

Every table is a ``ReplacingMergeTree`` whose sorting key contains the row's
deterministic identity (signal id; alert id + seq; metric key + bucket;
rejected line), so replaying the same input, or re-emitting after a crash,
replaces rows instead of adding them. Reads that count go through the
``*_final`` views (``FINAL``), which see deduplicated data even before a
background merge.

Migrations are applied in order and recorded in ``schema_migrations``; each
statement is idempotent (``IF NOT EXISTS``), so applying twice is harmless.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

from schemas.alerts import NotificationRecord
from schemas.records import Record, RecordColumns, compact_json
from schemas.timestamps import parse_ts_checked

SIGNAL_COLUMNS = ("site", "type", "ts", "id", "seq", "envelope")
ALERT_COLUMNS = (
    "alert_id", "seq", "status", "rule_id", "rule_title", "rule_kind", "severity", "site", "subsystem",
    "group_json", "summary", "started_at", "evaluated_at", "ended_at", "value", "suppressed_count",
    "evidence_total", "link", "deliver", "record",
)
EVIDENCE_COLUMNS = ("alert_id", "seq", "position", "site", "signal_id", "type", "ts", "envelope")
METRIC_COLUMNS = ("site", "metric", "labels_key", "labels", "bucket_start", "resolution_s", "value", "signals")
REJECTED_COLUMNS = ("source", "line", "site", "reason", "hour")
DELIVERY_COLUMNS = (
    "alert_id", "seq", "channel", "attempt", "attempted_at", "outcome", "status_code", "latency_ms", "error", "held_by",
)
SILENCE_COLUMNS = (
    "id", "updated_at", "updated_by", "matchers", "starts_at", "ends_at", "created_by", "comment", "created_at",
)


@dataclass(frozen=True)
class Migration:
    """One schema version: statements with ``{db}`` and ``{ttl_days}`` placeholders."""

    version: int
    description: str
    statements: tuple[str, ...]


LAST_DATETIME_S = 2**32 - 1
"""The last second a ``DateTime`` column holds (2106-02-07T06:28:15Z); ``DateTime64(3)`` columns hold 1900–2299,
which covers every ``ts`` the contract accepts (1970–2199)."""
_LAST_DATETIME = f"toDateTime64({LAST_DATETIME_S}, 3, 'UTC')"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "signals, alerts, evidence, metrics, rejected, deliveries and their deduplicated views", (
        """CREATE TABLE IF NOT EXISTS {db}.signals (
            site LowCardinality(String),
            type LowCardinality(String),
            ts DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
            id String CODEC(ZSTD(1)),
            seq Nullable(UInt64),
            envelope String CODEC(ZSTD(3)) COMMENT 'the signal as received: structure only, never content',
            data String ALIAS JSONExtractRaw(envelope, 'data') COMMENT 'the typed payload as JSON'
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(ts)
        ORDER BY (site, type, ts, id)
        TTL toDateTime(ts) + INTERVAL {ttl_days} DAY""",
        """CREATE TABLE IF NOT EXISTS {db}.alerts (
            alert_id String,
            seq UInt32,
            status LowCardinality(String),
            rule_id LowCardinality(String),
            rule_title String,
            rule_kind LowCardinality(String),
            severity LowCardinality(String),
            site LowCardinality(String),
            subsystem LowCardinality(String),
            group_json String,
            summary String,
            started_at DateTime64(3, 'UTC'),
            evaluated_at DateTime64(3, 'UTC'),
            ended_at Nullable(DateTime64(3, 'UTC')),
            value String,
            suppressed_count UInt32,
            evidence_total UInt32,
            link String,
            deliver Array(LowCardinality(String)),
            record String CODEC(ZSTD(3)) COMMENT 'the notification record exactly as emitted'
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(evaluated_at)
        ORDER BY (site, evaluated_at, rule_id, alert_id, seq)""",
        """CREATE TABLE IF NOT EXISTS {db}.evidence (
            alert_id String,
            seq UInt32,
            position UInt16,
            site LowCardinality(String),
            signal_id String,
            type LowCardinality(String),
            ts DateTime64(3, 'UTC'),
            envelope String CODEC(ZSTD(3))
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(ts)
        ORDER BY (alert_id, seq, position)""",
        """CREATE TABLE IF NOT EXISTS {db}.metrics (
            site LowCardinality(String),
            metric LowCardinality(String),
            labels_key String COMMENT 'the labels as sorted compact JSON: part of the row identity',
            labels Map(LowCardinality(String), String),
            bucket_start DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
            resolution_s UInt32,
            value Float64,
            signals UInt64
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(bucket_start)
        ORDER BY (site, metric, bucket_start, labels_key)
        TTL toDateTime(bucket_start) + INTERVAL {ttl_days} DAY""",
        """CREATE TABLE IF NOT EXISTS {db}.rejected (
            source String COMMENT 'where the input came from (file name, gateway)',
            line UInt64,
            site LowCardinality(String) COMMENT 'empty when the line names no valid site',
            reason LowCardinality(String) COMMENT 'what was wrong (field and check), never the content',
            hour DateTime('UTC')
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(hour)
        ORDER BY (hour, site, reason, source, line)""",
        """CREATE TABLE IF NOT EXISTS {db}.deliveries (
            alert_id String,
            seq UInt32,
            channel LowCardinality(String),
            attempt UInt16,
            attempted_at DateTime64(3, 'UTC'),
            outcome LowCardinality(String),
            status_code Nullable(UInt16),
            latency_ms UInt32,
            error String
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(attempted_at)
        ORDER BY (channel, alert_id, seq, attempt)""",
        "CREATE VIEW IF NOT EXISTS {db}.signals_final AS SELECT * FROM {db}.signals FINAL",
        "CREATE VIEW IF NOT EXISTS {db}.alerts_final AS SELECT * FROM {db}.alerts FINAL",
        "CREATE VIEW IF NOT EXISTS {db}.evidence_final AS SELECT * FROM {db}.evidence FINAL",
        "CREATE VIEW IF NOT EXISTS {db}.metrics_final AS SELECT * FROM {db}.metrics FINAL",
        """CREATE VIEW IF NOT EXISTS {db}.rejected_hourly AS
            SELECT hour, site, reason, count() AS rejected FROM {db}.rejected FINAL GROUP BY hour, site, reason""",
        "CREATE VIEW IF NOT EXISTS {db}.deliveries_final AS SELECT * FROM {db}.deliveries FINAL",
    )),
    # toDateTime() of an instant after 2106-02-07 wraps around (DateTime is 32-bit seconds): version 1's TTL put
    # a signal of 2150 in 2013, so the next merge deleted it. Clamped at DateTime's last second, it stays.
    Migration(2, "retention (TTL) of signals and metrics without wrap-around for event times after 2106", (
        f"ALTER TABLE {{db}}.signals MODIFY TTL toDateTime(least(ts + INTERVAL {{ttl_days}} DAY, {_LAST_DATETIME}))",
        f"ALTER TABLE {{db}}.metrics MODIFY TTL toDateTime(least(bucket_start + INTERVAL {{ttl_days}} DAY, {_LAST_DATETIME}))",
    )),
    # The alert page reads one alert's notifications; ``alerts`` is sorted by (site, evaluated_at, …), so finding
    # one alert_id there reads the whole table. ``alerts_by_id`` holds the same rows sorted by (alert_id, seq):
    # a materialized view copies every block inserted into ``alerts``, and the INSERT fills it for the rows an
    # existing store already has (run twice, it adds copies that ReplacingMergeTree and FINAL collapse).
    Migration(3, "alerts_by_id: the notifications sorted by alert id, for the web console's alert page", (
        """CREATE TABLE IF NOT EXISTS {db}.alerts_by_id AS {db}.alerts
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(evaluated_at)
        ORDER BY (alert_id, seq)""",
        """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.alerts_by_id_writer TO {db}.alerts_by_id
        AS SELECT * FROM {db}.alerts""",
        "INSERT INTO {db}.alerts_by_id SELECT * FROM {db}.alerts",
    )),
    # Silences are shared by every deliver process and the console: in the store, one row per version (a change,
    # expiring, writes a new one; nothing is deleted), the newest version of each id in silences_current.
    Migration(4, "silences, and what held a notification back (deliveries.held_by)", (
        """CREATE TABLE IF NOT EXISTS {db}.silences (
            id String,
            updated_at DateTime64(3, 'UTC') COMMENT 'when this version was written',
            updated_by String COMMENT 'who wrote this version (the creator, or who expired it)',
            matchers String COMMENT 'JSON list of [field, op, value]',
            starts_at DateTime64(3, 'UTC'),
            ends_at DateTime64(3, 'UTC'),
            created_by String,
            comment String,
            created_at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree
        ORDER BY (id, updated_at)""",
        """CREATE VIEW IF NOT EXISTS {db}.silences_current AS
            SELECT id, max(updated_at) AS updated_at, argMax(updated_by, s.updated_at) AS updated_by,
                argMax(matchers, s.updated_at) AS matchers, argMax(starts_at, s.updated_at) AS starts_at,
                argMax(ends_at, s.updated_at) AS ends_at, argMax(created_by, s.updated_at) AS created_by,
                argMax(comment, s.updated_at) AS comment, argMax(created_at, s.updated_at) AS created_at
            FROM {db}.silences AS s FINAL GROUP BY id""",
        "ALTER TABLE {db}.deliveries ADD COLUMN IF NOT EXISTS held_by String DEFAULT '' "
        "COMMENT 'silenced, muted, inhibited: the silence id, mute time name or inhibiting alert id'",
        # A view's * is expanded when it is created: made again, it has the new column.
        "CREATE OR REPLACE VIEW {db}.deliveries_final AS SELECT * FROM {db}.deliveries FINAL",
    )),
)

MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    description String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY version"""

TABLES = ("signals", "alerts", "evidence", "metrics", "rejected", "deliveries")


# -- rows ------------------------------------------------------------------------------------------
# Timestamps are written as integer epoch milliseconds (DateTime64(3) ticks): no datetime objects on the hot path.

_QUOTED = re.compile(r"'[^']*'")
_POSITION = re.compile(r" at line \d+ column \d+")


class Columns:
    """Rows of one table given column by column: ``data[i]`` holds the values of the table's ``i``-th column.

    The form the flow hands the store the signals in: no tuple per row to
    build, to keep alive in the sink's buffer (where every live object costs
    garbage-collector time) and to transpose again for the column-oriented insert.
    """

    __slots__ = ("data",)

    def __init__(self, data: list[list[Any]]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data[0]) if self.data else 0

    def rows(self) -> list[tuple[Any, ...]]:
        """The same rows as tuples."""
        return list(zip(*self.data, strict=True))


_SIGNAL_FIELDS = tuple(attrgetter(name) for name in ("site", "type", "ts", "id", "seq", "raw"))
"""The :class:`Record` attributes of the ``signals`` columns, in :data:`SIGNAL_COLUMNS` order."""


def signal_columns(records: Iterable[Record]) -> Columns:
    """``signals`` rows, as :class:`Columns`, for the site signals among ``records`` (ticks are clock records, not signals).

    The envelope is the record's raw bytes, not decoded: a ``String`` column holds bytes, the insert writes
    them as they are (a ``str`` it would encode back to the same UTF-8), and a valid record's bytes are UTF-8.
    """
    signals = [record for record in records if record.type != "tick"]
    return Columns([list(map(field, signals)) for field in _SIGNAL_FIELDS])


def parsed_signal_columns(parsed: RecordColumns) -> Columns:
    """``signals`` rows, as :class:`Columns`, of the site signals ``parsed`` was filled with (its lists, taken over).

    :func:`~schemas.records.parse_lines` fills it as it makes the records: the same rows as :func:`signal_columns`
    of those records.
    """
    return Columns([parsed.sites, parsed.types, parsed.signal_times, parsed.ids, parsed.seqs, parsed.raws])


def signal_rows(records: Iterable[Record]) -> list[tuple[Any, ...]]:
    """``signals`` rows for the site signals among ``records`` (ticks are clock records, not signals)."""
    return signal_columns(records).rows()


def alert_rows(record: NotificationRecord, line: str) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The ``alerts`` row and the ``evidence`` rows of one notification ``record``, written out as ``line``."""
    alert_id, seq, rule = record.alert_id, record.seq, record.rule
    ended = record.ended_at
    alert = (
        alert_id, seq, record.status, rule.id, rule.title, rule.kind, record.severity, record.site, record.subsystem,
        compact_json(record.group), record.summary, parse_ts_checked(record.started_at),
        parse_ts_checked(record.evaluated_at), None if ended is None else parse_ts_checked(ended),
        compact_json(record.value), record.suppressed_count, record.evidence_total, record.link, record.deliver, line,
    )
    evidence = [
        (alert_id, seq, position, envelope["site"], envelope["id"], envelope["type"], parse_ts_checked(envelope["ts"]),
         compact_json(envelope))
        for position, envelope in enumerate(record.evidence)
    ]
    return alert, evidence


class MetricBuckets(Protocol):
    """What metric rows are made of, column by column (``operators.metrics.MetricColumns``: the schema does not import the engine)."""

    sites: list[str]
    metrics: list[str]
    labels_keys: list[str]
    """Label names and values of each bucket as compact JSON, sorted by name."""
    labels_maps: list[dict[str, str]]
    """The same labels as a dict (one per label combination, shared by its buckets: only ever read)."""
    bucket_starts: list[int]
    """Epoch ms."""
    resolutions: list[int]
    """Length of each bucket, seconds."""
    values: list[float]
    signals: list[int]
    """Signals that went into each bucket."""


def metric_columns(buckets: MetricBuckets) -> Columns:
    """``metrics`` rows, as :class:`Columns`, for final metric buckets (their lists are taken over, not copied)."""
    return Columns([
        buckets.sites, buckets.metrics, buckets.labels_keys, buckets.labels_maps, buckets.bucket_starts, buckets.resolutions,
        buckets.values, buckets.signals,
    ])


def rejection_reason(reason: str) -> str:
    """A rejection reason as a category: anything quoted from the input and positions removed."""
    return _POSITION.sub("", _QUOTED.sub("'…'", reason))[:200]


_LAST_HOUR_S = LAST_DATETIME_S - LAST_DATETIME_S % 3600


def rejected_row(source: str, line: int, site: str, reason: str, at_ms: int) -> tuple[Any, ...]:
    """One rejected input line, attributed to the hour of ``at_ms``.

    ``hour`` is a ``DateTime`` (32-bit seconds): an instant after its last hour (2106-02-07T06:00Z; ``ts`` may
    run to 2199) is attributed to that hour rather than failing the insert of every row buffered with it.
    """
    return (source, line, site, rejection_reason(reason), min((at_ms - at_ms % 3_600_000) // 1000, _LAST_HOUR_S))


ROW_COLUMNS = {
    "signals": SIGNAL_COLUMNS,
    "alerts": ALERT_COLUMNS,
    "evidence": EVIDENCE_COLUMNS,
    "metrics": METRIC_COLUMNS,
    "rejected": REJECTED_COLUMNS,
    "deliveries": DELIVERY_COLUMNS,
}
