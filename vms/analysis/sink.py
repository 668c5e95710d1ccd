"""Writes detector events to the database: batched, one short transaction every few seconds.

Ongoing intervals are rows with end_ms NULL: a state change ends the open station_states row and
starts the next; a fault ends its open row of the same kind. Activity episodes also add to
activity_hourly (UTC hours, which are local hours too in Asia/Shanghai's whole-hour offset).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from vms.analysis.detector import (
    FAULT_KINDS,
    ActivityFound,
    Event,
    FaultClosed,
    FaultOpened,
    FaultSeverity,
    Sampled,
    StateChanged,
)
from vms.db.engine import Database
from vms.db.models import ActivityEpisode, ActivityHourly, Fault, Segment, StationState

log = logging.getLogger(__name__)
HOUR_MS = 3_600_000
FAILURE_LOG_S = 60.0
MAX_PENDING = 200_000  # events kept while the database is unreachable; the oldest are dropped beyond


@dataclass(frozen=True)
class Resumed:
    """A new process takes over a station: close intervals a previous process left open."""

    t_ms: int


class EventSink(Protocol):
    """Where a station's observer sends its events: the AnalysisSink, or a list (offline analysis)."""

    def submit(self, station_id: str, events: Sequence[Event | Resumed]) -> None: ...


class AnalysisSink:
    """Thread-safe: camera threads submit(), one flusher (a thread or the caller) writes."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, Event | Resumed]] = deque()
        self._flush_lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._failing_since: float | None = None
        self._last_log = 0.0

    def submit(self, station_id: str, events: Sequence[Event | Resumed]) -> None:
        keep = [e for e in events if not isinstance(e, Sampled)]
        if not keep:
            return
        with self._lock:
            self._pending.extend((station_id, e) for e in keep)
            while len(self._pending) > MAX_PENDING:
                self._pending.popleft()
                self.dropped += 1

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write everything pending in one transaction; on failure keep it for the next try."""
        with self._flush_lock:
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
            if not batch:
                return 0
            try:
                with self.database.session() as s:
                    for station_id, event in batch:
                        _apply(s, station_id, event)
            except Exception as exc:  # the database may be down for a while: retry later, in order
                self.failures += 1
                now = time.monotonic()
                if self._failing_since is None or now - self._last_log >= FAILURE_LOG_S:
                    # Once, then once a minute while the database stays away (a flush runs every few seconds).
                    self._failing_since = self._failing_since or now
                    self._last_log = now
                    log.warning("analysis: could not write %d events for %.0f s (%s); will retry", len(batch),
                                now - self._failing_since, exc)
                with self._lock:
                    self._pending.extendleft(reversed(batch))
                return 0
            if self._failing_since is not None:
                log.warning("analysis: database available again after %.0f s; %d events written",
                            time.monotonic() - self._failing_since, len(batch))
                self._failing_since = None
            self.written += len(batch)
            return len(batch)


def _apply(s: Session, station_id: str, e: Event | Resumed) -> None:
    if isinstance(e, StateChanged):
        s.execute(update(StationState)
                  .where(StationState.station_id == station_id, StationState.end_ms.is_(None))
                  .values(end_ms=e.t_ms))
        s.add(StationState(station_id=station_id, state=e.state, start_ms=e.t_ms, end_ms=None))
    elif isinstance(e, FaultOpened):
        _close_fault(s, station_id, e.kind, e.start_ms)
        s.add(Fault(station_id=station_id, kind=e.kind, severity=e.severity, start_ms=e.start_ms,
                    end_ms=None, detail=e.detail[:2000]))
    elif isinstance(e, FaultSeverity):
        s.execute(update(Fault)
                  .where(Fault.station_id == station_id, Fault.kind == e.kind, Fault.end_ms.is_(None))
                  .values(severity=e.severity))
    elif isinstance(e, FaultClosed):
        _close_fault(s, station_id, e.kind, e.end_ms)
    elif isinstance(e, ActivityFound):
        s.add(ActivityEpisode(station_id=station_id, start_ms=e.start_ms, end_ms=e.end_ms, peak=e.peak))
        _add_hourly(s, station_id, e.start_ms, e.end_ms)
    elif isinstance(e, Resumed):
        _close_stale(s, station_id, e.t_ms)
    s.flush()


def _close_fault(s: Session, station_id: str, kind: str, end_ms: int) -> None:
    s.execute(update(Fault)
              .where(Fault.station_id == station_id, Fault.kind == kind, Fault.end_ms.is_(None))
              .values(end_ms=end_ms))


def _add_hourly(s: Session, station_id: str, start_ms: int, end_ms: int) -> None:
    hour = start_ms - start_ms % HOUR_MS
    first = True
    while hour < end_ms:
        active = min(end_ms, hour + HOUR_MS) - max(start_ms, hour)
        row = s.get(ActivityHourly, (station_id, hour))
        if row is None:
            row = ActivityHourly(station_id=station_id, hour_ms=hour, episodes=0, active_ms=0)
            s.add(row)
        row.episodes = (row.episodes or 0) + (1 if first else 0)  # an episode counts in the hour it starts
        row.active_ms = (row.active_ms or 0) + max(0, active)
        first = False
        hour += HOUR_MS


def _close_stale(s: Session, station_id: str, now_ms: int) -> None:
    """End open rows of a previous run where its footage ended (not now: the gap was not seen). Only the
    analysis' own fault kinds: the ingest writes others (auth_failed) and ends them itself."""
    last_footage = s.scalar(select(func.max(Segment.end_ms)).where(Segment.station_id == station_id))
    open_rows: list[StationState | Fault] = [
        *s.scalars(select(StationState).where(StationState.station_id == station_id, StationState.end_ms.is_(None))),
        *s.scalars(select(Fault).where(Fault.station_id == station_id, Fault.kind.in_(FAULT_KINDS),
                                       Fault.end_ms.is_(None)))]
    for row in open_rows:
        end = last_footage if last_footage is not None else row.start_ms
        row.end_ms = min(max(end, row.start_ms), now_ms)
