"""Export jobs: start one (reason required, logged), follow its progress, download the MP4."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import FileResponse
from pydantic import Field
from sqlalchemy import select

from vms.api import permissions as P
from vms.api.access import record_access, record_download
from vms.api.accounts import Principal
from vms.api.deps import STATION_ID_PATTERN, Ctx, DbSession, client_address, require, visible_station
from vms.api.errors import local_time
from vms.api.exports import check_export_limits, estimated_bytes, export_path, export_runner
from vms.api.footage import segments_or_error
from vms.api.schemas import ApiModel, FootageRangeIn
from vms.api.timeparse import iso, parse_range
from vms.audit.findings import gap_zh
from vms.db.models import ExportJob, ExportState, Gap, Station

router = APIRouter(prefix="/api/exports", tags=["exports"])

ExportPrincipal = Annotated[Principal, Depends(require(P.EXPORT))]
ExportId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


class ExportIn(FootageRangeIn):
    station_id: str = Field(pattern=STATION_ID_PATTERN)


class ExportGap(ApiModel):
    start_ms: int
    end_ms: int | None = Field(description="null while the gap lasts")
    start_at: str
    end_at: str | None
    reason: str
    reason_text: str = Field(description="the reason in Chinese")


class ExportOut(ApiModel):
    id: str
    station_id: str
    start_ms: int
    end_ms: int
    start_at: str
    end_at: str
    reason: str
    username: str
    state: str = Field(description="queued | running | done | failed | expired")
    progress: float
    bytes: int | None
    error: str | None = Field(description="why it failed, or a note on a done export")
    created_ms: int
    expires_ms: int | None
    download_url: str | None
    ran_past_now: bool = Field(description="the range ends after the moment the export was asked for: the file "
                                           "stops at the footage recorded by then")
    gaps: list[ExportGap] = Field(description="stretches of the range without footage (main stream), with why")
    notes: list[str] = Field(description="what the file lacks, in Chinese, for the download center")


MAX_EXPORT_GAPS = 50  # listed per export; the notes give the count beyond


def _coverage(ctx, session, job: ExportJob) -> dict:
    """Whether the file can be what was asked: the range ran past the moment of asking, gaps inside it."""
    tz = ctx.settings.tz
    ran_past_now = job.end_ms > job.created_ms
    q = (select(Gap).where(Gap.station_id == job.station_id, Gap.stream == "main", Gap.start_ms < job.end_ms,
                           (Gap.end_ms.is_(None)) | (Gap.end_ms > job.start_ms))
         .order_by(Gap.start_ms).limit(MAX_EXPORT_GAPS + 1))
    rows = list(session.scalars(q))
    gaps = [{"start_ms": g.start_ms, "end_ms": g.end_ms, "start_at": iso(g.start_ms, tz), "end_at": iso(g.end_ms, tz),
             "reason": g.reason, "reason_text": gap_zh(g.reason)} for g in rows[:MAX_EXPORT_GAPS]]
    notes = []
    if ran_past_now:
        notes.append(f"导出范围的结束时间（{local_time(job.end_ms, tz)}）晚于提交时间"
                     f"（{local_time(job.created_ms, tz)}），文件只含提交时已录下的画面")
    if rows:
        more = "以上" if len(rows) > MAX_EXPORT_GAPS else ""
        first = rows[0]
        notes.append(f"范围内有 {len(gaps)} 段{more}录像缺失，第一段自 {local_time(first.start_ms, tz)} 起"
                     f"（{gap_zh(first.reason)}）")
    return {"ran_past_now": ran_past_now, "gaps": gaps, "notes": notes}


def _out(ctx, session, job: ExportJob) -> dict:
    tz = ctx.settings.tz
    return {**_coverage(ctx, session, job), "id": job.id, "station_id": job.station_id,
            "start_ms": job.start_ms, "end_ms": job.end_ms, "start_at": iso(job.start_ms, tz),
            "end_at": iso(job.end_ms, tz), "reason": job.reason,
            "username": job.username, "state": job.state, "progress": job.progress, "bytes": job.bytes,
            "error": job.error, "created_ms": job.created_ms, "expires_ms": job.expires_ms,
            "download_url": f"/api/exports/{job.id}/download" if job.state == ExportState.DONE else None}


@router.post("", response_model=ExportOut, status_code=202,
             responses={429: {"description": "too many exports in progress, or their files would pass the "
                                             "bytes allowed (code export_busy_user, export_busy, "
                                             "export_quota_user, export_quota)"}})
def create_export(body: ExportIn, request: Request, ctx: Ctx, session: DbSession,
                  principal: ExportPrincipal) -> dict:
    station = visible_station(session, principal, body.station_id)
    if not body.reason.strip():
        raise HTTPException(400, "reason is required for an export (调用事由)")
    s, e = parse_range(body.start, body.end, ctx.settings.tz, int(ctx.settings.api.export_max_hours * 3_600_000),
                       "导出范围")
    segments_or_error(ctx, session, station, s, e)
    runner = export_runner(ctx)
    estimate = estimated_bytes(session, station.id, s, e)
    with runner.admission:
        check_export_limits(ctx, session, principal.username, estimate)
        now = ctx.clock.now_ms()
        job = ExportJob(id=uuid.uuid4().hex, station_id=station.id, start_ms=s, end_ms=e,
                        reason=body.reason.strip(), username=principal.username, state=ExportState.QUEUED, progress=0.0,
                        created_ms=now)
        session.add(job)
        record_access(session, principal, "export", now, client_address(request), station_id=station.id,
                      start_ms=s, end_ms=e, reason=job.reason, export_id=job.id)
        session.commit()  # the worker reads the row from its own session
    runner.submit(job.id)
    return _out(ctx, session, job)


def _visible_job(session, principal: Principal, job_id: str) -> ExportJob:
    job = session.get(ExportJob, job_id)
    if job is not None and principal.role != "admin":
        station = session.get(Station, job.station_id)
        if job.username != principal.username or station is None or not principal.may_see_town(station.town):
            job = None
    if job is None:
        raise HTTPException(404, f"no export {job_id}")
    return job


@router.get("", response_model=list[ExportOut])
def list_exports(ctx: Ctx, session: DbSession, principal: ExportPrincipal) -> list[dict]:
    """Your exports (admins: everyone's), newest first, at most 200."""
    q = select(ExportJob).order_by(ExportJob.created_ms.desc()).limit(200)
    if principal.role != "admin":
        q = q.where(ExportJob.username == principal.username)
    return [_out(ctx, session, j) for j in session.scalars(q)]


@router.get("/{export_id}", response_model=ExportOut)
def get_export(export_id: ExportId, ctx: Ctx, session: DbSession, principal: ExportPrincipal) -> dict:
    return _out(ctx, session, _visible_job(session, principal, export_id))


@router.get("/{export_id}/download", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}, 409: {"description": "not finished"},
                       410: {"description": "expired"}})
def download_export(export_id: ExportId, request: Request, ctx: Ctx, session: DbSession,
                    principal: ExportPrincipal) -> FileResponse:
    job = _visible_job(session, principal, export_id)
    if job.state == ExportState.EXPIRED:
        raise HTTPException(410, f"export {job.id} expired at {iso(job.expires_ms, ctx.settings.tz)}")
    if job.state != ExportState.DONE:
        raise HTTPException(409, f"export {job.id} is {job.state}" + (f": {job.error}" if job.error else ""))
    path = export_path(ctx, job.id)
    if not path.exists():
        raise HTTPException(410, f"export {job.id} file is gone")
    if request.method == "GET":  # (HEAD sends no footage)
        record_download(session, principal, job, ctx.clock.now_ms(), client_address(request))
        session.commit()
    local = iso(job.start_ms, ctx.settings.tz).replace(":", "")[:17]
    return FileResponse(path, media_type="video/mp4", filename=f"{job.station_id}-{local}.mp4")
