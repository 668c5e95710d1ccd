"""Reconnect delays: exponential with full jitter, from about 1 s up to 60 s, reset after a stable minute."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float = 1.0, maximum_s: float = 60.0, stable_s: float = 60.0,
                 rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.stable_s = stable_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Delay before the next attempt: a random point in [50 %, 100 %] of the exponential step, so
        139 cameras that fail together do not reconnect together."""
        step = min(self.maximum_s, self.initial_s * 2 ** self.failures)
        self.failures += 1
        return step * (0.5 + 0.5 * self._rng.random())

    def connection_lasted(self, seconds: float) -> None:
        """A connection ended after streaming this long; a stable one resets the backoff."""
        if seconds >= self.stable_s:
            self.failures = 0
