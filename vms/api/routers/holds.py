"""Evidence holds (footage retention must keep) and the retention status, over vms.retention."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import Field
from sqlalchemy import func, select

from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.deps import STATION_ID_PATTERN, Ctx, DbSession, require, visible_station
from vms.api.errors import ApiError, local_time
from vms.api.schemas import TIME_DESCRIPTION, ApiModel, TimeText
from vms.api.timeparse import iso, parse_range, parse_time
from vms.db.models import Hold, Segment, Station
from vms.retention.holds import HoldError, add_hold, hold_public_dict, list_holds, release_hold

router = APIRouter(tags=["holds"])

HoldReader = Annotated[Principal, Depends(require(P.HOLDS_READ))]
HoldWriter = Annotated[Principal, Depends(require(P.HOLDS_WRITE))]


class HoldOut(ApiModel):
    id: int
    station_id: str
    start_ms: int
    end_ms: int
    start: str
    end: str
    reason: str
    created_by: str
    created_ms: int
    expires_ms: int | None
    expires: str | None
    released_ms: int | None
    released_by: str | None
    state: str = Field(description="active | released | expired")


class HoldIn(ApiModel):
    station_id: str = Field(pattern=STATION_ID_PATTERN)
    start: TimeText = Field(description=TIME_DESCRIPTION, examples=["2026-03-01T08:00:00"])
    end: TimeText = Field(description=TIME_DESCRIPTION, examples=["2026-03-01T12:00:00"])
    reason: str = Field(min_length=2, max_length=500, description="case or complaint number, why")
    expires: TimeText | None = Field(default=None, description="optional time when the hold lapses")


def _towns_ok(session, principal: Principal, station_id: str) -> bool:
    town = session.scalar(select(Station.town).where(Station.id == station_id))
    return town is not None and principal.may_see_town(town)


@router.get("/api/holds", response_model=list[HoldOut])
def get_holds(ctx: Ctx, session: DbSession, principal: HoldReader,
              station_id: Annotated[str | None, Query(pattern=STATION_ID_PATTERN)] = None,
              include_inactive: bool = False) -> list[dict]:
    now = ctx.clock.now_ms()
    if station_id:
        visible_station(session, principal, station_id)
    holds = list_holds(session, now_ms=now, station_id=station_id, include_inactive=include_inactive)
    towns = dict(session.execute(select(Station.id, Station.town)).all())
    return [hold_public_dict(h, ctx.settings.tz, now) for h in holds
            if principal.may_see_town(towns.get(h.station_id, ""))]


# A hold may end this much after the server's clock (the operator's clock, a form that put "now").
HOLD_FUTURE_SLACK_MS = 60_000


def check_hold_range(ctx, session, station: Station, start_ms: int, end_ms: int, now_ms: int) -> None:
    """A hold through the API covers recorded footage: it ends by now, starts no earlier than the oldest
    footage of the station still kept, overlaps some footage, and is at most retention.hold_max_days long.
    (Before, an operator could hold footage until 9999-12-31, or hours that were not recorded yet.)"""
    tz = ctx.settings.tz
    if end_ms > now_ms + HOLD_FUTURE_SLACK_MS:
        raise ApiError(400, "hold_in_future", f"结束时间 {local_time(end_ms, tz)} 在将来（现在 "
                                              f"{local_time(now_ms, tz)}）：只能保全已经录下的录像")
    max_days = ctx.settings.retention.hold_max_days
    if end_ms - start_ms > max_days * 86_400_000:
        raise ApiError(400, "hold_too_long", f"保全时段过长：{(end_ms - start_ms) / 86_400_000:.1f} 天，"
                                             f"每条最多 {max_days:g} 天")
    recorded = (Segment.station_id == station.id) & Segment.state.in_(("growing", "complete"))
    oldest = session.scalar(select(func.min(Segment.start_ms)).where(recorded))
    if oldest is None:
        raise ApiError(404, "hold_no_footage", f"{station.name}（{station.id}）没有录像可保全")
    if start_ms < oldest:
        raise ApiError(400, "hold_before_footage", f"开始时间 {local_time(start_ms, tz)} 早于 {station.name} "
                                                   f"现存最早的录像（{local_time(oldest, tz)}）")
    if session.scalar(select(Segment.id).where(recorded, Segment.start_ms < end_ms, Segment.end_ms > start_ms)
                      .limit(1)) is None:
        raise ApiError(404, "hold_no_footage", f"{station.name} 在 {local_time(start_ms, tz)} 至 "
                                               f"{local_time(end_ms, tz)} 之间没有录像可保全（见时间轴上的中断及原因）")


@router.post("/api/holds", response_model=HoldOut, status_code=201,
             responses={400: {"description": "codes hold_in_future, hold_too_long, hold_before_footage"},
                        404: {"description": "code hold_no_footage, or no such station"}})
def create_hold(body: HoldIn, ctx: Ctx, session: DbSession, principal: HoldWriter) -> dict:
    station = visible_station(session, principal, body.station_id)
    tz = ctx.settings.tz
    s, e = parse_range(body.start, body.end, tz)
    expires = parse_time(body.expires, "expires", tz) if body.expires else None
    now = ctx.clock.now_ms()
    check_hold_range(ctx, session, station, s, e, now)
    try:
        hold = add_hold(session, station_id=station.id, start_ms=s, end_ms=e, reason=body.reason,
                        created_by=principal.username, now_ms=now, expires_ms=expires)
    except HoldError as exc:
        raise ApiError(400, "hold_invalid", str(exc)) from None
    return hold_public_dict(hold, tz, now)


@router.post("/api/holds/{hold_id}/release", response_model=HoldOut)
def release(hold_id: Annotated[int, Path(ge=1, le=2**31 - 1)], ctx: Ctx, session: DbSession,
            principal: HoldWriter) -> dict:
    hold = session.get(Hold, hold_id)
    if hold is None or not _towns_ok(session, principal, hold.station_id):
        raise ApiError(404, "hold_not_found", f"保全 {hold_id} 不存在")
    now = ctx.clock.now_ms()
    try:
        hold = release_hold(session, hold_id, by=principal.username, now_ms=now)
    except HoldError as exc:
        raise ApiError(409, "hold_already_released", str(exc)) from None
    return hold_public_dict(hold, ctx.settings.tz, now)


class StationFootageOut(ApiModel):
    station_id: str
    name: str
    town: str
    enabled: bool
    retention_days: float
    segments: int
    bytes: int
    oldest_ms: int | None
    newest_ms: int | None
    days_covered: float
    recorded_hours: float
    overdue: bool


class VolumeOut(ApiModel):
    name: str
    total_bytes: int | None
    free_bytes: int | None
    error: str | None = None


class RetentionStatus(ApiModel):
    generated_at: str
    default_days: float
    active_holds: int
    volumes: list[VolumeOut]
    stations: list[StationFootageOut]


@router.get("/api/retention/status", response_model=RetentionStatus, tags=["retention"])
def retention_status(ctx: Ctx, session: DbSession, principal: HoldReader) -> dict:
    from vms.retention.status import footage_by_station

    now = ctx.clock.now_ms()
    stations = [asdict(f) for f in footage_by_station(session, ctx.settings, now) if principal.may_see_town(f.town)]
    volumes = []
    for name in ctx.volumes.volumes:
        try:
            u = ctx.volumes.usage(name)
            volumes.append({"name": name, "total_bytes": u.total_bytes, "free_bytes": u.free_bytes})
        except OSError as exc:
            volumes.append({"name": name, "total_bytes": None, "free_bytes": None, "error": type(exc).__name__})
    # Only the holds of the caller's towns: a town-limited user was told the county's count.
    towns = dict(session.execute(select(Station.id, Station.town)).all())
    holds = sum(1 for h in list_holds(session, now_ms=now) if principal.may_see_town(towns.get(h.station_id, "")))
    return {"generated_at": iso(now, ctx.settings.tz), "default_days": ctx.settings.retention.days,
            "active_holds": holds, "volumes": volumes, "stations": stations}
