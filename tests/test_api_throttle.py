"""The login throttle's memory stays bounded over months of mistyped names and address changes."""

from __future__ import annotations

from vms.api.context import LoginThrottle
from vms.core.clock import SimulatedClock


def test_old_failures_of_other_pairs_are_forgotten():
    clock = SimulatedClock()
    throttle = LoginThrottle(clock, limit=5)
    for i in range(LoginThrottle.PRUNE_ABOVE + 1):  # one failed login each, never tried again
        throttle.failed(f"user{i}", "10.0.0.7")
    clock.advance(61)
    throttle.failed("operator", "10.0.0.8")
    assert len(throttle._failures) <= 1  # kept 10,002 pairs for good, scanning them at every failure
    # and the throttle still throttles
    for _ in range(4):
        throttle.failed("operator", "10.0.0.8")
    assert throttle.retry_after("operator", "10.0.0.8") is not None
    assert throttle.retry_after("operator", "10.0.0.9") is None


def test_a_spray_within_the_window_still_counts():
    clock = SimulatedClock()
    throttle = LoginThrottle(clock, limit=5)
    for i in range(2 * LoginThrottle.PRUNE_ABOVE):
        throttle.failed(f"spray{i}", "10.0.0.66")
    assert len(throttle._failures) == 2 * LoginThrottle.PRUNE_ABOVE  # each failure of the last minute counts
    assert throttle.retry_after("never-tried", "10.0.0.66") is None
    assert ("never-tried", "10.0.0.66") not in throttle._failures  # a check alone makes no entry
