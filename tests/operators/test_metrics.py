"""Metric buckets (rules.md "Metric definitions"): declared labels, other/none, finality, lateness."""

from __future__ import annotations

from typing import Any

from operators.metrics import BUCKET_UNIT, RESOLUTION_MS, MetricColumns, MetricPoint, SiteMetrics, compile_metric
from schemas.factory import make_signal, make_tick, signal_line
from schemas.records import Record, parse_record
from schemas.rules import MetricDefinition
from schemas.timestamps import parse_ts_checked

T0 = parse_ts_checked("2026-11-28T10:00:00Z")
SECOND, MINUTE = 1000, 60_000


def metric(**fields: Any) -> MetricDefinition:
    return MetricDefinition.model_validate({"name": "auth_attempts", "signal": "auth", "resolution": "1m", **fields})


def record(envelope: dict[str, Any], line: int = 1) -> Record:
    parsed = parse_record(signal_line(envelope).encode(), line)
    assert isinstance(parsed, Record), parsed
    return parsed


def auth(ts: int, n: int = 0, **data: Any) -> Record:
    return record(make_signal("shop", "auth", ts, f"auth-{n:06d}", **{"outcome": "failure", "method": "password", **data}))


def tick(ts: int) -> Record:
    return record(make_tick("shop", ts))


def run(metrics: list[MetricDefinition], records: list[Record]) -> tuple[list[MetricPoint], SiteMetrics]:
    site = SiteMetrics([compile_metric(m) for m in metrics], "shop")
    out = MetricColumns()
    for r in records:
        site.process(r, out)
    return out.points(), site


def process(site: SiteMetrics, r: Record) -> list[MetricPoint]:
    out = MetricColumns()
    site.process(r, out)
    return out.points()


def flush(site: SiteMetrics) -> list[MetricPoint]:
    out = MetricColumns()
    site.flush(out)
    return out.points()


def test_buckets_split_by_declared_labels_with_other_and_none() -> None:
    definition = metric(labels={"outcome": ["success", "failure"], "source": ["203.0.113.0/24"]})
    points, site = run([definition], [
        auth(T0, 1, source="203.0.113.0/24"),
        auth(T0 + SECOND, 2, source="198.51.100.0/24"),   # undeclared value -> other
        auth(T0 + 2 * SECOND, 3),                          # no source -> none
        auth(T0 + 3 * SECOND, 4, outcome="lockout"),       # undeclared outcome -> other
    ])
    assert points == []  # nothing final yet: the clock has not passed 10:01 + 60s
    flushed = flush(site)
    assert [(p.labels, p.value) for p in flushed] == [
        ((("outcome", "failure"), ("source", "203.0.113.0/24")), 1.0),
        ((("outcome", "failure"), ("source", "none")), 1.0),
        ((("outcome", "failure"), ("source", "other")), 1.0),
        ((("outcome", "other"), ("source", "none")), 1.0),
    ]
    assert {p.bucket_start for p in flushed} == {T0}


def test_a_bucket_is_final_once_the_clock_passes_its_end_plus_lateness() -> None:
    # bucket [10:00, 10:01); final when the site clock is past 10:01 + 60s = 10:02:00
    points, site = run([metric()], [auth(T0, 1), auth(T0 + 30 * SECOND, 2), tick(T0 + 2 * MINUTE)])
    assert points == []
    points = process(site, tick(T0 + 2 * MINUTE + 1))
    assert [(p.metric, p.bucket_start, p.value, p.signals, p.resolution) for p in points] == [
        ("auth_attempts", T0, 2.0, 2, MINUTE),
    ]
    assert flush(site) == []  # emitted once, then forgotten


def test_a_signal_for_a_bucket_that_can_no_longer_change_is_counted_late() -> None:
    points, site = run([metric()], [auth(T0 + 5 * MINUTE, 1), auth(T0, 2)])
    assert points == []  # 5 min back: late
    assert site.late == 1
    assert [(p.bucket_start, p.value) for p in flush(site)] == [(T0 + 5 * MINUTE, 1.0)]


def test_sum_metrics_add_the_field_and_where_filters() -> None:
    definition = MetricDefinition.model_validate({
        "name": "request_ms", "signal": "request", "where": {"status": {"gte": 500}},
        "labels": {"status": [500, 503]}, "value": {"sum": "duration_ms"}, "resolution": "10s",
    })
    records = [
        record(make_signal("shop", "request", T0 + i * SECOND, f"req-{i:06d}", method="GET", path="/x", route_group="x",
                           status=status, duration_ms=ms))
        for i, (status, ms) in enumerate([(500, 10), (503, 20), (200, 999), (500, 5), (502, 7)])
    ]
    _, site = run([definition], records)
    assert [(p.labels, p.value, p.signals) for p in flush(site)] == [
        ((("status", "500"),), 15.0, 2),
        ((("status", "503"),), 20.0, 1),
        ((("status", "other"),), 7.0, 1),
    ]


def test_final_buckets_come_sorted_by_start_metric_and_labels_whatever_the_metrics_and_values() -> None:
    # A bucket's key is an integer (SiteMetrics): its order must stay that of (start, name, labels) as stored, across
    # metrics with different label sets, texts that sort unlike their declaration, and a declared value named `other`.
    detailed = metric(labels={"outcome": ["success", "failure"], "method": ["sso", "other", "cookie"]})
    plain = metric(name="a_auth")
    values = [("failure", "cookie"), ("lockout", "sso"), ("success", "password"), ("success", "xmlrpc"), ("failure", "other")]
    records = [auth(T0 + n * 20 * SECOND, n, outcome=outcome, method=method) for n, (outcome, method) in enumerate(values)]
    _, site = run([detailed, plain], records)
    flushed = [(p.bucket_start, p.metric, p.labels) for p in flush(site)]
    assert flushed == sorted(flushed)
    assert flushed == [
        (T0, "a_auth", ()),
        (T0, "auth_attempts", (("method", "cookie"), ("outcome", "failure"))),
        (T0, "auth_attempts", (("method", "other"), ("outcome", "success"))),
        (T0, "auth_attempts", (("method", "sso"), ("outcome", "other"))),
        (T0 + MINUTE, "a_auth", ()),
        (T0 + MINUTE, "auth_attempts", (("method", "other"), ("outcome", "failure"))),
        (T0 + MINUTE, "auth_attempts", (("method", "other"), ("outcome", "success"))),
    ]


def test_open_buckets_named_and_restored_are_the_same_buckets() -> None:
    # What a snapshot keeps (SiteMetrics.named) opens the same buckets again in a fresh site (restore).
    definitions = [metric(labels={"outcome": ["success", "failure"]}), metric(name="a_auth", resolution="5m")]
    _, site = run(definitions, [auth(T0, 1), auth(T0 + 30 * SECOND, 2, outcome="success"), auth(T0 + 70 * SECOND, 3)])
    named = site.named()
    assert sorted(named) == [
        (T0, "a_auth", ()), (T0, "auth_attempts", (("outcome", "failure"),)),
        (T0, "auth_attempts", (("outcome", "success"),)), (T0 + MINUTE, "auth_attempts", (("outcome", "failure"),)),
    ]
    fresh = SiteMetrics([compile_metric(definition) for definition in definitions], "shop")
    fresh.restore(named)
    assert fresh.next_end == site.next_end == T0 + MINUTE
    assert process(fresh, tick(T0 + 3 * MINUTE)) == process(site, tick(T0 + 3 * MINUTE))
    assert flush(fresh) == flush(site) != []


def test_every_resolution_is_a_whole_number_of_key_units() -> None:
    # A bucket's key holds its start in BUCKET_UNIT steps (SiteMetrics): a resolution that is not a multiple would
    # make starts the key cannot hold, and buckets that collide.
    assert all(length % BUCKET_UNIT == 0 for length in RESOLUTION_MS.values())


def test_a_count_metric_and_a_sum_metric_on_the_same_signals_keep_their_own_values() -> None:
    # Counts and sums are kept apart (SiteMetrics.open and .sums): a count's value is its number of signals, a sum's
    # the sum of its field, whatever the other metric of the same bucket start does.
    counted = MetricDefinition.model_validate({"name": "requests", "signal": "request", "resolution": "10s"})
    summed = MetricDefinition.model_validate({
        "name": "request_ms", "signal": "request", "value": {"sum": "duration_ms"}, "resolution": "10s"})
    records = [
        record(make_signal("shop", "request", T0 + i * SECOND, f"req-{i:06d}", method="GET", path="/x", route_group="x",
                           status=200, duration_ms=ms))
        for i, ms in enumerate([10, 20, 7])
    ]
    _, site = run([counted, summed], records)
    named = site.named()
    assert named == {(T0, "request_ms", ()): [37.0, 3], (T0, "requests", ()): [3.0, 3]}
    assert [(p.metric, p.value, p.signals) for p in flush(site)] == [("request_ms", 37.0, 3), ("requests", 3.0, 3)]
