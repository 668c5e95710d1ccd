"""The access log (调用登记): one append-only row per live view, playback, snapshot, export and download."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vms.api.accounts import Principal
from vms.db.models import AccessLog, ExportJob

ACTIONS = ("live", "playback", "snapshot", "export", "download")


def _who(principal: Principal) -> str:
    who = principal.username
    if principal.kind != "session":
        who = f"{principal.username} (key {principal.token_id})"
    return who[:64]


def record_access(session: Session, principal: Principal, action: str, now_ms: int, client: str | None,
                  station_id: str | None = None, start_ms: int | None = None, end_ms: int | None = None,
                  reason: str | None = None, export_id: str | None = None) -> AccessLog:
    if action not in ACTIONS:
        raise ValueError(f"unknown access action {action!r}")
    row = AccessLog(at_ms=now_ms, username=_who(principal), action=action, station_id=station_id,
                    start_ms=start_ms, end_ms=end_ms, reason=reason, client=(client or "")[:64] or None,
                    export_id=export_id)
    session.add(row)
    session.flush()
    return row


def record_download(session: Session, principal: Principal, job: ExportJob, now_ms: int, client: str | None) -> bool:
    """One `download` row per export and user (API key), written by the first request for the file
    whatever its Range: a row per request would log every seek of a player, and a row only for requests
    that start at byte 0 let `bytes=00-`, `bytes=-99999999999` or `bytes=1-` download it unlogged.
    False if this user's download of this export was logged before."""
    who = _who(principal)
    logged = select(AccessLog.id).where(AccessLog.action == "download", AccessLog.export_id == job.id,
                                        AccessLog.username == who)
    if session.scalar(logged) is not None:
        return False
    try:
        with session.begin_nested():  # two first requests at once: the unique index keeps one row
            record_access(session, principal, "download", now_ms, client, station_id=job.station_id,
                          start_ms=job.start_ms, end_ms=job.end_ms, reason=job.reason, export_id=job.id)
    except IntegrityError:
        return False
    return True
