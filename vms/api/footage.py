"""What playback and exports share: the retention window of a station and clear 4xx answers when a
range holds no footage."""

from __future__ import annotations

from sqlalchemy.orm import Session

from vms.api.context import ApiContext
from vms.api.errors import ApiError, local_time
from vms.api.remux import SourceSegment, find_segments
from vms.db.models import Station


def retention_days(ctx: ApiContext, station: Station) -> float:
    r = ctx.settings.retention
    return r.per_station.get(station.id, r.per_town.get(station.town, r.days))


def segments_or_error(ctx: ApiContext, session: Session, station: Station, start_ms: int,
                      end_ms: int) -> list[SourceSegment]:
    now = ctx.clock.now_ms()
    tz = ctx.settings.tz
    if start_ms > now:
        raise ApiError(400, "start_in_future",
                       f"开始时间 {local_time(start_ms, tz)} 在将来（现在 {local_time(now, tz)}）")
    sources = find_segments(session, ctx.volumes, station.id, start_ms, end_ms)
    if sources:
        return sources
    days = retention_days(ctx, station)
    kept_from = now - int(days * 86_400_000)
    if end_ms <= kept_from:
        raise ApiError(404, "no_footage_expired",
                       f"{station.name}（{station.id}）在 {local_time(start_ms, tz)} 至 {local_time(end_ms, tz)} "
                       f"没有录像：录像保留 {days:g} 天（自 {local_time(kept_from, tz)} 起），保全的除外")
    raise ApiError(404, "no_footage",
                   f"{station.name}（{station.id}）在 {local_time(start_ms, tz)} 至 {local_time(end_ms, tz)} "
                   "没有录像（时间轴上可看到断档及其原因）")
