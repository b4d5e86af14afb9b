"""The pure parts of delivery/kafka_source.py: which offsets a restart reads again to restore inhibitions, and what it says.

Reading them from a real broker is tested in test_deliver_command.py.
"""

from __future__ import annotations

import pytest

from delivery.kafka_source import Restored, history_range


@pytest.mark.parametrize(("earliest", "committed", "limit", "expected"), [
    (0, 250, 100_000, (0, 250)),  # the whole history fits
    (0, 250, 100, (150, 250)),  # the last 100 before the committed offset
    (200, 250, 100, (200, 250)),  # retention removed older records: from the earliest one left
    (300, 250, 100, None),  # retention removed even the committed records
    (0, 0, 100, None),  # committed at the start: nothing before it
    (0, -1001, 100, None),  # nothing committed (librdkafka's OFFSET_INVALID): the first start reads everything anyway
    (0, 250, 0, None),  # --inhibit-history 0
], ids=["whole", "bounded", "retention", "all-gone", "at-start", "no-commit", "off"])
def test_the_range_read_again_is_the_last_records_before_the_committed_offset_that_the_broker_still_has(
        earliest: int, committed: int, limit: int, expected: tuple[int, int] | None) -> None:
    assert history_range(earliest, committed, limit) == expected


def test_the_line_says_what_was_restored_and_where_the_bound_cut_the_history() -> None:
    assert Restored(records=120, invalid=2).line("alerts", 3, 100_000) == (
        "logystera: deliver: 3 inhibitions active, restored from 120 records of alerts before the committed offsets "
        "(2 invalid, skipped)")
    assert Restored(records=4, bounded=2).line("alerts", 0, 2) == (
        "logystera: deliver: 0 inhibitions active, restored from 4 records of alerts before the committed offsets "
        "(0 invalid, skipped); on 2 partitions older records were not read (--inhibit-history 2)")
