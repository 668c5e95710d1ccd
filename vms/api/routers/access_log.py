"""The access log (调用登记), read-only, for admins. Nothing in the API deletes from it."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field
from sqlalchemy import select

from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.deps import STATION_ID_PATTERN, Ctx, DbSession, require
from vms.api.schemas import ApiModel, time_query
from vms.api.timeparse import iso, parse_time
from vms.db.models import AccessLog

router = APIRouter(prefix="/api/access-log", tags=["access log"])


class AccessOut(ApiModel):
    id: int
    at_ms: int
    at: str
    username: str
    action: str
    station_id: str | None
    start_ms: int | None
    end_ms: int | None
    reason: str | None
    client: str | None
    export_id: str | None = Field(default=None, description="the export of an export or download entry")


class AccessPage(ApiModel):
    count: int
    entries: list[AccessOut]
    next_before_id: int | None = None


@router.get("", response_model=AccessPage)
def access_log(
    ctx: Ctx, session: DbSession, principal: Annotated[Principal, Depends(require(P.ACCESS_LOG))],
    username: Annotated[str | None, Query(max_length=64)] = None,
    station_id: Annotated[str | None, Query(pattern=STATION_ID_PATTERN)] = None,
    action: Literal["live", "playback", "snapshot", "export", "download"] | None = None,
    since: Annotated[str | None, time_query("entries at or after; ISO 8601 or epoch milliseconds")] = None,
    until: Annotated[str | None, time_query("entries before; ISO 8601 or epoch milliseconds")] = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**62, description="page: entries older than this id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict:
    tz = ctx.settings.tz
    q = select(AccessLog).order_by(AccessLog.id.desc()).limit(limit)
    if username:
        q = q.where(AccessLog.username == username)
    if station_id:
        q = q.where(AccessLog.station_id == station_id)
    if action:
        q = q.where(AccessLog.action == action)
    if since:
        q = q.where(AccessLog.at_ms >= parse_time(since, "since", tz))
    if until:
        q = q.where(AccessLog.at_ms < parse_time(until, "until", tz))
    if before_id:
        q = q.where(AccessLog.id < before_id)
    rows = list(session.scalars(q))
    entries = [{"id": r.id, "at_ms": r.at_ms, "at": iso(r.at_ms, tz), "username": r.username, "action": r.action,
                "station_id": r.station_id, "start_ms": r.start_ms, "end_ms": r.end_ms, "reason": r.reason,
                "client": r.client, "export_id": r.export_id} for r in rows]
    return {"count": len(entries), "entries": entries,
            "next_before_id": rows[-1].id if len(rows) == limit else None}
