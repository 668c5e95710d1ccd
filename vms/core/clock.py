"""The one source of time: a real clock for production, a simulated one for tests.

Wall times are UTC internally, stored as integer milliseconds since the Unix epoch (see
docs/design/time.md); local time (Asia/Shanghai) is only for display, folder names and audits.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall time, UTC, in milliseconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class SimulatedClock:
    """A clock that moves only when told to; sleep() advances it instead of waiting."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00:00Z
        self._now_ms = start_ms
        self._mono = 0.0
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now_ms

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now_ms += round(seconds * 1000)
            self._mono += seconds

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (NTP, an operator), the monotonic one does not: a clock step."""
        with self._lock:
            self._now_ms += round(seconds * 1000)

    def set(self, when: datetime | int) -> None:
        ms = when if isinstance(when, int) else to_ms(when)
        with self._lock:
            if ms < self._now_ms:
                raise ValueError("a simulated clock does not go backwards")
            self._mono += (ms - self._now_ms) / 1000
            self._now_ms = ms


def to_ms(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("naive datetime: give a timezone")
    return int(when.timestamp() * 1000)


def from_ms(ms: int, tz=UTC) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=tz)


_default: Clock = SystemClock()


def default_clock() -> Clock:
    return _default
