"""Generic Bytewax sinks that hand every batch to a callback: how replay collects its output, and live its rejects and stats.

:class:`CallbackSink` calls back in every worker that has items;
:class:`OwnerSink` in one process of a cluster, the one that prints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition
from typing_extensions import override

X = TypeVar("X")


class _CallbackPartition(StatelessSinkPartition[X]):
    def __init__(self, callback: Callable[[list[X]], None], lock: threading.Lock) -> None:
        self._callback = callback
        self._lock = lock

    def write_batch(self, items: list[X]) -> None:
        with self._lock:
            self._callback(items)


class CallbackSink(DynamicSink[X], Generic[X]):
    """Hands every batch to a callback, one batch at a time across worker threads (the callback needs no lock of its own)."""

    def __init__(self, callback: Callable[[list[X]], None]) -> None:
        self._callback = callback
        self._lock = threading.Lock()

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CallbackPartition[X]:
        return _CallbackPartition(self._callback, self._lock)


class _OwnerPartition(StatefulSinkPartition[X, None]):
    def __init__(self, callback: Callable[[list[X]], None]) -> None:
        self._callback = callback

    @override
    def write_batch(self, values: list[X]) -> None:  # Bytewax hands a partitioned sink the values, without their keys
        self._callback(values)

    @override
    def snapshot(self) -> None:
        return None



class OwnerSink(FixedPartitionedSink[X, None], Generic[X]):
    """Hands every batch to a callback in the one process of a cluster that has ``owner`` set (process 0).

    One partition, listed only there: Bytewax exchanges every item to it, so
    the callback sees all the cluster's items, and those of each upstream
    worker in the order that worker sent them. Items are keyed (any key).
    """

    def __init__(self, callback: Callable[[list[X]], None], owner: bool) -> None:
        self._callback = callback
        self._owner = owner

    @override
    def list_parts(self) -> list[str]:
        return ["owner"] if self._owner else []

    @override
    def part_fn(self, item_key: str) -> int:
        return 0

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _OwnerPartition[X]:
        return _OwnerPartition(self._callback)
