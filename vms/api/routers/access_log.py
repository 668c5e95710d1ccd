"""The access log (调用登记), read-only, for admins. Nothing in the API deletes from it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import Field
from sqlalchemy import Select, select

from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.deps import STATION_ID_PATTERN, Ctx, DbSession, require
from vms.api.errors import local_time
from vms.api.schemas import ApiModel, time_query
from vms.api.timeparse import iso, parse_time
from vms.db.models import AccessLog, Station

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


ACTIONS_ZH = {"live": "实时查看", "playback": "录像回放", "snapshot": "抓图", "export": "录像导出",
              "download": "下载导出文件"}
Action = Literal["live", "playback", "snapshot", "export", "download"]
CSV_MAX_ROWS = 100_000  # one download; narrow the filters for more
CSV_COLUMNS = ("时间", "用户", "操作", "站点编号", "站点名称", "调用起始", "调用结束", "调用事由", "客户端地址",
               "导出编号")


def filtered_entries(
    ctx: Ctx,
    username: Annotated[str | None, Query(max_length=64)] = None,
    station_id: Annotated[str | None, Query(pattern=STATION_ID_PATTERN)] = None,
    action: Action | None = None,
    since: Annotated[str | None, time_query("entries at or after; ISO 8601 or epoch milliseconds")] = None,
    until: Annotated[str | None, time_query("entries before; ISO 8601 or epoch milliseconds")] = None,
) -> Select:
    """The filters the list and the CSV share (one dependency: the two cannot drift apart), newest first."""
    tz = ctx.settings.tz
    q = select(AccessLog).order_by(AccessLog.id.desc())
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
    return q


Filtered = Annotated[Select, Depends(filtered_entries)]


@router.get("", response_model=AccessPage)
def access_log(
    ctx: Ctx, session: DbSession, principal: Annotated[Principal, Depends(require(P.ACCESS_LOG))],
    filtered: Filtered,
    before_id: Annotated[int | None, Query(ge=1, le=2**62, description="page: entries older than this id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict:
    tz = ctx.settings.tz
    q = filtered.limit(limit)
    if before_id:
        q = q.where(AccessLog.id < before_id)
    rows = list(session.scalars(q))
    entries = [{"id": r.id, "at_ms": r.at_ms, "at": iso(r.at_ms, tz), "username": r.username, "action": r.action,
                "station_id": r.station_id, "start_ms": r.start_ms, "end_ms": r.end_ms, "reason": r.reason,
                "client": r.client, "export_id": r.export_id} for r in rows]
    return {"count": len(entries), "entries": entries,
            "next_before_id": rows[-1].id if len(rows) == limit else None}


@router.get("/export.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}, "description": "UTF-8 with BOM (Excel reads the Chinese)"}})
def access_log_csv(
    ctx: Ctx, session: DbSession, principal: Annotated[Principal, Depends(require(P.ACCESS_LOG))],
    filtered: Filtered,
) -> StreamingResponse:
    """The same entries as the list, newest first, as a spreadsheet: local times, Chinese headers and
    actions, station names; at most CSV_MAX_ROWS rows (the last row says so when more matched)."""
    tz = ctx.settings.tz
    q = filtered.limit(CSV_MAX_ROWS + 1)
    # Plain tuples, read before the response streams (the session ends with the request's dependencies).
    rows = session.execute(q.with_only_columns(
        AccessLog.at_ms, AccessLog.username, AccessLog.action, AccessLog.station_id, AccessLog.start_ms,
        AccessLog.end_ms, AccessLog.reason, AccessLog.client, AccessLog.export_id)).all()
    names: dict[str, str] = {sid: name for sid, name in session.execute(select(Station.id, Station.name))}

    def local(ms: int | None) -> str:
        return "" if ms is None else local_time(ms, tz)

    def lines() -> Iterator[str]:
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(CSV_COLUMNS)
        for n, r in enumerate(rows):
            if n == CSV_MAX_ROWS:
                out.writerow([f"（仅列出最新的 {CSV_MAX_ROWS} 条，请缩小筛选范围）"])
                break
            # A formula-looking cell (=, +, -, @) is quoted for spreadsheets: reasons are typed by users.
            out.writerow([local(r.at_ms), _cell(r.username), ACTIONS_ZH.get(r.action, r.action), r.station_id or "",
                          _cell(names.get(r.station_id or "", "")), local(r.start_ms), local(r.end_ms),
                          _cell(r.reason or ""), _cell(r.client or ""), r.export_id or ""])
            if buf.tell() > 64_000:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    def encoded() -> Iterator[bytes]:
        yield "\ufeff".encode()
        for chunk in lines():
            yield chunk.encode("utf-8")

    stamp = datetime.fromtimestamp(ctx.clock.now_ms() / 1000, tz).strftime("%Y%m%d-%H%M%S")
    return StreamingResponse(encoded(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="access-log-{stamp}.csv"'})


def _cell(text: str) -> str:
    """Text typed by a user, made safe for a spreadsheet (CSV injection: a leading = + - @ starts a formula)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
