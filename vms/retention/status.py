"""What footage is kept (per station) and how much disk N days of it need (the capacity plan)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vms.catalog.store import catalogue_order
from vms.core.settings import Settings
from vms.db.models import Segment, Station, table_of
from vms.recording.volumes import VolumeSet
from vms.retention.policy import DAY_MS, RetentionPolicy
from vms.retention.sweeper import held_clause, real_disk_usage

SEG = table_of(Segment)
DEFAULT_BITRATE_BPS = 2_000_000  # a 1080p H.264 station camera's usual main stream
BITRATE_WINDOW_MS = DAY_MS  # bitrates are measured over the last day of complete segments


def human_bytes(n: float) -> str:
    """Decimal units, as disks are sold (1 TB = 10^12 bytes)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass
class StationFootage:
    station_id: str
    name: str
    town: str
    enabled: bool
    retention_days: float
    segments: int
    bytes: int
    oldest_ms: int | None
    newest_ms: int | None
    days_covered: float  # newest end - oldest start, in days
    recorded_hours: float  # sum of segment durations
    overdue: bool  # holds footage older than its retention plus one sweep interval (held footage aside)


def footage_by_station(session: Session, settings: Settings, now_ms: int) -> list[StationFootage]:
    policy = RetentionPolicy.load(session, settings.retention)
    agg = {
        r.station_id: r
        for r in session.execute(
            select(SEG.c.station_id, func.count().label("n"), func.coalesce(func.sum(SEG.c.bytes), 0).label("b"),
                   func.min(SEG.c.start_ms).label("oldest"), func.max(SEG.c.end_ms).label("newest"),
                   func.coalesce(func.sum(SEG.c.duration_ms), 0).label("dur"))
            .where(SEG.c.state != "deleting").group_by(SEG.c.station_id)
        )
    }
    grace_ms = round(settings.retention.sweep_minutes * 60_000)
    out = []
    for st in session.execute(select(Station.id, Station.name, Station.town, Station.enabled)
                              .order_by(*catalogue_order())):
        r = agg.get(st.id)
        days = policy.days_for(st.id)
        oldest = r.oldest if r else None
        out.append(StationFootage(
            station_id=st.id, name=st.name, town=st.town, enabled=bool(st.enabled), retention_days=days,
            segments=r.n if r else 0, bytes=int(r.b) if r else 0, oldest_ms=oldest,
            newest_ms=r.newest if r else None,
            days_covered=round((r.newest - r.oldest) / DAY_MS, 3) if r else 0.0,
            recorded_hours=round(int(r.dur) / 3_600_000, 2) if r else 0.0,
            overdue=False,
        ))
    # "Overdue" is judged on unheld complete segments only: held footage is meant to stay.
    by_id = {f.station_id: f for f in out}
    for f in out:
        if f.oldest_ms is None:
            continue
        late = policy.cutoff_ms(f.station_id, now_ms) - grace_ms
        if f.oldest_ms > late:
            continue
        hit = session.execute(
            select(SEG.c.id).where(SEG.c.station_id == f.station_id, SEG.c.state == "complete",
                                   SEG.c.start_ms <= late, SEG.c.end_ms <= late, ~held_clause(SEG, now_ms))
            .limit(1)).first()
        by_id[f.station_id].overdue = hit is not None
    return out


@dataclass
class StationPlan:
    station_id: str
    volume: str
    bitrate_bps: float
    measured: bool
    bytes_needed: int


@dataclass
class VolumePlan:
    name: str
    stations: int
    bytes_needed: int
    total_bytes: int | None  # filesystem size; None for "unassigned"
    limit_bytes: int | None  # quota if set, else filesystem size
    fits: bool | None


@dataclass
class CapacityPlan:
    days: float
    stations: list[StationPlan]
    volumes: list[VolumePlan]
    total_bytes_needed: int
    measured_stations: int
    fallback_bitrate_bps: float
    fallback_source: str  # how stations without footage were estimated
    reference: str  # the 2 Mbps rule of thumb for this many cameras
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def capacity_plan(session: Session, settings: Settings, now_ms: int, days: float | None = None,
                  disk_usage: Callable[[str, Path], tuple[int, int]] | None = None) -> CapacityPlan:
    """Disk needed to keep `days` (default retention.days) of every enabled station's footage, at the
    bitrate each camera really recorded over the last day (bytes / duration of complete segments)."""
    days = settings.retention.days if days is None else days
    if days <= 0:
        raise ValueError("days must be positive")
    disk_usage = disk_usage or real_disk_usage
    measured_bytes: dict[str, int] = {}
    per_volume_dur: dict[str, dict[str, int]] = {}
    for r in session.execute(
        select(SEG.c.station_id, SEG.c.volume, func.sum(SEG.c.bytes).label("b"),
               func.sum(SEG.c.duration_ms).label("d"))
        .where(SEG.c.state == "complete", SEG.c.end_ms > now_ms - BITRATE_WINDOW_MS, SEG.c.end_ms <= now_ms,
               SEG.c.duration_ms > 0)
        .group_by(SEG.c.station_id, SEG.c.volume)
    ):
        per_volume_dur.setdefault(r.station_id, {})[r.volume] = int(r.d)
        measured_bytes[r.station_id] = measured_bytes.get(r.station_id, 0) + int(r.b)
    bitrates = {sid: nbytes * 8 / (sum(per_volume_dur[sid].values()) / 1000)
                for sid, nbytes in measured_bytes.items()}
    if bitrates:
        fallback = statistics.median(bitrates.values())
        source = f"median of the {len(bitrates)} stations measured over the last 24 h"
    else:
        fallback = float(DEFAULT_BITRATE_BPS)
        source = f"default {DEFAULT_BITRATE_BPS / 1e6:g} Mbps (no station has recorded in the last 24 h)"
    volumes = VolumeSet.from_settings(settings)
    seconds = days * 86_400
    plans: list[StationPlan] = []
    enabled = [sid for (sid,) in session.execute(select(Station.id).where(Station.enabled.is_(True))
                                                 .order_by(Station.id))]
    for sid in enabled:
        if sid in settings.storage.assignments:
            vol = settings.storage.assignments[sid]
        elif sid in per_volume_dur:
            vol = max(per_volume_dur[sid].items(), key=lambda item: item[1])[0]
        elif len(volumes.volumes) == 1:
            vol = next(iter(volumes.volumes))
        else:
            vol = "unassigned"
        bps = bitrates.get(sid, fallback)
        plans.append(StationPlan(sid, vol, round(bps), sid in bitrates, round(bps / 8 * seconds)))
    vplans = []
    for name in [*volumes.volumes, "unassigned"]:
        mine = [p for p in plans if p.volume == name]
        if name == "unassigned" and not mine:
            continue
        needed = sum(p.bytes_needed for p in mine)
        total = limit = None
        fits = None
        if name in volumes.volumes:
            total, _free = disk_usage(name, volumes.root(name))
            vs = volumes.volumes[name]
            limits = [q for q in (vs.quota_bytes, int(total * vs.quota_percent / 100) if vs.quota_percent else None)
                      if q is not None]
            limit = min(limits) if limits else total - vs.min_free_bytes
            fits = needed <= limit
        vplans.append(VolumePlan(name, len(mine), needed, total, limit, fits))
    n = len(enabled)
    ref_bytes = n * DEFAULT_BITRATE_BPS / 8 * seconds
    reference = (f"{n} cameras x {DEFAULT_BITRATE_BPS / 1e6:g} Mbps x {days:g} days = {human_bytes(ref_bytes)} "
                 f"({ref_bytes / 1024**4:.1f} TiB)")
    notes = []
    if any(v.name == "unassigned" for v in vplans):
        notes.append("stations without footage or assignment are placed at run time on the volume with the "
                     "most free space; their need is listed as 'unassigned'")
    return CapacityPlan(days=days, stations=plans, volumes=vplans,
                        total_bytes_needed=sum(p.bytes_needed for p in plans), measured_stations=len(bitrates),
                        fallback_bitrate_bps=round(fallback), fallback_source=source, reference=reference,
                        notes=notes)
