"""What playback and exports share: the retention window of a station and clear 4xx answers when a
range holds no footage."""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy.orm import Session

from vms.api.context import ApiContext
from vms.api.remux import SourceSegment, find_segments
from vms.api.timeparse import iso
from vms.db.models import Station


def retention_days(ctx: ApiContext, station: Station) -> float:
    r = ctx.settings.retention
    return r.per_station.get(station.id, r.per_town.get(station.town, r.days))


def segments_or_error(ctx: ApiContext, session: Session, station: Station, start_ms: int,
                      end_ms: int) -> list[SourceSegment]:
    now = ctx.clock.now_ms()
    tz = ctx.settings.tz
    if start_ms > now:
        raise HTTPException(400, f"start {iso(start_ms, tz)} is in the future (now {iso(now, tz)})")
    sources = find_segments(session, ctx.volumes, station.id, start_ms, end_ms)
    if sources:
        return sources
    days = retention_days(ctx, station)
    kept_from = now - int(days * 86_400_000)
    if end_ms <= kept_from:
        raise HTTPException(404, f"no footage of {station.id} between {iso(start_ms, tz)} and {iso(end_ms, tz)}: "
                                 f"footage is kept {days:g} days (from {iso(kept_from, tz)}) unless held")
    raise HTTPException(404, f"no footage of {station.id} between {iso(start_ms, tz)} and {iso(end_ms, tz)} "
                             "(see the timeline for gaps and their reasons)")
