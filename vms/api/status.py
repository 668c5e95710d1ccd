"""Live status of every station in a handful of set-based queries, reused for a second.

Camera state comes from camera_status (written every few seconds by the recording node; older than
three status intervals = offline), recording from growing segments, open/closed from the latest
station_states row, last activity from activity_episodes, faults from faults still open.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.api.context import ApiContext
from vms.catalog.store import catalogue_order
from vms.catalog.urls import mask_text
from vms.db.models import ActivityEpisode, CameraStatus, Fault, Segment, Station, StationState
from vms.ingest.health import STALE_STATUS_INTERVALS, CameraState, ReportedState, reported_camera_state

log = logging.getLogger(__name__)

RECORDING_FRESH_INTERVALS = 3


@dataclass
class StatusSnapshot:
    computed_mono: float
    stations: list[dict]
    computed_ms: int = 0
    # Encoded answers of this snapshot by (towns, filters): most requests are the same few lists.
    encoded: dict = field(default_factory=dict)


def _latest_per_station(session: Session, model, cols) -> dict[str, tuple]:
    """The row with the greatest start_ms per station: driven from the 139 stations, one index seek
    on (station_id, start_ms) each for the newest row's id, then rows by primary key (never a scan of
    the whole history; measured 3-4 ms on SQLite and PostgreSQL with 15 days of rows)."""
    newest_id = (select(model.id).where(model.station_id == Station.id).correlate(Station)
                 .order_by(model.start_ms.desc()).limit(1).scalar_subquery())
    ids = [i for i in session.scalars(select(newest_id.label("rid")).select_from(Station)) if i is not None]
    if not ids:
        return {}
    q = select(model.station_id, *cols).where(model.id.in_(ids))
    return {r[0]: tuple(r[1:]) for r in session.execute(q)}


def compute_status(session: Session, ctx: ApiContext, now: int | None = None) -> list[dict]:
    """Every station's status as of `now` (default: the clock's now)."""
    now = ctx.clock.now_ms() if now is None else now
    interval_ms = int(ctx.settings.ingest.status_interval_seconds * 1000)
    stale_ms = STALE_STATUS_INTERVALS * interval_ms
    stations = list(session.scalars(select(Station).order_by(*catalogue_order())))
    cams = {c.station_id: c for c in session.scalars(select(CameraStatus))}
    # The newest growing end per station, taken in Python: with GROUP BY, SQLite's planner prefers
    # scanning the whole (station_id, start_ms) index to skip a sort (27 ms at 200k rows, growing with
    # retention) over the (state, end_ms) index that finds the few growing rows at once.
    growing: dict[str, int] = {}
    for station_id, end_ms in session.execute(select(Segment.station_id, Segment.end_ms)
                                              .where(Segment.state == "growing")):
        growing[station_id] = max(end_ms, growing.get(station_id, end_ms))
    # At a segment cut the old segment's `complete` and the new one's row can commit in two index
    # batches: for a moment a recording camera has no growing row. A segment completed within the last
    # few status intervals covers that moment (a range on the (state, end_ms) index: a few rows).
    fresh_ms = RECORDING_FRESH_INTERVALS * interval_ms
    just_completed: dict[str, int] = {}
    for station_id, end_ms in session.execute(select(Segment.station_id, Segment.end_ms).where(
            Segment.state == "complete", Segment.end_ms >= now - fresh_ms)):
        just_completed[station_id] = max(end_ms, just_completed.get(station_id, end_ms))
    states = _latest_per_station(session, StationState, (StationState.state, StationState.start_ms,
                                                         StationState.end_ms))
    activity = _latest_per_station(session, ActivityEpisode,
                                   (ActivityEpisode.start_ms, ActivityEpisode.end_ms))
    faults: dict[str, list[dict]] = {}
    for f in session.scalars(select(Fault).where(Fault.end_ms.is_(None)).order_by(Fault.start_ms)):
        faults.setdefault(f.station_id, []).append(
            {"kind": f.kind, "severity": f.severity, "since_ms": f.start_ms,
             "detail": mask_text(f.detail) if f.detail else None})
    stall_ms = int(ctx.settings.ingest.stall_seconds * 1000)
    out = []
    for st in stations:
        camera = reported_camera_state(cams.get(st.id), st.enabled, now, stale_ms, stall_ms)
        seg_end = growing.get(st.id)
        completed_end = just_completed.get(st.id)
        # A growing segment counts if its end is recent, or if the node that writes it reports streaming
        # right now (a writer may only move end_ms when a fragment is flushed); a segment just completed
        # counts while the camera streams (its successor's row may not be committed yet).
        recording = (seg_end is not None and (now - seg_end <= fresh_ms or camera["online"])) or (
            completed_end is not None and camera["online"])
        if completed_end is not None and (seg_end is None or completed_end > seg_end):
            seg_end = completed_end
        s = states.get(st.id)
        a = activity.get(st.id)
        out.append({
            "id": st.id, "name": st.name, "level": st.level, "town": st.town, "enabled": st.enabled,
            "poverty_village": st.poverty_village, "business_hours": st.business_hours,
            "camera": camera,
            "recording": recording, "recorded_until_ms": seg_end,
            "open_state": s[0] if s else "unknown", "open_state_since_ms": s[1] if s else None,
            "last_activity_ms": (a[1] or a[0]) if a else None,
            "faults": faults.get(st.id, []),
        })
    return out


# States of an enabled camera that mean the recorder itself is failing it (not the camera or network).
STUCK_STATES = (CameraState.HUNG, ReportedState.OFFLINE)


def health_summary(stations: list[dict]) -> dict:
    """Counts of enabled cameras for /api/health and /metrics. `stuck`: hung in the recorder, or the
    recording node no longer reports them (offline) -- the failures a restart fixes."""
    enabled = [st for st in stations if st["enabled"]]
    by_state: dict[str, int] = {}
    for st in enabled:
        by_state[st["camera"]["state"]] = by_state.get(st["camera"]["state"], 0) + 1
    recording = sum(1 for st in enabled if st["camera"]["online"] and st["recording"])
    stuck = sum(by_state.get(s, 0) for s in STUCK_STATES)
    return {"enabled": len(enabled), "recording": recording, "not_recording": len(enabled) - recording,
            "stuck": stuck, "by_state": dict(sorted(by_state.items()))}


class StatusCache:
    """The whole list, recomputed at most every `ttl` seconds; one computation at a time.

    A request that finds the list stale answers with it and starts the recompute in the background
    (stale-while-revalidate): no request waits for the status queries except the very first, or the
    first after `invalidate()`. The answer is thus at most `ttl` plus one recompute old. With
    `ttl` 0 every request recomputes, one at a time.
    """

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.ttl = ctx.settings.api.status_cache_seconds
        self._snap: StatusSnapshot | None = None
        self._generation = 0
        self._lock = threading.Lock()

    def fresh(self) -> StatusSnapshot | None:
        """The snapshot if it can be answered without waiting (starting a background refresh if it is
        stale); None if the caller must call `snapshot()` (in a thread: it queries the database)."""
        snap = self._snap
        if snap is None or self.ttl <= 0:
            return None
        if self.ctx.clock.monotonic() - snap.computed_mono >= self.ttl and self._lock.acquire(blocking=False):
            try:
                threading.Thread(target=self._refresh_locked, name="status-refresh", daemon=True).start()
            except BaseException:
                self._lock.release()  # never leave the lock held by a thread that does not exist
                raise
        return snap

    def get(self) -> list[dict]:
        return self.snapshot().stations

    def snapshot(self) -> StatusSnapshot:
        snap = self.fresh()
        if snap is not None:
            return snap
        with self._lock:
            snap = self._snap
            if snap is None or self.ttl <= 0 or self.ctx.clock.monotonic() - snap.computed_mono >= self.ttl:
                snap = self._compute()
            return snap

    def _refresh_locked(self) -> None:
        try:
            self._compute()
        except Exception:  # the next request tries again; the stale list stays in use meanwhile
            log.exception("station status refresh failed")
        finally:
            self._lock.release()

    def _compute(self) -> StatusSnapshot:
        generation = self._generation
        now = self.ctx.clock.now_ms()  # the moment the answer describes (its generated_ms)
        with self.ctx.status_database.session() as s:
            stations = compute_status(s, self.ctx, now)
        snap = StatusSnapshot(self.ctx.clock.monotonic(), stations, now)
        # A refresh that began before an invalidate() read the rows from before the change: not kept.
        if generation == self._generation:
            self._snap = snap
        return snap

    def invalidate(self) -> None:
        self._generation += 1
        self._snap = None


def status_cache(ctx: ApiContext) -> StatusCache:
    return ctx.singleton("status_cache", lambda: StatusCache(ctx))
