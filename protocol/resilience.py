"""Backoff with full jitter and a circuit breaker, both driven by an injected clock and random source.

Why both: backoff spaces the retries of one batch; the breaker notices that
the gateway is down (or refuses this site) and stops trying altogether for a
while, then lets exactly one probe through to find out whether it is back::

    closed --N consecutive failures--> open --cooldown--> half_open --probe ok--> closed
                                         ^                    |
                                         +----probe fails-----+
"""

from __future__ import annotations

import enum
import random as _random
import time
from collections.abc import Callable


class Backoff:
    """Full-jitter exponential backoff: attempt ``n`` waits ``uniform(0, min(cap, base × 2^(n-1)))`` seconds."""

    def __init__(self, base: float = 0.5, cap: float = 60.0, random: Callable[[], float] = _random.random) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff: need 0 < base ≤ cap")
        self.base = base
        self.cap = cap
        self._random = random

    def ceiling(self, attempt: int) -> float:
        """The largest wait of attempt ``attempt`` (1 = the first retry)."""
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 1) - 1, 62))

    def delay(self, attempt: int) -> float:
        """A random wait in ``[0, ceiling(attempt)]``."""
        return self._random() * self.ceiling(attempt)


class BreakerState(enum.Enum):
    """Where the breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``cooldown`` seconds one probe decides.

    Not thread-safe: one sender thread owns it. ``on_change(old, new)`` is
    called on every transition (the dispatcher logs them).
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if threshold < 1 or cooldown <= 0:
            raise ValueError("breaker: need threshold ≥ 1 and cooldown > 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0

    @property
    def state(self) -> BreakerState:
        """The current state (``open`` stays ``open`` until a request is allowed through)."""
        return self._state

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is not new and self._on_change is not None:
            self._on_change(old, new)

    def wait_time(self) -> float:
        """Seconds until a request may be made (0 unless open and cooling down)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def allow(self) -> bool:
        """May a request be made now? An open breaker whose cooldown is over turns half-open: that request is the probe."""
        if self._state is BreakerState.OPEN:
            if self.wait_time() > 0:
                return False
            self._move(BreakerState.HALF_OPEN)
        return True

    def success(self) -> None:
        """A request succeeded: close."""
        self._failures = 0
        self._move(BreakerState.CLOSED)

    def failure(self) -> None:
        """A request failed: open after ``threshold`` in a row, or at once if it was the probe."""
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            self.trip()

    def trip(self) -> None:
        """Open now (a failure that retrying soon cannot fix, or a failed probe); the cooldown starts again."""
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)
