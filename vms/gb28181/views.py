"""What the API and the CLI show of GB/T 28181 devices, and the admin's actions on them."""

from __future__ import annotations

import re
import socket
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from vms.core.settings import Settings
from vms.db.models import GbChannel, GbDevice, Station
from vms.gb28181.control import control_address, decode, encode

DEVICE_ID = re.compile(r"^\d{20}$")
CHANNEL_ID = re.compile(r"^\d{20}$")


class GbViewError(ValueError):
    """An admin's request that cannot be done; `code` is stable for the API, the text is Chinese."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def device_online(row: GbDevice, settings: Settings, now_ms: int) -> bool:
    """Online by evidence, not by the stored word: a registration not expired and a keepalive within the
    allowed misses (the server writes both every few seconds; a server that stopped stops writing them)."""
    cfg = settings.gb28181
    if row.state != "online" or not row.expires_ms or row.expires_ms <= now_ms:
        return False
    last = max(row.last_keepalive_ms or 0, row.registered_ms or 0)
    # One more interval of slack for the server's write delay.
    return now_ms - last <= cfg.keepalive_interval_seconds * (cfg.keepalive_missed + 1) * 1000


def list_devices(session: Session, settings: Settings, now_ms: int) -> list[dict[str, Any]]:
    devices = session.execute(select(GbDevice).order_by(GbDevice.device_id)).scalars().all()
    channels: dict[str, list[GbChannel]] = {}
    for ch in session.execute(select(GbChannel).order_by(GbChannel.device_id, GbChannel.channel_id)).scalars():
        channels.setdefault(ch.device_id, []).append(ch)
    url_bound: dict[tuple[str, str], str] = {}
    for sid, main_url, sub_url in session.execute(select(Station.id, Station.main_url, Station.sub_url).where(
            or_(Station.main_url.like("gb28181://%"), Station.sub_url.like("gb28181://%")))).all():
        for url in (main_url, sub_url):
            if url and url.startswith("gb28181://"):
                dev, _, channel_id = url[len("gb28181://"):].partition("/")
                url_bound[(dev, channel_id)] = sid
    out = []
    for row in devices:
        if row.state == "refused":
            state = "refused"
        elif device_online(row, settings, now_ms):
            state = "online"
        else:
            state = "offline"
        out.append({
            "device_id": row.device_id, "state": state, "accepted": row.accepted,
            "has_own_password": bool(row.password), "transport": row.transport, "host": row.host, "port": row.port,
            "gb_version": row.gb_version, "name": row.name, "manufacturer": row.manufacturer, "model": row.model,
            "firmware": row.firmware, "registered_ms": row.registered_ms, "expires_ms": row.expires_ms,
            "last_keepalive_ms": row.last_keepalive_ms, "last_seen_ms": row.last_seen_ms,
            "problem": row.refused_reason,
            "channels": [{
                "channel_id": ch.channel_id, "name": ch.name, "manufacturer": ch.manufacturer, "model": ch.model,
                "status": ch.status, "url": f"gb28181://{ch.device_id}/{ch.channel_id}",
                "station_id": url_bound.get((ch.device_id, ch.channel_id)) or ch.station_id,
                "bound_by": "catalogue" if (ch.device_id, ch.channel_id) in url_bound else (
                    "api" if ch.station_id else None),
            } for ch in channels.get(row.device_id, [])],
        })
    return out


def accept_device(session: Session, device_id: str, password: str | None, now_ms: int) -> None:
    if not DEVICE_ID.match(device_id):
        raise GbViewError("gb_device_id_invalid", f"设备编号必须是 20 位数字：{device_id[:40]}")
    if password is not None and not 1 <= len(password) <= 64:
        raise GbViewError("gb_password_invalid", "设备密码长度须为 1-64 个字符")
    row = session.get(GbDevice, device_id)
    if row is None:
        row = GbDevice(device_id=device_id, state="unregistered")
        session.add(row)
    row.accepted = True
    if password is not None:
        row.password = password
    if row.state == "refused":
        row.state = "unregistered"
    row.refused_reason = None
    row.updated_ms = now_ms


def bind_channel(session: Session, device_id: str, channel_id: str, station_id: str | None, now_ms: int) -> None:
    """Bind a channel to a station (None: unbind). Only stations whose catalogue entry has no camera URL:
    a URL in the catalogue file is the binding there, and an import would overwrite anything else."""
    channel = session.get(GbChannel, (device_id, channel_id))
    if channel is None:
        raise GbViewError("gb_channel_not_found", f"没有通道 {device_id}/{channel_id}（先让设备注册并上报目录）", 404)
    if station_id is None:
        channel.station_id = None
        channel.updated_ms = now_ms
        return
    station = session.get(Station, station_id)
    if station is None:
        raise GbViewError("station_not_found", f"没有站点 {station_id}", 404)
    if station.main_url:
        raise GbViewError("station_has_camera", f"站点 {station_id} 在站点目录文件中已配置摄像机地址；"
                                                f"请在目录文件中改为 gb28181://{device_id}/{channel_id}", 409)
    other = session.execute(select(GbChannel).where(GbChannel.station_id == station_id)).scalars().first()
    if other is not None and (other.device_id, other.channel_id) != (device_id, channel_id):
        other.station_id = None
        other.updated_ms = now_ms
        session.flush()
    channel.station_id = station_id
    channel.updated_ms = now_ms
    station.updated_ms = now_ms


def ask_catalog(settings: Settings, device_id: str, timeout: float = 10.0) -> bool:
    """Ask the running SIP server (any process on this machine) to query a device's catalog now.
    False: the device is not registered. OSError: no server runs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(control_address(settings.data_dir))
        sock.sendall(encode({"op": "catalog", "id": "catalog", "device": device_id}))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("the SIP server closed the connection")
            data += chunk
    return bool(decode(data.strip()).get("ok"))
