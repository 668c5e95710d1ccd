"""What every request handler needs, made once per app: settings, database, clock, volumes, and the
small in-process state of the API (login throttle, status cache, export and playback jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from vms.core.clock import Clock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.recording.volumes import VolumeSet


@dataclass(frozen=True)
class LoginAttempt:
    """A login let through to its password check (LoginThrottle.begin); LoginThrottle.finish says how it ended."""

    username: str
    client: str


@dataclass(frozen=True)
class LoginDelay:
    """A login refused before any password check: wait `seconds` (`by` is "address" or "account")."""

    seconds: float
    by: str


@dataclass(frozen=True)
class LoginInFlight:
    """Logins of this address or account being checked now could use up its free failures: ask again
    when they are done (a fraction of a second)."""

    by: str


class LoginThrottle:
    """Failed logins per client address and per account, remembered `window_s` on the monotonic clock.

    Each key may fail `free` times (per_address / per_account); after that every attempt must come at
    least a delay after the key's latest failure, 1 s doubling with each further failure up to
    `max_delay_s`. Nothing locks an account: an attacker makes its own address wait, and it takes far
    more failures (from several addresses) before the real user, elsewhere, waits at most `max_delay_s`.
    An address's failures on an account count towards the account's limit only up to `per_address`:
    otherwise one address could push the account past its limit and, trying again each time the account's
    delay ends (a 429 costs it nothing), keep the real user waiting for good.

    Attempts in flight count before their password check (~0.25 s) ends: a key lets only as many through
    at once as it has failures left (one once it is past them), so 30 guesses at once cannot all be
    checked before the first failures are counted; the others wait for those to finish (LoginInFlight),
    and are let through if they were right, delayed if they were wrong."""

    PRUNE_ABOVE = 10_000  # keys kept before those with no failure in the window are dropped
    PRUNE_EVERY_S = 60.0  # at most one scan of the table this often

    def __init__(self, clock: Clock, per_address: int, per_account: int, window_s: float = 900.0,
                 max_delay_s: float = 30.0) -> None:
        self.clock = clock
        self.free = {"address": per_address, "account": per_account}
        self.window_s = window_s
        self.max_delay_s = max_delay_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._pruned_mono = float("-inf")

    @classmethod
    def from_settings(cls, clock: Clock, api) -> LoginThrottle:
        return cls(clock, api.login_failures_per_address, api.login_failures_per_account,
                   api.login_window_minutes * 60, api.login_max_delay_seconds)

    @staticmethod
    def _keys(username: str, client: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("address", client), ("account", username)

    @staticmethod
    def _pair_key(username: str, client: str) -> tuple[str, str]:
        """An address's failures on one account (see _count_failure)."""
        return "pair", f"{username}\n{client}"

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

    def _state(self, key: tuple[str, str]) -> float | None:
        """Seconds to wait (> 0) after this key's failures; 0 if an attempt may start now; None if the
        attempts in flight use what the key allows."""
        q = self._recent(key)
        over = len(q) - self.free[key[0]]
        if over >= 0:
            wait = q[-1] + min(self.max_delay_s, 2.0 ** min(over, 32)) - self.clock.monotonic()
            if wait > 0:
                return wait
        allowed = 1 if over >= 0 else -over
        return 0.0 if self._in_flight.get(key, 0) < allowed else None

    def retry_after(self, username: str, client: str) -> LoginDelay | None:
        """The delay this login must respect now, if any (checking makes no entry)."""
        with self._lock:
            waits = [(self._state(key) or 0.0, key[0]) for key in self._keys(username, client)]
        seconds, by = max(waits)
        return LoginDelay(seconds, by) if seconds > 0 else None

    def begin(self, username: str, client: str) -> LoginAttempt | LoginDelay | LoginInFlight:
        """Let a login through to its password check (it counts from now on), or say why not."""
        with self._lock:
            keys = self._keys(username, client)
            states = [self._state(key) for key in keys]
            waits = [(state, key[0]) for state, key in zip(states, keys, strict=True) if state]
            if waits:
                seconds, by = max(waits)
                return LoginDelay(seconds, by)
            if None in states:
                return LoginInFlight(keys[states.index(None)][0])
            for key in keys:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            return LoginAttempt(username, client)

    def finish(self, attempt: LoginAttempt, outcome: str) -> None:
        """`outcome`: "failed" (counted), "succeeded" (the account's failures go: they were someone else's
        guesses; the address's stay) or "unchecked" (never got to the check: the server was busy)."""
        with self._lock:
            now = self.clock.monotonic()
            for key in self._keys(attempt.username, attempt.client):
                left = self._in_flight.get(key, 0) - 1
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)
                if outcome == "succeeded" and key[0] == "account":
                    self._failures.pop(key, None)
                    self._failures.pop(self._pair_key(attempt.username, attempt.client), None)
            if outcome == "failed":
                self._count_failure(attempt.username, attempt.client, now)
                self._maybe_prune(now)

    def failed(self, username: str, client: str) -> None:
        """Count a failure (as finish() does for a wrong password)."""
        with self._lock:
            now = self.clock.monotonic()
            self._count_failure(username, client, now)
            self._maybe_prune(now)

    def _count_failure(self, username: str, client: str, now: float) -> None:
        address, account = self._keys(username, client)
        self._recent(address, create=True).append(now)
        pair = self._recent(self._pair_key(username, client), create=True)
        pair.append(now)
        if len(pair) <= self.free["address"]:  # see the class's comment: one address cannot hold the account
            self._recent(account, create=True).append(now)

    def _maybe_prune(self, now: float) -> None:
        # At most one scan per PRUNE_EVERY_S: a spray of names within the window is kept (each counts).
        if len(self._failures) > self.PRUNE_ABOVE and now - self._pruned_mono >= self.PRUNE_EVERY_S:
            self._pruned_mono = now
            self._prune()

    def _prune(self) -> None:
        """Bound memory under a spray of names. A key's old failures were only dropped when that same key
        tried again, so every mistyped name stayed for good and, past the limit, each failed login scanned
        the whole table and freed nothing."""
        now = self.clock.monotonic()
        for key in [k for k, q in self._failures.items() if not q or now - q[-1] >= self.window_s]:
            del self._failures[key]


class LoginBusy(Exception):
    """More logins wait for a password check than the queue allows."""


class LoginGate:
    """At most `concurrent` password checks at once, `queue` more waiting, the rest refused at once.

    argon2id needs 64 MiB and ~0.25 s of two cores per check: 40 logins at once took the server from
    269 to 1,191 MiB and a plain GET from 0.03 to 2.6 s. Waiting logins are coroutines, not threads, so
    they hold neither memory nor a thread of the pool the other requests need. Used on the event loop only."""

    def __init__(self, concurrent: int, queue: int) -> None:
        self._semaphore = asyncio.Semaphore(concurrent)
        self.queue = queue
        self.room = concurrent + queue
        self.occupied = 0  # checks running plus logins waiting for one
        self.in_flight_waiters = 0  # logins waiting for other checks of their address or account (auth.py)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        # One count for running and waiting, given back when the check ends. Counting the waiters apart
        # refused logins now and then: a released semaphore's woken waiter counts as waiting until it
        # runs, so a login arriving in between saw a full queue (503 for right passwords under load).
        if self.occupied >= self.room:
            raise LoginBusy
        self.occupied += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self.occupied -= 1


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
                   throttle=LoginThrottle.from_settings(clock, settings.api))

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

    def login_gate(self) -> LoginGate:
        """The gate of the running event loop (an asyncio semaphore cannot wait on another loop: tests
        run one app in several)."""
        loop = asyncio.get_running_loop()
        with self.lock:
            made = self.extras.get("login_gate")
            if made is None or made[0] is not loop:
                api = self.settings.api
                made = self.extras["login_gate"] = (loop, LoginGate(api.login_concurrent_checks, api.login_queue))
            return made[1]

    def singleton(self, name: str, factory):
        """One object per app, made on first use (keeps create_app free of side effects)."""
        with self.lock:
            if name not in self.extras:
                self.extras[name] = factory()
            return self.extras[name]
