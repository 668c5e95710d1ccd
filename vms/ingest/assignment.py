"""Which cameras this node and each of its workers record. One interface, so that a later
multi-node deployment can claim cameras through leases in the database instead."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.db.models import GbChannel, Station


@dataclass(frozen=True)
class CameraAssignmentEntry:
    station_id: str
    url: str
    transport: str


class CameraAssignment(Protocol):
    def cameras_for(self, session: Session, worker_index: int, worker_count: int) -> list[CameraAssignmentEntry]:
        """The cameras worker `worker_index` of this node must record now."""


class AllEnabledCameras:
    """Today's policy: this node records every enabled station; workers split them by a stable hash
    of the station id, so adding a station moves no other camera between workers."""

    def __init__(self, url_overrides: dict[str, str] | None = None, only: set[str] | None = None) -> None:
        self.url_overrides = dict(url_overrides or {})
        self.only = only

    def cameras_for(self, session: Session, worker_index: int, worker_count: int) -> list[CameraAssignmentEntry]:
        rows = session.execute(
            select(Station.id, Station.main_url, Station.transport).where(Station.enabled.is_(True))
            .order_by(Station.id)
        ).all()
        bound = {sid: f"gb28181://{dev}/{ch}" for sid, dev, ch in session.execute(
            select(GbChannel.station_id, GbChannel.device_id, GbChannel.channel_id)
            .where(GbChannel.station_id.is_not(None))).all()}
        out = []
        for sid, url, transport in rows:
            if self.only is not None and sid not in self.only:
                continue
            url = url or bound.get(sid) or self.url_overrides.get(sid)
            if not url:
                continue  # no camera installed yet and none simulated
            if zlib.crc32(sid.encode()) % worker_count == worker_index:
                out.append(CameraAssignmentEntry(sid, url, transport or "tcp"))
        return out
