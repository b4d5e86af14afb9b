"""The delivery policy of one channel (delivery/schedule.py), driven with explicit times: no network, no clock, no sleep.

Timelines in comments: ``S`` a call starts, ``x`` it fails, ``✓`` it is delivered, ``H`` held by the rate limit.
"""

from __future__ import annotations

from typing import Any

import pytest

from delivery.schedule import (
    COLLAPSED_INTO,
    DELIVERED,
    FAILED,
    GAVE_UP,
    HELD,
    RATE_LIMITED,
    RETRYING,
    Attempt,
    ChannelSchedule,
    DeliveryPolicy,
    Item,
    Send,
    TokenBucket,
)
from sinks.channel import SendResult
from tests.support.factories import make_notification, received

OK = SendResult(True, 200, False, None, "")
REFUSED = SendResult(False, None, True, None, "connection refused")
E503 = SendResult(False, 503, True, None, "HTTP 503")
E400 = SendResult(False, 400, False, None, "HTTP 400: no such hook")


def throttled(seconds: float) -> SendResult:
    return SendResult(False, 429, True, seconds, "HTTP 429")


def alert(number: int) -> str:
    return f"{number:032x}"


def item(number: int, seq: int = 1, **earlier: Any) -> Item:
    return Item(received(make_notification(alert_id=alert(number), seq=seq)), **earlier)


def schedule(rate_max: int = 60, per: float = 60.0, jitter: float = 0.5, **policy: Any) -> ChannelSchedule:
    """A schedule at time 0 whose backoff draws ``jitter`` × the ceiling every time."""
    return ChannelSchedule("hook", rate_max, per, DeliveryPolicy(**policy), now=0.0, random=lambda: jitter)


def row(attempt: Attempt) -> tuple[Any, ...]:
    """(alert number, seq, attempt, ms, outcome, status, error, final) — what a test reads of a row."""
    return (int(attempt.alert_id, 16), attempt.seq, attempt.attempt, attempt.attempted_at, attempt.outcome,
            attempt.status_code, attempt.error, attempt.final)


def taken(plan: ChannelSchedule) -> tuple[list[Send], list[tuple[Any, ...]]]:
    sends, records = plan.take()
    assert all(r.channel == "hook" for r in records)
    return sends, [row(r) for r in records]


def sent(sends: list[Send]) -> list[tuple[int, int, int]]:
    """(alert number, seq, collapsed) per call started."""
    return [(int(s.item.alert_id, 16), s.item.seq, s.collapsed) for s in sends]


def test_a_call_that_succeeds_is_one_delivered_row() -> None:
    plan = schedule()
    plan.offer(item(1), now=10.0)
    sends, rows = taken(plan)
    assert sent(sends) == [(1, 1, 0)] and rows == []
    assert not plan.idle and plan.in_flight == 1
    plan.finished(sends[0], OK, latency_ms=12, now=10.2)
    assert taken(plan) == ([], [(1, 1, 1, 10_000, DELIVERED, 200, "", True)])
    assert plan.idle and plan.next_wake(10.2) is None


def test_retries_back_off_exponentially_with_full_jitter_then_deliver() -> None:
    # t:  0     0.5   1.5   3.5   5.5
    #     S x   S x   S x   S x   S ✓     (jitter 0.5: waits 0.5, 1, 2, 2 with base 1 and cap 4)
    plan = schedule(backoff_base=1.0, backoff_cap=4.0, max_attempts=6)
    plan.offer(item(1), now=0.0)
    starts = []
    rows: list[tuple[Any, ...]] = []
    now = 0.0
    for result in (REFUSED, E503, REFUSED, E503, OK):
        sends, _ = taken(plan)
        assert len(sends) == 1
        starts.append(sends[0].started_at)
        plan.finished(sends[0], result, latency_ms=5, now=now)
        rows += taken(plan)[1]
        wake = plan.next_wake(now)
        if result is OK:
            assert wake is None
            break
        assert wake is not None
        plan.wake(wake - 0.001)
        assert plan.take() == ([], []), "nothing starts before the backoff is over"
        now = wake
        plan.wake(now)
    assert starts == [0.0, 0.5, 1.5, 3.5, 5.5]
    assert rows == [
        (1, 1, 1, 0, RETRYING, None, "connection refused", False),
        (1, 1, 2, 500, RETRYING, 503, "HTTP 503", False),
        (1, 1, 3, 1500, RETRYING, None, "connection refused", False),
        (1, 1, 4, 3500, RETRYING, 503, "HTTP 503", False),
        (1, 1, 5, 5500, DELIVERED, 200, "", True),
    ]


@pytest.mark.parametrize("jitter", [0.0, 0.37, 0.999])
def test_each_wait_is_drawn_between_zero_and_the_ceiling(jitter: float) -> None:
    plan = schedule(jitter=jitter, backoff_base=2.0, backoff_cap=8.0, max_attempts=10)
    plan.offer(item(1), now=0.0)
    (send,), _ = plan.take()
    for ceiling in (2.0, 4.0, 8.0, 8.0, 8.0):
        failed_at = send.started_at + 0.25
        plan.finished(send, REFUSED, latency_ms=250, now=failed_at)
        wake = plan.next_wake(failed_at)
        plan.wake(failed_at if wake is None else wake)  # a zero wait starts the retry at once
        (send,), _ = plan.take()
        assert send.started_at == pytest.approx(failed_at + jitter * ceiling)


def test_the_last_allowed_call_is_recorded_gave_up() -> None:
    plan = schedule(max_attempts=3, backoff_base=0.1, backoff_cap=0.1)
    plan.offer(item(1), now=0.0)
    now, outcomes = 0.0, []
    while not plan.idle:
        (send,), _ = plan.take()
        plan.finished(send, E503, latency_ms=1, now=now)
        outcomes += [(r[2], r[4], r[6], r[7]) for r in taken(plan)[1]]
        now += 1.0
        plan.wake(now)
    assert outcomes == [
        (1, RETRYING, "HTTP 503", False), (2, RETRYING, "HTTP 503", False), (3, GAVE_UP, "HTTP 503 (after 3 attempts)", True),
    ]
    assert plan.next_wake(now) is None


def test_a_permanent_error_gives_up_at_once() -> None:
    plan = schedule()
    plan.offer(item(1), now=0.0)
    (send,), _ = plan.take()
    plan.finished(send, E400, latency_ms=7, now=0.1)
    assert taken(plan) == ([], [(1, 1, 1, 0, GAVE_UP, 400, "HTTP 400: no such hook (not retryable)", True)])
    assert plan.idle
    plan.wake(3600.0)
    assert plan.take() == ([], [])


def test_a_broken_sender_is_failed_and_not_retried() -> None:
    plan = schedule()
    plan.offer(item(1), now=0.0)
    (send,), _ = plan.take()
    plan.broken(send, "sender error: KeyError", latency_ms=0, now=0.0)
    assert taken(plan)[1] == [(1, 1, 1, 0, FAILED, None, "sender error: KeyError", True)]
    assert plan.idle


def test_retry_after_replaces_the_backoff_and_holds_new_notifications_until_then() -> None:
    # alert 1: S(0) 429 retry-after 30 ........ S(31) ✓
    # alert 2:        offered at 2: H ......... S(31) ✓   (the bucket is empty until the receiver's time)
    plan = schedule(rate_max=60, per=60.0, backoff_base=1.0)
    plan.offer(item(1), now=0.0)
    (first,), _ = plan.take()
    plan.finished(first, throttled(30.0), latency_ms=3, now=1.0)
    assert taken(plan)[1] == [(1, 1, 1, 0, RETRYING, 429, "HTTP 429", False)]
    plan.offer(item(2), now=2.0)
    assert taken(plan) == ([], [(2, 1, 1, 2000, RATE_LIMITED, None, HELD, False)])
    assert plan.held == 1
    assert plan.next_wake(2.0) == pytest.approx(31.0)
    plan.wake(30.9)
    assert plan.take() == ([], [])
    plan.wake(31.0)
    sends, rows = taken(plan)
    assert sorted(sent(sends)) == [(1, 1, 0), (2, 1, 0)] and rows == []


def test_over_the_rate_limit_notifications_are_held_and_sent_first_come_first_served() -> None:
    # 2 per 10 s: a token every 5 s.   alerts 1 2 3 4 at t=0 → 1, 2 at once; 3 held until 5; 4 held until 10
    plan = schedule(rate_max=2, per=10.0)
    for number in (1, 2, 3, 4):
        plan.offer(item(number), now=0.0)
    sends, rows = taken(plan)
    assert sent(sends) == [(1, 1, 0), (2, 1, 0)]
    assert rows == [(3, 1, 1, 0, RATE_LIMITED, None, HELD, False), (4, 1, 1, 0, RATE_LIMITED, None, HELD, False)]
    assert plan.held == 2 and plan.next_wake(0.0) == pytest.approx(5.0)
    plan.wake(5.0)
    sends_5, _ = taken(plan)
    assert sent(sends_5) == [(3, 1, 0)]
    plan.wake(9.99)
    assert plan.take() == ([], [])
    plan.wake(10.0)
    sends_10, _ = taken(plan)
    assert sent(sends_10) == [(4, 1, 0)]
    for send in sends + sends_5 + sends_10:
        plan.finished(send, OK, latency_ms=1, now=10.0)
    delivered = [r for r in taken(plan)[1] if r[4] == DELIVERED]
    assert [(r[0], r[2], r[3]) for r in delivered] == [(1, 1, 0), (2, 1, 0), (3, 2, 5000), (4, 2, 10_000)]
    assert plan.idle


def test_a_held_backlog_of_one_alert_collapses_to_its_latest_notification() -> None:
    # 1 per 10 s.  seq 1 at 0 ✓; seq 2, 3, 4 at 1, 2, 3: H H H; at 10 seq 4 goes out for all three
    plan = schedule(rate_max=1, per=10.0)
    plan.offer(item(1, seq=1), now=0.0)
    (first,), _ = plan.take()
    plan.finished(first, OK, latency_ms=1, now=0.5)
    plan.take()
    for seq in (2, 3, 4):
        plan.offer(item(1, seq=seq), now=float(seq - 1))
    assert taken(plan) == ([], [(1, seq, 1, (seq - 1) * 1000, RATE_LIMITED, None, HELD, False) for seq in (2, 3, 4)])
    plan.wake(10.0)
    sends, rows = taken(plan)
    assert sent(sends) == [(1, 4, 2)]
    assert rows == [
        (1, 2, 2, 10_000, RATE_LIMITED, None, f"{COLLAPSED_INTO}4", True),
        (1, 3, 2, 10_000, RATE_LIMITED, None, f"{COLLAPSED_INTO}4", True),
    ]
    plan.finished(sends[0], OK, latency_ms=1, now=10.1)
    assert taken(plan)[1] == [(1, 4, 2, 10_000, DELIVERED, 200, "", True)]
    assert plan.idle


def test_collapsed_counts_add_up_through_earlier_collapses() -> None:
    plan = schedule(rate_max=1, per=10.0)
    plan.offer(item(9), now=0.0)  # takes the only token
    plan.offer(item(1, seq=5, collapsed=3), now=0.0)  # carried three before a restart
    plan.offer(item(1, seq=6), now=0.0)
    plan.wake(10.0)
    sends, _ = plan.take()
    assert sent(sends) == [(9, 1, 0), (1, 6, 4)]


def test_notifications_waiting_behind_a_retry_keep_their_order_and_are_not_collapsed_while_tokens_last() -> None:
    # seq 1: S x ......... S ✓ → seq 2 S ✓ → seq 3 S ✓      (seq 2 and 3 arrive during the backoff)
    plan = schedule(backoff_base=1.0)
    plan.offer(item(1, seq=1), now=0.0)
    (send,), _ = plan.take()
    plan.finished(send, REFUSED, latency_ms=1, now=0.0)
    plan.take()
    plan.offer(item(1, seq=3), now=0.1)
    plan.offer(item(1, seq=2), now=0.2)
    assert plan.take() == ([], []), "later notifications wait for the earlier one, unrecorded: they were not held"
    order = []
    now = 0.5
    plan.wake(now)
    while not plan.idle:
        (send,), _ = plan.take()
        order.append((send.item.seq, send.collapsed))
        plan.finished(send, OK, latency_ms=1, now=now)
    assert order == [(1, 0), (2, 0), (3, 0)]


def test_alerts_are_independent_lanes() -> None:
    plan = schedule(backoff_base=60.0, backoff_cap=60.0)
    plan.offer(item(1), now=0.0)
    (stuck,), _ = plan.take()
    plan.finished(stuck, REFUSED, latency_ms=1, now=0.0)  # alert 1 now waits 30 s
    plan.offer(item(2), now=1.0)
    (other,), _ = plan.take()
    assert int(other.item.alert_id, 16) == 2 and other.started_at == 1.0


def test_at_most_concurrency_calls_in_flight_and_waiting_for_a_slot_is_not_a_hold() -> None:
    plan = schedule(concurrency=2)
    for number in (1, 2, 3):
        plan.offer(item(number), now=0.0)
    sends, rows = taken(plan)
    assert sent(sends) == [(1, 1, 0), (2, 1, 0)] and rows == []
    assert plan.next_wake(0.0) is None  # nothing can start until a call ends
    plan.finished(sends[0], OK, latency_ms=1, now=0.3)
    later, _ = taken(plan)
    assert sent(later) == [(3, 1, 0)] and later[0].started_at == 0.3


def test_attempt_numbers_and_calls_continue_from_an_earlier_run() -> None:
    plan = schedule(max_attempts=3)
    plan.offer(item(1, attempt=4, calls=2), now=0.0)  # e.g. held, retrying, retrying, then the process died
    (send,), _ = plan.take()
    plan.finished(send, REFUSED, latency_ms=1, now=0.0)
    assert taken(plan)[1] == [(1, 1, 5, 0, GAVE_UP, None, "connection refused (after 3 attempts)", True)]


def test_token_bucket_refills_continuously_up_to_its_capacity() -> None:
    bucket = TokenBucket(capacity=3, per=30.0, now=0.0)  # a token every 10 s
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.ready_at(0.0) == pytest.approx(10.0)
    assert not bucket.take(9.9) and bucket.take(10.0)
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]  # never more than capacity
    bucket.block_until(1100.0)
    assert not bucket.take(1099.0)
    assert bucket.ready_at(1050.0) == pytest.approx(1100.0)
    assert bucket.take(1100.0) and not bucket.take(1100.0)


def test_policy_bounds_are_checked() -> None:
    for bad in ({"max_attempts": 0}, {"concurrency": 0}, {"backoff_base": 0.0}, {"backoff_base": 5.0, "backoff_cap": 1.0}):
        with pytest.raises(ValueError, match="delivery policy"):
            DeliveryPolicy(**bad)
