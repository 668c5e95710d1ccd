"""The devices and channels in the database: who may register, with which password, what they said.

Plain synchronous functions: the SIP server runs them on its one database thread, in order, so the
signalling loop never waits for the database (a month's audit can hold SQLite's write lock for seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, or_, select

from vms.db.engine import Database
from vms.db.models import GbChannel, GbDevice, Station
from vms.gb28181.manscdp import CatalogItem

MAX_REFUSED = 1000  # refused (not accepted) devices listed at most


@dataclass(frozen=True)
class Admission:
    """What the database says of a device that registers."""

    known: bool  # accepted by an admin, or named by a station's camera URL
    password: str | None  # its own password, else the global one, else None (refused)


def admission(db: Database, device_id: str, global_password: str | None) -> Admission:
    with db.session() as s:
        row = s.get(GbDevice, device_id)
        bound = s.execute(select(Station.id).where(or_(
            Station.main_url.like(f"gb28181://{device_id}/%"), Station.sub_url.like(f"gb28181://{device_id}/%")))
            .limit(1)).first() is not None
    known = bound or bool(row is not None and row.accepted)
    password = (row.password if row is not None and row.password else None) or global_password
    return Admission(known, password)


def note_refused(db: Database, device_id: str, host: str, port: int, transport: str, reason: str, now_ms: int) -> None:
    """An unknown device (right password) or a wrong password: listed for an admin, never recorded."""
    with db.session() as s:
        row = s.get(GbDevice, device_id)
        if row is None:
            # A sender that can pass a challenge can still invent device IDs: the list an admin reads keeps
            # the MAX_REFUSED most recently seen, not every ID ever tried.
            refused = s.scalar(select(func.count()).select_from(GbDevice).where(GbDevice.accepted.is_(False)))
            if (refused or 0) >= MAX_REFUSED:
                oldest = s.scalars(select(GbDevice.device_id).where(GbDevice.accepted.is_(False))
                                   .order_by(GbDevice.last_seen_ms).limit((refused or 0) - MAX_REFUSED + 1)).all()
                for old_id in oldest:
                    s.execute(delete(GbChannel).where(GbChannel.device_id == old_id))
                    s.execute(delete(GbDevice).where(GbDevice.device_id == old_id))
            row = GbDevice(device_id=device_id, accepted=False, state="refused")
            s.add(row)
        if not row.accepted:
            row.state = "refused"
        row.host, row.port, row.transport = host, port, transport
        row.refused_reason = reason
        row.last_seen_ms = now_ms
        row.updated_ms = now_ms


def note_registered(db: Database, device_id: str, host: str, port: int, transport: str, gb_version: str | None,
                    now_ms: int, expires_ms: int) -> None:
    with db.session() as s:
        row = s.get(GbDevice, device_id)
        if row is None:
            row = GbDevice(device_id=device_id, accepted=True)  # known through a station's URL
            s.add(row)
        row.accepted = True
        row.state = "online"
        row.host, row.port, row.transport, row.gb_version = host, port, transport, gb_version
        row.registered_ms = now_ms
        row.expires_ms = expires_ms
        row.last_keepalive_ms = now_ms
        row.last_seen_ms = now_ms
        row.refused_reason = None
        row.updated_ms = now_ms


def note_seen(db: Database, seen: dict[str, tuple[str, int, int, int | None]]) -> None:
    """{device: (host, port, last seen ms, last keepalive ms)}: written in one transaction, every few seconds."""
    with db.session() as s:
        for device_id, (host, port, seen_ms, keepalive_ms) in seen.items():
            row = s.get(GbDevice, device_id)
            if row is None:
                continue
            row.host, row.port, row.last_seen_ms = host, port, seen_ms
            if keepalive_ms is not None:
                row.last_keepalive_ms = keepalive_ms
            row.updated_ms = seen_ms


def note_offline(db: Database, device_id: str, why: str, now_ms: int) -> None:
    with db.session() as s:
        row = s.get(GbDevice, device_id)
        if row is not None and row.state == "online":
            row.state = "offline"
            row.refused_reason = why
            row.updated_ms = now_ms


def note_device_info(db: Database, device_id: str, info: dict[str, str], now_ms: int) -> None:
    with db.session() as s:
        row = s.get(GbDevice, device_id)
        if row is None:
            return
        row.name = (info.get("DeviceName") or row.name or "")[:128] or None
        row.manufacturer = (info.get("Manufacturer") or row.manufacturer or "")[:64] or None
        row.model = (info.get("Model") or row.model or "")[:64] or None
        row.firmware = (info.get("Firmware") or row.firmware or "")[:64] or None
        row.updated_ms = now_ms


def store_catalog(db: Database, device_id: str, items: list[CatalogItem], now_ms: int, complete: bool) -> None:
    """The channels a Catalog answer listed. A complete answer replaces the device's list (channels it no
    longer lists are removed); a partial one (pages lost) only adds and updates."""
    with db.session() as s:
        if s.get(GbDevice, device_id) is None:
            return
        existing = {c.channel_id: c for c in s.execute(
            select(GbChannel).where(GbChannel.device_id == device_id)).scalars()}
        listed = set()
        for item in items:
            listed.add(item.channel_id)
            row = existing.get(item.channel_id)
            if row is None:
                row = GbChannel(device_id=device_id, channel_id=item.channel_id)
                s.add(row)
                existing[item.channel_id] = row
            row.name = item.name or None
            row.manufacturer = item.manufacturer or None
            row.model = item.model or None
            row.status = item.status or None
            row.parent_id = item.parent_id or None
            row.updated_ms = now_ms
        if complete:
            for channel_id, row in existing.items():
                if channel_id not in listed:
                    s.delete(row)


def registered_devices(db: Database, now_ms: int) -> list[GbDevice]:
    """Devices whose registration had not expired at the last stop: a restart of vms need not wait for
    every device to register again (they re-register only when their expiry runs out, up to a day)."""
    with db.session() as s:
        rows = s.execute(select(GbDevice).where(GbDevice.state == "online", GbDevice.accepted.is_(True),
                                                GbDevice.expires_ms > now_ms)).scalars().all()
        s.expunge_all()
        return list(rows)
