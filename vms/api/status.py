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
from vms.catalog.urls import mask_text
from vms.db.models import ActivityEpisode, CameraStatus, Fault, Segment, Station, StationState

log = logging.getLogger(__name__)

STALE_STATUS_INTERVALS = 3
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


def compute_status(session: Session, ctx: ApiContext) -> list[dict]:
    now = ctx.clock.now_ms()
    interval_ms = int(ctx.settings.ingest.status_interval_seconds * 1000)
    stale_ms = STALE_STATUS_INTERVALS * interval_ms
    stations = list(session.scalars(select(Station).order_by(Station.town, Station.level, Station.id)))
    cams = {c.station_id: c for c in session.scalars(select(CameraStatus))}
    # The newest growing end per station, taken in Python: with GROUP BY, SQLite's planner prefers
    # scanning the whole (station_id, start_ms) index to skip a sort (27 ms at 200k rows, growing with
    # retention) over the (state, end_ms) index that finds the few growing rows at once.
    growing: dict[str, int] = {}
    for station_id, end_ms in session.execute(select(Segment.station_id, Segment.end_ms)
                                              .where(Segment.state == "growing")):
        growing[station_id] = max(end_ms, growing.get(station_id, end_ms))
    states = _latest_per_station(session, StationState, (StationState.state, StationState.start_ms,
                                                         StationState.end_ms))
    activity = _latest_per_station(session, ActivityEpisode,
                                   (ActivityEpisode.start_ms, ActivityEpisode.end_ms))
    faults: dict[str, list[dict]] = {}
    for f in session.scalars(select(Fault).where(Fault.end_ms.is_(None)).order_by(Fault.start_ms)):
        faults.setdefault(f.station_id, []).append(
            {"kind": f.kind, "severity": f.severity, "since_ms": f.start_ms,
             "detail": mask_text(f.detail) if f.detail else None})
    out = []
    for st in stations:
        cam = cams.get(st.id)
        if cam is None:
            camera = {"state": "unknown", "reason": "no status reported", "online": False}
        else:
            fresh = now - cam.updated_ms <= stale_ms
            state = cam.state if fresh else "offline"
            age_s = (now - cam.updated_ms) // 1000
            reason = cam.reason if fresh else f"no status from node {cam.node} for {age_s} s"
            camera = {"state": state, "reason": reason, "online": fresh and cam.state == "streaming",
                      "detail": mask_text(cam.detail) if cam.detail else None,
                      "node": cam.node, "fps": cam.fps, "bitrate_bps": cam.bitrate_bps, "codec": cam.codec,
                      "width": cam.width, "height": cam.height, "audio": cam.audio,
                      "last_packet_ms": cam.last_packet_ms,
                      "reconnects": cam.reconnects, "updated_ms": cam.updated_ms}
        seg_end = growing.get(st.id)
        # A growing segment counts if its end is recent, or if the node that writes it reports streaming
        # right now (a writer may only move end_ms when a fragment is flushed).
        recording = seg_end is not None and (
            now - seg_end <= RECORDING_FRESH_INTERVALS * interval_ms or camera["online"])
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
        with self.ctx.status_database.session() as s:
            stations = compute_status(s, self.ctx)
        snap = StatusSnapshot(self.ctx.clock.monotonic(), stations, self.ctx.clock.now_ms())
        # A refresh that began before an invalidate() read the rows from before the change: not kept.
        if generation == self._generation:
            self._snap = snap
        return snap

    def invalidate(self) -> None:
        self._generation += 1
        self._snap = None


def status_cache(ctx: ApiContext) -> StatusCache:
    return ctx.singleton("status_cache", lambda: StatusCache(ctx))
