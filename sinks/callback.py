"""A generic Bytewax sink that hands every batch to a callback: how replay collects its output, and live its rejects and stats."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition
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
