"""The login throttle: attempts counted before the password check, growing delays per client address and
per account (no account is locked), and memory that stays bounded over months of mistyped names."""

from __future__ import annotations

from vms.api.context import LoginAttempt, LoginDelay, LoginInFlight, LoginThrottle
from vms.core.clock import SimulatedClock


def _throttle(clock, per_address=5, per_account=15, window_s=900.0, max_delay_s=30.0) -> LoginThrottle:
    return LoginThrottle(clock, per_address=per_address, per_account=per_account, window_s=window_s,
                         max_delay_s=max_delay_s)


def _attempt(throttle, username: str, client: str, outcome: str = "failed") -> LoginAttempt | LoginDelay:
    attempt = throttle.begin(username, client)
    assert not isinstance(attempt, LoginInFlight)
    if isinstance(attempt, LoginAttempt):
        throttle.finish(attempt, outcome)
    return attempt


def test_attempts_count_while_they_are_checked_so_concurrent_guesses_meet_the_limit():
    throttle = _throttle(SimulatedClock())
    # 30 guesses at the same instant, none checked yet: only as many as the free failures get to a check.
    results = [throttle.begin("view", "10.0.0.66") for _ in range(30)]
    assert sum(isinstance(r, LoginAttempt) for r in results) == 5
    assert all(isinstance(r, LoginInFlight) and r.by == "address" for r in results[5:])
    for attempt in results[:5]:
        throttle.finish(attempt, "failed")
    delay = throttle.begin("view", "10.0.0.66")  # the waiting ones are then delayed
    assert isinstance(delay, LoginDelay) and delay.by == "address" and delay.seconds == 1


def test_concurrent_right_passwords_all_get_through():
    throttle = _throttle(SimulatedClock())
    first = [throttle.begin(f"user{i}", "10.0.0.5") for i in range(8)]  # a shift starts behind one NAT
    assert [isinstance(r, LoginAttempt) for r in first] == [True] * 5 + [False] * 3
    for attempt in first[:5]:
        throttle.finish(attempt, "succeeded")
    assert all(isinstance(throttle.begin(f"user{i}", "10.0.0.5"), LoginAttempt) for i in range(5, 8))


def test_delays_grow_per_address_up_to_the_cap_and_lapse():
    clock = SimulatedClock()
    throttle = _throttle(clock, max_delay_s=30)
    for _ in range(5):
        assert isinstance(_attempt(throttle, "view", "10.0.0.66"), LoginAttempt)
    waits = []
    for _ in range(8):
        delay = _attempt(throttle, "view", "10.0.0.66")
        assert isinstance(delay, LoginDelay)
        waits.append(round(delay.seconds))
        clock.advance(delay.seconds)
        assert isinstance(_attempt(throttle, "view", "10.0.0.66"), LoginAttempt)  # let through once waited
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    # Another address is not delayed by this one (the account counts 5 of its 13 failures, below its 15).
    assert throttle.retry_after("view", "10.0.0.7") is None
    clock.advance(900)
    assert throttle.retry_after("view", "10.0.0.66") is None


def test_the_account_is_delayed_only_after_failures_from_several_addresses_and_never_locked():
    clock = SimulatedClock()
    throttle = _throttle(clock, per_address=5, per_account=15, max_delay_s=30)
    for address in ("10.0.1.1", "10.0.1.2", "10.0.1.3"):
        for _ in range(5):
            assert isinstance(_attempt(throttle, "view", address), LoginAttempt)
    delay = throttle.retry_after("view", "10.0.0.7")  # the real user, elsewhere
    assert delay is not None and delay.by == "account" and delay.seconds <= 1
    # More attackers keep failing: the real user waits at most the cap, never a lock.
    for i in range(40):
        clock.advance(31)
        assert isinstance(_attempt(throttle, "view", f"10.0.2.{i}"), LoginAttempt)
    delay = throttle.retry_after("view", "10.0.0.7")
    assert delay is not None and delay.seconds <= 30
    clock.advance(delay.seconds)
    # the right password clears the account's failures
    assert isinstance(_attempt(throttle, "view", "10.0.0.7", "succeeded"), LoginAttempt)
    assert throttle.retry_after("view", "10.0.3.1") is None


def test_one_address_cannot_keep_the_real_user_waiting():
    """One attacking address fails on an account for hours, trying again the moment each delay ends (a
    429 costs it nothing): it must not push the account past its limit, or the real user, elsewhere,
    would find the account's delay renewed every time they come back (found in review)."""
    clock = SimulatedClock()
    throttle = _throttle(clock, per_address=5, per_account=15, max_delay_s=30)
    for _ in range(200):
        attempt = _attempt(throttle, "view", "10.0.0.66")
        if isinstance(attempt, LoginDelay):
            assert attempt.by == "address"
            clock.advance(attempt.seconds)
        assert throttle.retry_after("view", "10.0.0.7") is None  # the real user gets in whenever they come
    # The attacker's own address is delayed after each of its failures, up to the cap.
    delay = throttle.retry_after("view", "10.0.0.66")
    if delay is not None:
        clock.advance(delay.seconds)
    assert isinstance(_attempt(throttle, "view", "10.0.0.66"), LoginAttempt)
    delay = throttle.retry_after("view", "10.0.0.66")
    assert delay is not None and delay.by == "address" and round(delay.seconds) == 30


def test_a_right_password_does_not_forgive_the_addresses_other_failures():
    clock = SimulatedClock()
    throttle = _throttle(clock)
    for _ in range(4):
        _attempt(throttle, "someone", "10.0.0.5")
    _attempt(throttle, "view", "10.0.0.5", "succeeded")
    assert throttle.retry_after("other", "10.0.0.5") is None  # 4 failures: still free
    _attempt(throttle, "other", "10.0.0.5")
    assert throttle.retry_after("other", "10.0.0.5") is not None  # the 5th: a success did not reset them


def test_old_failures_of_other_keys_are_forgotten():
    clock = SimulatedClock()
    throttle = _throttle(clock, window_s=60)
    for i in range(LoginThrottle.PRUNE_ABOVE + 1):  # one failed login each, never tried again
        throttle.failed(f"user{i}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    clock.advance(61)
    throttle.failed("operator", "10.1.0.8")
    # the address, the account and the pair of them; kept 20,002 keys for good, scanning them at every failure
    assert len(throttle._failures) <= 3
    # and the throttle still throttles
    for _ in range(4):
        throttle.failed("operator", "10.1.0.8")
    assert throttle.retry_after("operator", "10.1.0.8") is not None
    assert throttle.retry_after("admin", "10.1.0.9") is None


def test_a_spray_within_the_window_still_counts():
    clock = SimulatedClock()
    throttle = _throttle(clock, window_s=60)
    for i in range(2 * LoginThrottle.PRUNE_ABOVE):
        throttle.failed(f"spray{i}", "10.0.0.66")
    # each failure of the window counts: a key per name, one per name and address, one for the address
    assert len(throttle._failures) == 2 * (2 * LoginThrottle.PRUNE_ABOVE) + 1
    assert throttle.retry_after("never-tried", "10.0.0.67") is None
    assert ("account", "never-tried") not in throttle._failures  # a check alone makes no entry
    assert ("address", "10.0.0.67") not in throttle._failures
