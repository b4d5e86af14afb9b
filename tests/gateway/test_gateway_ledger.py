"""The batch ledger and delivery handles on their own: what is remembered, for how long, and what counts as written.

Delivery reports are fed by hand here (as the producer's poll thread feeds
them); the paths through a real broker are in test_gateway_broker_down.py.
"""

from __future__ import annotations

import asyncio

from gateway.kafka import DeliveryHandle
from gateway.ledger import BatchLedger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_handle_counts_only_acknowledged_records_and_resolves_once_every_record_has_a_report() -> None:
    handle = DeliveryHandle(["a", "b", "c", "d"])
    handle.report(0, None)
    handle.report(1, None)
    assert not handle.done and handle.written_ids == ["a", "b"]
    handle.refuse_from(2, "the producer's local queue is full")
    assert handle.done and not handle.all_written
    assert handle.written_ids == ["a", "b"] and handle.error == "the producer's local queue is full"
    empty = DeliveryHandle([])
    empty.refuse_from(0, "ignored: nothing to refuse")
    assert empty.done and empty.all_written and empty.error is None


def test_a_completed_batch_is_remembered_for_the_window_and_a_batch_in_flight_until_its_delivery_ends() -> None:
    clock = Clock()
    ledger = BatchLedger(600.0, clock)
    ledger.complete(("shop", "taken-batch"), {"accepted": 1, "rejected": [], "duplicate": False})
    in_flight = DeliveryHandle(["x", "y"])
    ledger.track(("shop", "slow-batch"), in_flight)
    clock.now += 599.9
    state = ledger.get(("shop", "taken-batch"))
    assert state is not None and state.answer == {"accepted": 1, "rejected": [], "duplicate": False}
    clock.now += 0.2
    assert ledger.get(("shop", "taken-batch")) is None
    slow = ledger.get(("shop", "slow-batch"))
    assert slow is not None and not slow.settle()  # its records may still be written: not forgotten
    in_flight.report(0, None)
    in_flight.report(1, None)
    assert slow.settle() and slow.written == {"x", "y"}
    clock.now += 600.1
    assert ledger.get(("shop", "slow-batch")) is None
    assert len(ledger) == 0


def test_attempts_of_one_batch_take_turns_and_other_batches_do_not_wait() -> None:
    ledger = BatchLedger(600.0, Clock())
    order: list[str] = []

    async def attempt(key: tuple[str, str], name: str, turns: int) -> None:
        async with ledger.hold(key):
            order.append(f"{name} in")
            for _ in range(turns):  # let the other tasks run meanwhile (as awaiting the broker does)
                await asyncio.sleep(0)
            order.append(f"{name} out")

    async def main() -> None:
        await asyncio.gather(attempt(("shop", "b1"), "first", 3), attempt(("shop", "b1"), "retry", 0),
                             attempt(("shop", "b2"), "other", 0))
        assert ledger._locks == {}  # no lock outlives its last user

    asyncio.run(main())
    assert order == ["first in", "other in", "other out", "first out", "retry in", "retry out"]
