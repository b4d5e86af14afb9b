"""The live flow sends raw lines to their site's worker, which validates them (flows/detect.py, docs/live.md).

Without a broker: the flow of ``logystera detect`` built on a testing source
of Kafka-like chunks. What it makes — notifications, rejected lines, totals
and store rows, rejected lines dated by their site — must not depend on how
many workers hold the sites, and must equal what replay of the same lines
detects.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSource, cluster_main, run_main

from flows.cluster import state_placement
from flows.detect import DetectLogic, DetectOptions, DetectSinks, FlowStats, RouteSiteLines, build_detect_flow, routed_types
from flows.live import kafka_line
from flows.placement import SiteKeys
from flows.replay import replay
from flows.sources import Line
from operators.metrics import compile_metric
from operators.notification import Emitted
from operators.routing import RoutingTable
from schemas.factory import make_signal, signal_line
from schemas.rule_loader import load_rules
from schemas.store import Columns
from simulate.corpus import generate_corpus
from sinks.callback import CallbackSink
from sinks.clickhouse import StoreItem

PACK = load_rules(Path(__file__).resolve().parents[2] / "rules")
HOUR = 3_600_000
T0 = 1_795_824_000_000  # 2026-11-28T00:00:00Z


def line(site: str, at: int, number: int, **changes: Any) -> bytes:
    """A tick of ``site`` at ``at`` as compact JSON, its envelope fields changed (None: removed)."""
    signal = make_signal(site, "tick", at, f"{site}-{number:06d}")
    signal.update(changes)
    return signal_line({key: value for key, value in signal.items() if value is not None}).encode()


LiveOutput = tuple[list[str], list[tuple[int, str]], FlowStats, dict[str, list[tuple[Any, ...]]]]


def run_live(chunks: list[list[Line]], workers: int) -> LiveOutput:
    """The live flow over ``chunks`` on ``workers`` worker threads: notification lines, rejects, totals, store rows."""
    alerts: list[Emitted] = []
    rejects: list[tuple[int, str]] = []
    stats: list[FlowStats] = []
    store: list[StoreItem] = []
    sinks = DetectSinks(alerts=CallbackSink(alerts.extend), rejects=CallbackSink(rejects.extend),
                        stats=CallbackSink(stats.extend), store=CallbackSink(store.extend))
    options = DetectOptions(store_source="kafka:signals", metrics=[compile_metric(metric) for metric in PACK.metrics])
    flow = build_detect_flow(TestingSource(chunks), RoutingTable(PACK.rules), sinks, options)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for table, items in store:
        rows.setdefault(table, []).extend(items.rows() if isinstance(items, Columns) else items)
    late = sorted(number for piece in stats for number in piece.late)
    decisions: Counter[Any] = Counter()
    for piece in stats:
        decisions.update(piece.decisions)
    totals = FlowStats(sum(piece.valid for piece in stats), late, dict(decisions))
    return (sorted(alert.line for alert in alerts), sorted(rejects), totals,
            {table: sorted(table_rows, key=repr) for table, table_rows in rows.items()})


def test_rejected_lines_are_dated_by_their_site_and_unreadable_ones_by_the_site_before_them() -> None:
    chunks: list[list[Line]] = [
        [(1, b"{not json"),  # before any line with a site: rejected by the reader, hour 0
         (2, line("shop-a", T0 + 2 * HOUR + 5, 2)),
         (3, line("shop-b", T0 + 5 * HOUR, 3)),
         (4, b"[1, 2]"),  # no site: dated by shop-b, the site of the line before it: hour 5
         (5, line("shop-a", 0, 5, ts=None))],  # shop-a's latest ts before it: hour 2
        [(6, line("shop-a", T0 + 3 * HOUR, 6)),
         (7, line("shop-a", 0, 7, ts=None, type="no such type")),  # hour 3, from this batch
         (8, b"   "),  # blank: skipped
         (9, line("shop-b", T0 + 6 * HOUR, 9, ts="yesterday"))],  # shop-b's latest before it: hour 5
    ]
    _, rejects, totals, rows = run_live(chunks, workers=1)
    assert [number for number, _ in rejects] == [1, 4, 5, 7, 9]
    assert totals.valid == 3
    hours = {row[1]: row[4] for row in rows["rejected"]}
    assert hours == {1: 0, 4: (T0 + 5 * HOUR) // 1000, 5: (T0 + 2 * HOUR) // 1000, 7: (T0 + 3 * HOUR) // 1000,
                     9: (T0 + 5 * HOUR) // 1000}
    assert {row[1]: row[2] for row in rows["rejected"]} == {1: "", 4: "", 5: "shop-a", 7: "shop-a", 9: "shop-b"}


def test_the_live_flow_gives_the_same_output_for_1_and_3_workers_and_the_notifications_of_replay(tmp_path: Path) -> None:
    lines = list(generate_corpus(6000, 12, seed=9, duration_s=7200))
    lines[100:100] = ["{truncated", '{"site":"site-003","type":"tick"}', "", "null"]
    numbered = [(number, text.encode()) for number, text in enumerate(lines, 1)]
    chunks = [numbered[start:start + 250] for start in range(0, len(numbered), 250)]
    one = run_live(chunks, workers=1)
    assert len(one[0]) > 20 and len(one[1]) >= 3
    assert set(one[3]) >= {"signals", "rejected", "alerts", "evidence"}
    assert run_live(chunks, workers=3) == one
    signals = tmp_path / "signals.jsonl"
    signals.write_text("\n".join(lines) + "\n", encoding="utf-8")
    replayed = replay(str(signals), PACK.rules)
    assert one[0] == sorted(replayed.alerts)
    assert one[1] == replayed.rejects
    assert (one[2].valid, one[2].late, one[2].decisions) == (replayed.valid, sorted(replayed.late_lines), dict(replayed.decisions))


def test_the_reader_sends_every_line_with_a_site_to_it_unparsed_and_keeps_the_last_site_across_chunks() -> None:
    reader = RouteSiteLines(store_source=None, keys=SiteKeys(None))
    spaced = json.dumps(json.loads(line("shop-c", T0, 3))).encode()  # the look-up does not settle it: parsed here
    first = reader([(1, b"oops"), (2, line("shop-a", T0, 2)), (3, spaced), (4, b"oops")])
    assert first.rejects == [(1, first.rejects[0][1])] and first.rejects[0][1]
    assert first.work == [("shop-a", [(2, line("shop-a", T0, 2))]), ("shop-c", [(3, spaced), (4, b"oops")])]
    second = reader([(5, b"oops again")])
    assert second.work == [("shop-c", [(5, b"oops again")])] and second.rejects == []
    # One reader serves every partition its process reads: the line before is the one in the same partition.
    other = reader([(kafka_line(1, 0), b"oops")])
    assert other.work == [] and [position for position, _ in other.rejects] == [kafka_line(1, 0)]
    assert reader([(6, b"oops")]).work == [("shop-c", [(6, b"oops")])]


def test_the_reader_sends_each_site_under_its_placed_key() -> None:
    placement = state_placement("signals", 4, 2)
    reader = RouteSiteLines(store_source=None, keys=SiteKeys(placement))
    sites = [f"shop-{index}" for index in range(40)]
    sent = reader([(index + 1, line(site, T0, index)) for index, site in enumerate(sites)])
    assert sent.work == [(placement.key(site), [(index + 1, line(site, T0, index))]) for index, site in enumerate(sites)]
    assert any(key != site for (key, _), site in zip(sent.work, sites, strict=True))


def test_a_site_key_that_never_had_a_valid_record_keeps_no_state() -> None:
    table = RoutingTable(PACK.rules)
    logic = DetectLogic(table, 60_000, "https://example.invalid", [], routed_types(table, ()), store_source=None)
    invented = line("no-such-site", T0, 1, type="no such type")  # names a site of the pattern, but is invalid
    out, keep = logic.on_batch([[(1, invented)]])
    assert keep is StatefulBatchLogic.DISCARD and out[0].rejects and out[0].valid == 0
    out, keep = logic.on_batch([[(2, line("shop-a", T0, 2))]])
    assert keep is StatefulBatchLogic.RETAIN and out[0].valid == 1
    out, keep = logic.on_batch([[(3, invented)]])
    assert keep is StatefulBatchLogic.RETAIN  # the site's detector stays, whatever comes next
