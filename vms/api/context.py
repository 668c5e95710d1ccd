"""What every request handler needs, made once per app: settings, database, clock, volumes, and the
small in-process state of the API (login throttle, status cache, export and playback jobs)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from vms.core.clock import Clock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.recording.volumes import VolumeSet


class LoginThrottle:
    """At most `limit` failed logins per (username, client) per minute; counts on the monotonic clock."""

    PRUNE_ABOVE = 10_000  # pairs kept before those with no failure in the window are dropped

    def __init__(self, clock: Clock, limit: int, window_s: float = 60.0) -> None:
        self.clock = clock
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()
        self._pruned_mono = float("-inf")

    def _recent(self, key: tuple[str, str], create: bool = False) -> deque[float]:
        now = self.clock.monotonic()
        q = self._failures.get(key)
        if q is None:
            if not create:
                return deque()  # only failures make an entry
            q = self._failures[key] = deque()
        while q and now - q[0] >= self.window_s:
            q.popleft()
        return q

    def retry_after(self, username: str, client: str) -> float | None:
        """Seconds to wait if this pair is blocked, else None."""
        with self._lock:
            q = self._recent((username, client))
            if len(q) < self.limit:
                return None
            return max(1.0, self.window_s - (self.clock.monotonic() - q[0]))

    def failed(self, username: str, client: str) -> None:
        with self._lock:
            now = self.clock.monotonic()
            self._recent((username, client), create=True).append(now)
            # At most one scan per window: a spray of names within one window is kept (each counts).
            if len(self._failures) > self.PRUNE_ABOVE and now - self._pruned_mono >= self.window_s:
                self._pruned_mono = now
                self._prune()

    def _prune(self) -> None:
        """Bound memory under a spray of names. A pair's old failures were only dropped when that same pair
        tried again, so every mistyped name stayed for good and, past the limit, each failed login scanned
        the whole table and freed nothing."""
        now = self.clock.monotonic()
        for key in [k for k, q in self._failures.items() if not q or now - q[-1] >= self.window_s]:
            del self._failures[key]

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._failures.pop((username, client), None)


@dataclass
class ApiContext:
    settings: Settings
    database: Database
    clock: Clock
    volumes: VolumeSet
    throttle: LoginThrottle
    extras: dict = field(default_factory=dict)  # per-app singletons made lazily (caches, job runners)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def make(cls, settings: Settings, database: Database, clock: Clock) -> ApiContext:
        return cls(settings=settings, database=database, clock=clock,
                   volumes=VolumeSet.from_settings(settings),
                   throttle=LoginThrottle(clock, settings.api.login_failures_per_minute))

    @property
    def cache_dir(self) -> Path:
        return Path(self.settings.data_dir) / "cache" / "api"

    @property
    def export_dir(self) -> Path:
        return Path(self.settings.data_dir) / "exports"

    @property
    def status_database(self) -> Database:
        """A second small engine for the status cache: its recompute never waits for a pooled connection
        held by a request that is itself waiting for the cache. In-memory SQLite cannot be shared that
        way, so it keeps the main one."""
        url = self.database.url
        if url.startswith("sqlite") and (url.endswith(":memory:") or url.split("?")[0].rstrip("/") == "sqlite:"):
            return self.database
        return self.singleton("status_db", lambda: Database(url, **({} if url.startswith("sqlite")
                                                                      else {"pool_size": 2, "max_overflow": 0})))

    def singleton(self, name: str, factory):
        """One object per app, made on first use (keeps create_app free of side effects)."""
        with self.lock:
            if name not in self.extras:
                self.extras[name] = factory()
            return self.extras[name]
