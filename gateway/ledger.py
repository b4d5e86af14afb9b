"""What the gateway remembers per batch: taken (and the answer it got), or how far its writing got.

A site retries a batch with the same ``batch_id`` until it gets a ``200``
(docs/protocol.md §2). So, per ``(site, batch_id)``:

- once every accepted signal is written, the answer is kept for ``window``
  seconds (10 minutes by default) and a retry gets it again with
  ``"duplicate": true``, nothing produced;
- while the batch is not complete, the ids of its signals the broker has
  acknowledged and the delivery still in flight (if any) are kept, so a retry
  waits for that delivery and writes only the signals not written yet: a
  prefix delivered before a timeout is never written twice;
- a batch none of whose signals were written is forgotten: it is not taken.

Attempts of one batch are serialised (:meth:`BatchLedger.hold`), so two
concurrent retries never both write. This memory is per process; see
docs/gateway.md for what that means with several gateway processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.kafka import DeliveryHandle

Key = tuple[str, str]
"""``(site, batch_id)``: two sites can never collide on a batch id, or take each other's."""


@dataclass
class BatchState:
    """One batch's progress: acknowledged signal ids, the delivery in flight, the final answer once complete."""

    written: set[str] = field(default_factory=set)
    pending: DeliveryHandle | None = None
    answer: dict[str, Any] | None = None
    expires: float = 0.0

    def settle(self) -> bool:
        """Fold a finished delivery into ``written``; ``False`` while one is still in flight."""
        if self.pending is not None:
            if not self.pending.done:
                return False
            self.written.update(self.pending.written_ids)
            self.pending = None
        return True


class BatchLedger:
    """Batch states by key, each forgotten ``window`` seconds after it was last touched (never while a delivery is in flight)."""

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self._clock = clock
        self._states: dict[Key, BatchState] = {}
        self._expiry: deque[tuple[float, Key]] = deque()
        self._locks: dict[Key, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._states)

    @contextlib.asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[None]:
        """Serialise the attempts of one batch (event-loop only)."""
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    def get(self, key: Key) -> BatchState | None:
        """The state of a batch seen within the window, if any."""
        self._forget_expired()
        return self._states.get(key)

    def track(self, key: Key, handle: DeliveryHandle) -> BatchState:
        """Record a delivery in flight for ``key`` (before it starts, so a cancelled attempt still leaves it known)."""
        state = self._states.get(key) or BatchState()
        state.pending = handle
        self._keep(key, state)
        return state

    def complete(self, key: Key, answer: dict[str, Any]) -> None:
        """Every accepted signal is written: remember the answer, drop the per-signal ids."""
        self._keep(key, BatchState(answer=answer))

    def forget(self, key: Key) -> None:
        """Nothing of the batch was written: a retry starts from scratch."""
        self._states.pop(key, None)

    def _keep(self, key: Key, state: BatchState) -> None:
        state.expires = self._clock() + self.window
        self._states[key] = state
        self._expiry.append((state.expires, key))

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, key = self._expiry.popleft()
            state = self._states.get(key)
            if state is None or state.expires > now:
                continue  # forgotten already, or touched again since (a later entry covers it)
            if state.pending is not None and not state.pending.done:
                self._keep(key, state)  # never forget a batch whose signals may still be written
                continue
            del self._states[key]
