"""Audit reports (auditor, operator, admin; API keys with audits:read), over vms.audit.reports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.deps import DbSession, StationId, require, visible_station
from vms.api.errors import ApiError
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
        raise ApiError(400, "town_required", f"请用 town= 指定镇街，可选：{'、'.join(principal.towns)}")
    if town not in principal.towns:
        raise ApiError(403, "town_forbidden", f"镇街 {town[:40]} 不在你的管辖范围内（{'、'.join(principal.towns)}）")
    return town


@router.get("/api/audits/daily")
def audits_daily(session: DbSession, principal: Auditor,
                 day: Annotated[str, Query(description="local day YYYY-MM-DD", max_length=10)],
                 town: Annotated[str | None, Query(max_length=32)] = None) -> dict:
    try:
        return daily_report(session, day, _town_for(principal, town))
    except AuditInputError as exc:
        raise ApiError(400, "audit_input_invalid", str(exc)) from None


@router.get("/api/audits/monthly")
def audits_monthly(session: DbSession, principal: Auditor,
                   month: Annotated[str, Query(description="YYYY-MM", max_length=7)],
                   town: Annotated[str | None, Query(max_length=32)] = None) -> dict:
    try:
        return monthly_report(session, month, _town_for(principal, town))
    except AuditInputError as exc:
        raise ApiError(400, "audit_input_invalid", str(exc)) from None


@router.get("/api/stations/{station_id}/audits")
def station_audits(station_id: StationId, session: DbSession, principal: Auditor,
                   start: Annotated[str, Query(description="first local day YYYY-MM-DD", max_length=10)],
                   end: Annotated[str, Query(description="last local day YYYY-MM-DD", max_length=10)]) -> dict:
    station = visible_station(session, principal, station_id)
    try:
        days = station_history(session, station.id, start, end)
    except AuditInputError as exc:
        raise ApiError(400, "audit_input_invalid", str(exc)) from None
    return {"station_id": station.id, "start": start, "end": end, "days": days}
