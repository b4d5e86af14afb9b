"""The delivery service against real receivers on loopback, every attempt read back from a real chDB ``deliveries`` table.

Each test runs the service in its own event loop in this process (the
session's chDB directory, a database per test); receivers are the real
servers of ``tests/support/receivers.py``. Waiting is on events and counters
with a deadline, never on sleeps; the only time checked is a lower bound
(a Retry-After must be waited out).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from delivery.attempt_log import AttemptLog, Earlier, with_carried_counts
from delivery.channels import open_sender
from delivery.holds import HoldPolicy
from delivery.metrics import DeliveryMetrics
from delivery.schedule import COLLAPSED_INTO, DELIVERED, GAVE_UP, HELD, RATE_LIMITED, RETRYING, DeliveryPolicy
from delivery.service import MAX_SEEN_ALERTS, UNKNOWN_CHANNEL, DeliveryService, DeliveryStats
from schemas.alerts import ReceivedRecord
from schemas.rules import EmailChannel, SlackChannel, TeamsChannel, WebhookChannel
from sinks.clickhouse import Store
from tests.delivery.test_holds import PACK_RULE, absence
from tests.support.factories import ALERT_ID, make_notification, received, resolved_notification
from tests.support.receivers import Hang, Reply, SlackReceiver, SmtpReceiver, TeamsReceiver, WebhookReceiver, all_problems

SECRET = "whsec_" + base64.b64encode(b"delivery-test-secret-32-bytes!!!").decode()
ENV = {"HOOK_SECRET": SECRET, "SLACK_URL": "", "TEAMS_URL": ""}
FAST = DeliveryPolicy(max_attempts=30, backoff_base=0.02, backoff_cap=0.1)
DEADLINE = 20.0

During = Callable[[DeliveryService], Awaitable[None]]


def webhook(name: str, url: str, *, per: str = "1m", rate_max: int = 60, send_resolved: bool = True) -> WebhookChannel:
    return WebhookChannel.model_validate({
        "name": name, "type": "webhook", "url": url, "secret_env": "HOOK_SECRET",
        "rate_limit": {"per": per, "max": rate_max}, "send_resolved": send_resolved,
    })


def alert(number: int) -> str:
    return f"{number:032x}"


def notification(number: int, seq: int = 1, deliver: Iterable[str] = ("oncall",)) -> dict[str, Any]:
    return make_notification(alert_id=alert(number), seq=seq, deliver=list(deliver),
                             link=f"http://localhost:8080/alerts/{alert(number)}")


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` on the event loop (the service keeps running) until it holds, or fail after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {DEADLINE}s: {what}")
        await asyncio.sleep(0.01)


def deliver(
    store: Store, channels: list[Any], batches: list[list[dict[str, Any]]], *, policy: DeliveryPolicy = FAST,
    timeout: float = 5.0, during: During | None = None, drain: bool = True, environ: dict[str, str] | None = None,
    max_seen: int = MAX_SEEN_ALERTS,
) -> DeliveryService:
    """Run a service over ``batches`` (each submitted when the one before is done), then stop it; the stopped service."""

    async def main() -> DeliveryService:
        senders = [open_sender(channel, environ or ENV, timeout=timeout) for channel in channels]
        service = DeliveryService(senders, AttemptLog(store, interval=0.02), policy, max_seen=max_seen)
        service.start()
        try:
            for index, batch in enumerate(batches):
                await service.guarded(service.submit([(received(record), None) for record in batch]))
                if index == 0 and during is not None:
                    await service.guarded(during(service))
                if drain:
                    await service.guarded(service.drain())
        finally:
            await service.stop(grace=timeout)
        return service

    return asyncio.run(main())


def attempts(store: Store) -> list[tuple[Any, ...]]:
    """Every stored row: (alert number, seq, channel, attempt, outcome, status, error), in key order."""
    rows = store.query(
        "SELECT alert_id, seq, channel, attempt, outcome, status_code, error "
        f"FROM {store.database}.deliveries_final ORDER BY channel, alert_id, seq, attempt"
    ).result_rows
    return [(int(alert_id, 16), seq, channel, attempt, outcome, status, error)
            for alert_id, seq, channel, attempt, outcome, status, error in rows]


def test_receiver_down_then_up_is_delivered_after_retries_and_every_attempt_is_recorded(store: Store) -> None:
    hook = WebhookReceiver(secret=SECRET)  # not started: its port refuses connections

    async def come_up(service: DeliveryService) -> None:
        await until(lambda: service.stats.attempts[("oncall", RETRYING)] >= 2, "two refused attempts")
        hook.start()

    try:
        service = deliver(store, [webhook("oncall", hook.url)], [[notification(1)]], during=come_up)
    finally:
        hook.stop()
    rows = attempts(store)
    assert len(rows) >= 3
    assert rows[:-1] == [(1, 1, "oncall", n, RETRYING, None, "connection refused") for n in range(1, len(rows))]
    assert rows[-1] == (1, 1, "oncall", len(rows), DELIVERED, 204, "")
    (received,) = hook.received
    assert not hook.problems, hook.problems  # the signature verified with standardwebhooks
    assert received.headers["webhook-id"] == f"{alert(1)}:1" and received.json == notification(1)
    assert service.summary()[-1].startswith("delivery: 1 records, 0 invalid, 0 duplicate, 0 not done: 1 delivered")


@pytest.mark.parametrize(("script", "timeout", "errors"), [
    ([Reply(500, b"oops"), Reply(503, b"busy")], 5.0, [(500, "HTTP 500: oops"), (503, "HTTP 503: busy")]),
    ([Reply(429, b"slow down", {"retry-after": "1"})], 5.0, [(429, "HTTP 429: slow down")]),
    ([Hang(30.0)], 0.3, [(None, "no answer within 0.3s")]),
], ids=["5xx", "429-retry-after", "timeout"])
def test_retryable_failures_are_retried_with_the_same_webhook_id(
    store: Store, script: list[Reply | Hang], timeout: float, errors: list[tuple[int | None, str]],
) -> None:
    with WebhookReceiver(secret=SECRET) as hook:
        hook.answer(*script)
        deliver(store, [webhook("oncall", hook.url)], [[notification(1)]], timeout=timeout)
        requests = hook.wait_for(len(script) + 1)
    rows = attempts(store)
    expected = [(1, 1, "oncall", n, RETRYING, status, error) for n, (status, error) in enumerate(errors, 1)]
    assert rows == [*expected, (1, 1, "oncall", len(errors) + 1, DELIVERED, 204, "")]
    assert len(requests) == len(script) + 1 and not hook.problems
    assert {r.headers["webhook-id"] for r in requests} == {f"{alert(1)}:1"}
    if script[0] == Reply(429, b"slow down", {"retry-after": "1"}):
        assert requests[1].at - requests[0].at >= 1.0, "the receiver's Retry-After was not waited out"


def test_a_permanent_4xx_is_not_retried_and_gives_up_at_once(store: Store) -> None:
    with WebhookReceiver(secret=SECRET) as hook:
        hook.answer(Reply(404, b"no such hook"))
        service = deliver(store, [webhook("oncall", hook.url)], [[notification(1)]])
        assert len(hook.received) == 1
    assert attempts(store) == [(1, 1, "oncall", 1, GAVE_UP, 404, "HTTP 404: no such hook (not retryable)")]
    assert b'logystera_delivery_notifications_total{channel="oncall",result="gave_up"} 1.0' in DeliveryMetrics(service).exposition()
    assert "0 delivered, 0 collapsed, 1 gave up" in service.summary()[0]


def test_over_the_rate_limit_notifications_are_held_collapsed_and_delivered_later(store: Store) -> None:
    # 2 per 2 s. Batch 1: alerts 1 and 2 take both tokens. Batch 2: alert 1 seq 2..5 and alert 3 arrive with the
    # bucket empty: all held. Alert 1 is first in line: at ~1 s its backlog goes out as seq 5 carrying 3; alert 3 at ~2 s.
    with WebhookReceiver(secret=SECRET) as hook:
        channel = webhook("oncall", hook.url, per="2s", rate_max=2)
        first = [notification(1), notification(2)]
        second = [*(notification(1, seq) for seq in (2, 3, 4, 5)), notification(3)]
        service = deliver(store, [channel], [first, second])
        requests = hook.wait_for(4)
    assert not hook.problems
    assert [r.headers["webhook-id"] for r in requests[2:]] == [f"{alert(1)}:5", f"{alert(3)}:1"]
    assert requests[2].json == {**notification(1, 5), "collapsed": 3}
    assert "collapsed" not in requests[3].json and len(requests) == 4
    rows = attempts(store)
    held, collapsed = (RATE_LIMITED, None, HELD), (RATE_LIMITED, None, f"{COLLAPSED_INTO}5")
    assert rows == [
        (1, 1, "oncall", 1, DELIVERED, 204, ""),
        *[row for seq in (2, 3, 4) for row in ((1, seq, "oncall", 1, *held), (1, seq, "oncall", 2, *collapsed))],
        (1, 5, "oncall", 1, *held), (1, 5, "oncall", 2, DELIVERED, 204, ""),
        (2, 1, "oncall", 1, DELIVERED, 204, ""),
        (3, 1, "oncall", 1, *held), (3, 1, "oncall", 2, DELIVERED, 204, ""),
    ]
    ended = {result: n for (name, result), n in service.stats.notifications.items() if name == "oncall"}
    assert ended == {"delivered": 4, "collapsed": 3}  # 7 notifications, every one accounted for


def test_a_hanging_channel_does_not_delay_a_healthy_one(store: Store) -> None:
    with WebhookReceiver(secret=SECRET) as slow, WebhookReceiver(secret=SECRET) as fast:
        slow.answer(Hang(60.0), Hang(60.0), Hang(60.0))

        async def healthy_first(service: DeliveryService) -> None:
            await until(lambda: service.stats.attempts[("fast", DELIVERED)] == 3, "the healthy channel delivers all three")
            assert len(slow.received) == 3, "the slow channel got its calls at the same time"
            assert not any(name == "slow" for name, _ in service.stats.attempts), "...and none of them has come back"
            slow.release()

        records = [notification(n, deliver=["slow", "fast"]) for n in (1, 2, 3)]
        deliver(store, [webhook("slow", slow.url), webhook("fast", fast.url)], [records], timeout=30.0, during=healthy_first)
        assert not all_problems([slow, fast])
    rows = attempts(store)
    assert rows == [(n, 1, name, 1, DELIVERED, 204, "") for name in ("fast", "slow") for n in (1, 2, 3)]


def test_a_restart_skips_what_was_finished_and_continues_attempt_numbers(store: Store) -> None:
    good = WebhookReceiver(secret=SECRET)
    down = WebhookReceiver(secret=SECRET)
    channels = [webhook("good", good.url), webhook("down", down.url)]
    records = [notification(1, deliver=["good", "down"])]

    async def stop_while_retrying(service: DeliveryService) -> None:
        await until(lambda: service.stats.attempts[("good", DELIVERED)] == 1 and service.stats.attempts[("down", RETRYING)] >= 2,
                    "delivered on one channel, retrying on the other")

    good.start()
    try:
        deliver(store, channels, [records], during=stop_while_retrying, drain=False)
        before = attempts(store)
        down.start()
        second = deliver(store, channels, [records])
    finally:
        good.stop()
        down.stop()
    assert len(good.received) == 1, "delivered before the restart: not sent again"
    assert len(down.received) == 1 and not all_problems([good, down])
    tried = len([row for row in before if row[2] == "down"])
    after = attempts(store)
    assert after[:tried] == before[:tried] and after[-1] == (1, 1, "good", 1, DELIVERED, 204, "")
    assert after[tried] == (1, 1, "down", tried + 1, DELIVERED, 204, "")
    assert dict(second.stats.notifications) == {("good", "done_before"): 1, ("down", "delivered"): 1}


def test_the_memory_of_seen_notifications_is_bounded_and_a_forgotten_duplicate_is_answered_by_the_log(store: Store) -> None:
    # Remember 3 alerts. 1..5 delivered (1 and 2 forgotten); then 5 again (remembered: a duplicate), 5 seq 1 after seq 2
    # (older than one handed out: a duplicate too) and 1 again (forgotten: handed out, the log says done before, no call).
    batches = [[notification(n)] for n in range(1, 6)] + [[notification(5)], [notification(5, 2), notification(5, 1)],
                                                          [notification(1)]]
    with WebhookReceiver(secret=SECRET) as hook:
        service = deliver(store, [webhook("oncall", hook.url)], batches, max_seen=3)
    assert sorted(r.headers["webhook-id"] for r in hook.received) == sorted(
        [f"{alert(n)}:1" for n in range(1, 6)] + [f"{alert(5)}:2"])
    assert service.remembered <= 3
    assert (service.stats.records, service.stats.duplicates) == (9, 2)
    assert service.stats.notifications[("oncall", "done_before")] == 1


def test_restored_records_rebuild_the_inhibitions_through_the_duplicate_check_and_count_nothing(store: Store) -> None:
    # Read again at a restart: the source fired, then resolved; an old copy of its firing comes after (detection is at
    # least once). Without the duplicate check the copy would make it inhibit again; an uninterrupted run ignores it.
    source = [absence(1, "shop-eu", "integration-silent"), absence(1, "shop-eu", "integration-silent", "resolved", 2),
              absence(1, "shop-eu", "integration-silent")]
    service = DeliveryService([], AttemptLog(store), holds=HoldPolicy(inhibit=[PACK_RULE]))
    service.restore(ReceivedRecord(source[0], b""))
    assert service.holds.inhibitor.active == 1
    for record in source[1:]:
        service.restore(ReceivedRecord(record, b""))
    assert (service.holds.inhibitor.active, service.remembered, service.pending) == (0, 1, 0)
    assert service.stats == DeliveryStats(), "nothing restored is counted: the earlier run counted it"


def test_a_record_counts_as_pending_from_the_moment_it_is_counted_read(store: Store) -> None:
    # submit() looks the records up in the attempt log (a store query, awaited) before it hands them out: while it
    # waits, the pending gauge and drain() must already see them, not "1 read, 0 pending".
    hook = WebhookReceiver(secret=SECRET)
    hook.start()

    async def main() -> tuple[tuple[int, int], tuple[int, int]]:
        service = DeliveryService([open_sender(webhook("oncall", hook.url), ENV, timeout=5.0)], AttemptLog(store, interval=0.02),
                                  FAST)
        service.start()
        try:
            submitting = asyncio.create_task(service.submit([(received(notification(1)), None)]))
            await asyncio.sleep(0)  # the submission runs up to its first wait: the attempt log's look-up
            during = (service.stats.records, service.pending)
            await service.guarded(submitting)
            await service.guarded(service.drain())
            return during, (service.stats.records, service.pending)
        finally:
            await service.stop(grace=5.0)

    try:
        during, after = asyncio.run(main())
    finally:
        hook.stop()
    assert during == (1, 1), "counted read but not pending while the attempt log is asked"
    assert after == (1, 0)
    assert [r.headers["webhook-id"] for r in hook.received] == [f"{alert(1)}:1"]


def test_an_alert_in_progress_is_never_forgotten(store: Store) -> None:
    # Remember 1 alert; alert 1 is retrying (receiver down) while 2 and 3 pass: a copy of alert 1 is still a duplicate.
    down = WebhookReceiver(secret=SECRET)
    good = WebhookReceiver(secret=SECRET)

    async def others_pass(service: DeliveryService) -> None:
        await until(lambda: service.stats.attempts[("down", RETRYING)] >= 1, "alert 1 retrying")
        await service.submit([(received(notification(2, deliver=["good"])), None),
                              (received(notification(3, deliver=["good"])), None),
                              (received(notification(1, deliver=["down"])), None)])
        await until(lambda: service.stats.attempts[("good", DELIVERED)] == 2, "alerts 2 and 3 delivered")
        down.start()

    good.start()
    try:
        service = deliver(store, [webhook("down", down.url), webhook("good", good.url)],
                          [[notification(1, deliver=["down"])]], during=others_pass, max_seen=1)
    finally:
        good.stop()
        down.stop()
    assert service.stats.duplicates == 1
    assert [r.headers["webhook-id"] for r in down.received] == [f"{alert(1)}:1"]
    assert service.stats.notifications[("down", "delivered")] == 1


def test_fan_out_to_every_channel_type(store: Store, tmp_path: Any) -> None:
    with WebhookReceiver(secret=SECRET) as hook, SlackReceiver() as slack, TeamsReceiver() as teams, SmtpReceiver() as smtp:
        environ = {**ENV, "SLACK_URL": slack.url, "TEAMS_URL": teams.url}
        channels = [
            webhook("oncall", hook.url),
            SlackChannel.model_validate({"name": "chat", "type": "slack", "url_env": "SLACK_URL", "send_resolved": True}),
            TeamsChannel.model_validate({"name": "teams", "type": "teams", "url_env": "TEAMS_URL", "send_resolved": True}),
            EmailChannel.model_validate({"name": "mail", "type": "email", "to": ["ops@example.com"],
                                         "smtp": {"host": "127.0.0.1", "port": smtp.port}}),  # send_resolved: false
        ]
        names = ["oncall", "chat", "teams", "mail", "pager"]  # pager: not configured here
        firing = make_notification(deliver=names)
        resolved = resolved_notification(deliver=names)
        service = deliver(store, channels, [[firing, resolved, firing]], environ=environ)
        assert [len(hook.received), len(slack.received), len(teams.received), len(smtp.messages)] == [2, 2, 2, 1]
        assert not all_problems([hook, slack, teams, smtp])
    rows = {(seq, channel): (outcome, error) for alert_id, seq, channel, _, outcome, _, error in attempts(store)}
    assert rows == {
        **{(seq, name): (DELIVERED, "") for seq in (1, 3) for name in ("oncall", "chat", "teams")},
        (1, "mail"): (DELIVERED, ""),  # the resolved one is not sent to mail (send_resolved: false) and not recorded
        (1, "pager"): ("failed", UNKNOWN_CHANNEL), (3, "pager"): ("failed", UNKNOWN_CHANNEL),
    }
    assert service.stats.notifications[("mail", "not_sent_resolved")] == 1
    assert (service.stats.records, service.stats.duplicates) == (3, 1)
    assert {alert_id for alert_id, *_ in attempts(store)} == {int(ALERT_ID, 16)}


def test_the_log_tells_what_is_finished_and_how_many_a_carrier_carries() -> None:
    # seq 1 collapsed into 3, seq 2 into 3, then 3 (carrying two) collapsed into 5 after a restart; 5 is still held
    rows = {
        ("oncall", "a", 1): Earlier(2, 0, RATE_LIMITED, f"{COLLAPSED_INTO}3"),
        ("oncall", "a", 2): Earlier(2, 0, RATE_LIMITED, f"{COLLAPSED_INTO}3"),
        ("oncall", "a", 3): Earlier(4, 1, RATE_LIMITED, f"{COLLAPSED_INTO}5"),
        ("oncall", "a", 4): Earlier(1, 1, GAVE_UP, "HTTP 404 (not retryable)"),
        ("oncall", "a", 5): Earlier(1, 0, RATE_LIMITED, HELD),
        ("chat", "a", 5): Earlier(3, 3, RETRYING, "HTTP 503"),
        ("chat", "a", 6): Earlier(1, 1, DELIVERED, ""),
    }
    counted = with_carried_counts(rows)
    assert {key: e.collapsed for key, e in counted.items() if e.collapsed} == {("oncall", "a", 3): 2, ("oncall", "a", 5): 3}
    assert {key for key, e in counted.items() if not e.finished} == {("oncall", "a", 5), ("chat", "a", 5)}
    assert counted[("oncall", "a", 3)].carrier == 5 and counted[("oncall", "a", 5)].carrier is None
