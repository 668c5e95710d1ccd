"""SIGINT/SIGTERM as a stop request that the main thread polls, with no lock taken in the handler.

A Python signal handler runs in the main thread between two bytecodes, possibly while that thread holds
a lock: threading.Event.wait() holds the Event's own lock for a few bytecodes around each sleep, so a
handler calling Event.set() on the Event the main thread waits on can wait for that lock forever
(Python's signal documentation: no synchronisation primitives in handlers; CPython issue 126434 for
multiprocessing.Event). The handler here only stores the signal number.
"""

from __future__ import annotations

import signal
import time


class StopSignals:
    """Installs handlers for `signals` (main thread only); `wait()` returns once one has arrived."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        self.received = signum

    def wait(self, timeout: float | None = None, poll_s: float = 0.2) -> bool:
        """True once a signal has arrived; False if `timeout` seconds passed first. A signal is seen
        within `poll_s` (time.sleep takes no lock, and resumes after the handler ran)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.received is None:
            left = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True
