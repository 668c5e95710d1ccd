"""Evidence holds: footage of a station in [start_ms, end_ms) that retention must never delete.

A hold is active while it is neither released nor past its `expires_ms`. Holds are never deleted;
releasing one records who and when, so the history of every lock stays in the table.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.core.errors import VmsError
from vms.db.models import Hold, Station
from vms.retention.timeparse import format_local


class HoldError(VmsError):
    """A hold request that cannot be honoured; the message says why."""


def hold_state(hold: Hold, now_ms: int) -> str:
    """active | released | expired."""
    if hold.released_ms is not None:
        return "released"
    if hold.expires_ms is not None and hold.expires_ms <= now_ms:
        return "expired"
    return "active"


def add_hold(session: Session, *, station_id: str, start_ms: int, end_ms: int, reason: str,
             created_by: str, now_ms: int, expires_ms: int | None = None) -> Hold:
    problems = []
    if session.get(Station, station_id) is None:
        problems.append(f"没有站点 {station_id!r}")
    if end_ms <= start_ms:
        problems.append("结束时间须晚于开始时间")
    if not reason or not reason.strip():
        problems.append("须填写保全事由（如案件或投诉编号）")
    if not created_by or not created_by.strip():
        problems.append("须填写保全人")
    if expires_ms is not None and expires_ms <= now_ms:
        problems.append("到期时间已经过去")
    if problems:
        raise HoldError("；".join(problems))
    hold = Hold(station_id=station_id, start_ms=start_ms, end_ms=end_ms, reason=reason.strip(),
                created_by=created_by.strip()[:64], created_ms=now_ms, expires_ms=expires_ms)
    session.add(hold)
    session.flush()
    return hold


def list_holds(session: Session, *, now_ms: int, station_id: str | None = None,
               include_inactive: bool = False) -> list[Hold]:
    q = select(Hold).order_by(Hold.station_id, Hold.start_ms, Hold.id)
    if station_id:
        q = q.where(Hold.station_id == station_id)
    holds = list(session.scalars(q))
    if not include_inactive:
        holds = [h for h in holds if hold_state(h, now_ms) == "active"]
    return holds


def release_hold(session: Session, hold_id: int, *, by: str, now_ms: int) -> Hold:
    hold = session.get(Hold, hold_id)
    if hold is None:
        raise HoldError(f"保全 {hold_id} 不存在")
    if hold.released_ms is not None:
        raise HoldError(f"保全 {hold_id} 已由 {hold.released_by} 解除")
    if not by or not by.strip():
        raise HoldError("须填写解除人")
    hold.released_ms = now_ms
    hold.released_by = by.strip()[:64]
    session.flush()
    return hold


def hold_public_dict(hold: Hold, tz: ZoneInfo, now_ms: int) -> dict:
    return {
        "id": hold.id,
        "station_id": hold.station_id,
        "start_ms": hold.start_ms,
        "end_ms": hold.end_ms,
        "start": format_local(hold.start_ms, tz),
        "end": format_local(hold.end_ms, tz),
        "reason": hold.reason,
        "created_by": hold.created_by,
        "created_ms": hold.created_ms,
        "expires_ms": hold.expires_ms,
        "expires": format_local(hold.expires_ms, tz) if hold.expires_ms else None,
        "released_ms": hold.released_ms,
        "released_by": hold.released_by,
        "state": hold_state(hold, now_ms),
    }
