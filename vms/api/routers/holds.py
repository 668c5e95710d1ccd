"""Evidence holds (footage retention must keep) and the retention status, over vms.retention."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import Field
from sqlalchemy import select

from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.deps import STATION_ID_PATTERN, Ctx, DbSession, require, visible_station
from vms.api.schemas import TIME_DESCRIPTION, ApiModel, TimeText
from vms.api.timeparse import iso, parse_range, parse_time
from vms.db.models import Hold, Station
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


@router.post("/api/holds", response_model=HoldOut, status_code=201)
def create_hold(body: HoldIn, ctx: Ctx, session: DbSession, principal: HoldWriter) -> dict:
    station = visible_station(session, principal, body.station_id)
    tz = ctx.settings.tz
    s, e = parse_range(body.start, body.end, tz)
    expires = parse_time(body.expires, "expires", tz) if body.expires else None
    now = ctx.clock.now_ms()
    try:
        hold = add_hold(session, station_id=station.id, start_ms=s, end_ms=e, reason=body.reason,
                        created_by=principal.username, now_ms=now, expires_ms=expires)
    except HoldError as exc:
        raise HTTPException(400, str(exc)) from None
    return hold_public_dict(hold, tz, now)


@router.post("/api/holds/{hold_id}/release", response_model=HoldOut)
def release(hold_id: Annotated[int, Path(ge=1, le=2**31 - 1)], ctx: Ctx, session: DbSession,
            principal: HoldWriter) -> dict:
    hold = session.get(Hold, hold_id)
    if hold is None or not _towns_ok(session, principal, hold.station_id):
        raise HTTPException(404, f"no hold {hold_id}")
    now = ctx.clock.now_ms()
    try:
        hold = release_hold(session, hold_id, by=principal.username, now_ms=now)
    except HoldError as exc:
        raise HTTPException(409, str(exc)) from None
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
