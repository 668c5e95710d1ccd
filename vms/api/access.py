"""The access log (调用登记): one append-only row per live view, playback, snapshot, export and download."""

from __future__ import annotations

from sqlalchemy.orm import Session

from vms.api.accounts import Principal
from vms.db.models import AccessLog

ACTIONS = ("live", "playback", "snapshot", "export", "download")


def record_access(session: Session, principal: Principal, action: str, now_ms: int, client: str | None,
                  station_id: str | None = None, start_ms: int | None = None, end_ms: int | None = None,
                  reason: str | None = None) -> AccessLog:
    if action not in ACTIONS:
        raise ValueError(f"unknown access action {action!r}")
    who = principal.username
    if principal.kind != "session":
        who = f"{principal.username} (key {principal.token_id})"
    row = AccessLog(at_ms=now_ms, username=who[:64], action=action, station_id=station_id, start_ms=start_ms,
                    end_ms=end_ms, reason=reason, client=(client or "")[:64] or None)
    session.add(row)
    session.flush()
    return row
