"""When a camera session tries again after a failure (docs/design/recording.md, "Reconnecting").

Two schedules, because the two kinds of failure call for opposite answers:
- Network failures (unreachable, refused, stalled, stream ended, timeouts, an unusable answer): the camera
  may be back any second and every second of waiting is footage lost, so retry fast: 1, 2, 4 s...
  capped at `retry_max_seconds` (5 s), each wait jittered to 50-100 % of its step so that cameras that
  fail together (a switch, the county link) do not all reconnect in the same instant.
- Refused credentials (401/403): retrying cannot help until someone corrects them, and Hikvision and
  Dahua cameras lock the login after a few failures. A few quick tries (a camera can refuse briefly
  while it boots), then 10 min, doubling up to an hour; never sooner than the step (a lockout window
  must pass), up to 20 % later to spread cameras refused together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

AUTH_REASONS = frozenset({"auth_failed"})
# Bounds the exponent: a camera can be away for months, and 2.0 ** 1024 overflows a float.
MAX_DOUBLINGS = 30
AUTH_JITTER = 0.2


@dataclass(frozen=True)
class Retry:
    """The answer to one failure: wait delay_s, then try again."""

    delay_s: float
    # The credentials were refused quick_tries times in a row: this is the long wait that protects the
    # camera's account (the session raises the auth_failed fault).
    auth_backoff: bool = False


class ReconnectPolicy:
    """Decides the wait after each failed attempt. Not thread-safe: one per camera session."""

    def __init__(self, retry_initial_s: float = 1.0, retry_max_s: float = 5.0, stable_s: float = 60.0,
                 auth_quick_tries: int = 3, auth_backoff_s: float = 600.0, auth_backoff_max_s: float = 3600.0,
                 rng: random.Random | None = None) -> None:
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.stable_s = stable_s
        self.auth_quick_tries = auth_quick_tries
        self.auth_backoff_s = auth_backoff_s
        self.auth_backoff_max_s = max(auth_backoff_max_s, auth_backoff_s)
        self.network_failures = 0  # in a row, since the last stable connection
        self.auth_refusals = 0  # in a row, since the camera last accepted the credentials
        self._rng = rng or random.Random()

    @classmethod
    def from_settings(cls, ingest, rng: random.Random | None = None) -> ReconnectPolicy:
        """From IngestSettings (vms.core.settings)."""
        return cls(ingest.retry_initial_seconds, ingest.retry_max_seconds, ingest.stable_seconds,
                   ingest.auth_quick_tries, ingest.auth_backoff_seconds, ingest.auth_backoff_max_seconds, rng)

    def accepted(self) -> None:
        """The camera accepted the connection and its credentials."""
        self.auth_refusals = 0

    def connection_lasted(self, seconds: float) -> None:
        """A connection that opened ended after this long; a stable one starts the network schedule over."""
        if seconds >= self.stable_s:
            self.network_failures = 0

    def failed(self, reason: str, waited_s: float = 0.0) -> Retry:
        """The wait before the next attempt after a failure with this gap reason. waited_s: how long the
        failed attempt itself waited for the camera before giving up (a connect that timed out); it
        counts towards a network wait, so that an attempt that already waited long is followed at once
        and a camera that comes back is retried within retry_max_s of its return."""
        if reason in AUTH_REASONS:
            self.auth_refusals += 1
            beyond = self.auth_refusals - self.auth_quick_tries
            if beyond >= 0:
                step = min(self.auth_backoff_max_s, self.auth_backoff_s * 2.0 ** min(beyond, MAX_DOUBLINGS))
                return Retry(step * (1 + AUTH_JITTER * self._rng.random()), auth_backoff=True)
            # A quick try: on the network schedule.
        step = min(self.retry_max_s, self.retry_initial_s * 2.0 ** min(self.network_failures, MAX_DOUBLINGS))
        self.network_failures += 1
        return Retry(max(0.0, step * (0.5 + 0.5 * self._rng.random()) - waited_s))
