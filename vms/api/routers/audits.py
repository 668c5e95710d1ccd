"""Audit reports (auditor, operator, admin; API keys with audits:read), over vms.audit.reports."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.deps import Ctx, DbSession, StationId, require, visible_station
from vms.api.errors import ApiError
from vms.audit.export import ExportError, export_monthly
from vms.audit.periods import AuditInputError
from vms.audit.reports import daily_report, monthly_report, station_history

router = APIRouter(tags=["audits"])

Auditor = Annotated[Principal, Depends(require(P.AUDITS))]


def _town_for(principal: Principal, town: str | None) -> str | None:
    """A town-limited user gets reports of their towns only: their one town, or the one they name."""
    if principal.towns is None:
        return town
    if town is None:
        if len(principal.towns) == 1:
            return principal.towns[0]
        raise HTTPException(400, f"give town=, one of {', '.join(principal.towns)}")
    if town not in principal.towns:
        raise HTTPException(403, f"town {town} is not among yours ({', '.join(principal.towns)})")
    return town


@router.get("/api/audits/daily")
def audits_daily(session: DbSession, principal: Auditor,
                 day: Annotated[str, Query(description="local day YYYY-MM-DD", max_length=10)],
                 town: Annotated[str | None, Query(max_length=32)] = None) -> dict:
    try:
        return daily_report(session, day, _town_for(principal, town))
    except AuditInputError as exc:
        raise HTTPException(400, str(exc)) from None


@router.get("/api/audits/monthly")
def audits_monthly(session: DbSession, principal: Auditor,
                   month: Annotated[str, Query(description="YYYY-MM", max_length=7)],
                   town: Annotated[str | None, Query(max_length=32)] = None) -> dict:
    try:
        return monthly_report(session, month, _town_for(principal, town))
    except AuditInputError as exc:
        raise HTTPException(400, str(exc)) from None


@router.get("/api/stations/{station_id}/audits")
def station_audits(station_id: StationId, session: DbSession, principal: Auditor,
                   start: Annotated[str, Query(description="first local day YYYY-MM-DD", max_length=10)],
                   end: Annotated[str, Query(description="last local day YYYY-MM-DD", max_length=10)]) -> dict:
    station = visible_station(session, principal, station_id)
    try:
        days = station_history(session, station.id, start, end)
    except AuditInputError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"station_id": station.id, "start": start, "end": end, "days": days}


DOWNLOAD_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}
# Printing a PDF starts a headless Chromium (~1-3 s, ~150 MB): one at a time for the whole server.
_pdf_printing = threading.BoundedSemaphore(1)


@router.get("/api/audits/monthly/download", response_class=Response,
            responses={200: {"content": {t: {} for t in DOWNLOAD_TYPES.values()}},
                       404: {"description": "no audit results for the month (code audit_not_run)"},
                       429: {"description": "another PDF is being printed (code audit_pdf_busy)"}})
def audits_monthly_download(ctx: Ctx, session: DbSession, principal: Auditor,
                            month: Annotated[str, Query(description="YYYY-MM", max_length=7)],
                            format: Literal["csv", "xlsx", "pdf"],  # noqa: A002 - the query parameter's name
                            town: Annotated[str | None, Query(max_length=32)] = None) -> Response:
    """The monthly report as the county files it: CSV (UTF-8 with BOM), XLSX (three sheets) or PDF."""
    try:
        report = monthly_report(session, month, _town_for(principal, town))
    except AuditInputError as exc:
        raise HTTPException(400, str(exc)) from None
    if not report.get("audited"):
        raise ApiError(404, "audit_not_run", f"{month} 还没有考核结果（月度考核在次月初自动运行，"
                                            f"或由管理员运行 vms audit run --month {month}）")
    if format == "pdf" and not _pdf_printing.acquire(blocking=False):
        raise ApiError(429, "audit_pdf_busy", "另一份 PDF 报表正在生成，请稍后再试")
    try:
        with tempfile.TemporaryDirectory(prefix="vms-audit-") as tmp:
            out = Path(tmp) / f"report.{format}"
            export_monthly(report, format, out, ctx.settings.timezone, ctx.clock.now_ms())
            data = out.read_bytes()
    except ExportError as exc:
        raise ApiError(500, "audit_export_failed", f"报表生成失败：{exc}") from None
    finally:
        if format == "pdf":
            _pdf_printing.release()
    name = f"audit-{month}" + (f"-{report['town']}" if report.get("town") else "") + f".{format}"
    return Response(data, media_type=DOWNLOAD_TYPES[format],
                    headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"})
