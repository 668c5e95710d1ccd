"""GB/T 28181 devices for admins: registration state, channels, accepting unknown devices, binding a
channel to a station, asking a device for its catalog (over vms.gb28181.views)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.deps import STATION_ID_PATTERN, Ctx, DbSession, require
from vms.api.errors import ApiError
from vms.api.schemas import ApiModel
from vms.gb28181.views import GbViewError, accept_device, ask_catalog, bind_channel, list_devices

router = APIRouter(prefix="/api/gb28181", tags=["gb28181"])

# Device addresses and passwords are the installation's business: admins only.
Admin = Annotated[Principal, Depends(require(P.STATIONS_WRITE))]
DeviceId = Annotated[str, Path(pattern=r"^\d{20}$", description="20-digit GB/T 28181 device ID")]
ChannelId = Annotated[str, Path(pattern=r"^\d{20}$", description="20-digit channel ID")]


class ChannelOut(ApiModel):
    channel_id: str
    name: str | None
    manufacturer: str | None
    model: str | None
    status: str | None = Field(description="ON | OFF as the device reports it")
    url: str = Field(description="the camera URL that binds it: gb28181://<device>/<channel>")
    station_id: str | None
    bound_by: str | None = Field(description="catalogue (the stations file) | api | null")


class DeviceOut(ApiModel):
    device_id: str
    state: str = Field(description="online | offline | refused (unknown device or wrong password)")
    accepted: bool
    has_own_password: bool
    transport: str | None
    host: str | None = Field(description="where its packets come from (learned: NAT)")
    port: int | None
    gb_version: str | None
    name: str | None
    manufacturer: str | None
    model: str | None
    firmware: str | None
    registered_ms: int | None
    expires_ms: int | None
    last_keepalive_ms: int | None
    last_seen_ms: int | None
    problem: str | None
    channels: list[ChannelOut]


class AcceptIn(ApiModel):
    password: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="the device's own password (default: gb28181.password)")


class BindIn(ApiModel):
    station_id: str | None = Field(default=None, pattern=STATION_ID_PATTERN, description="null: unbind")


class ServerOut(ApiModel):
    enabled: bool = Field(description="gb28181.enabled: whether the SIP server runs with vms serve / vms ingest")
    server_id: str = Field(description="the SIP server ID devices are set to (their platform page)")
    domain: str = Field(description="the SIP domain (realm)")
    sip_host: str = Field(description="the address the SIP server binds (0.0.0.0: every address)")
    sip_port: int
    password_set: bool = Field(description="whether a global device password (gb28181.password) is set")


def _view_error(exc: GbViewError) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc))


@router.get("/server", response_model=ServerOut)
def get_server(ctx: Ctx, _admin: Admin) -> dict:
    """What a device's platform-access page needs (never the password itself)."""
    cfg = ctx.settings.gb28181
    return {"enabled": cfg.enabled, "server_id": cfg.server_id, "domain": cfg.domain, "sip_host": cfg.sip_host,
            "sip_port": cfg.sip_port, "password_set": cfg.password is not None}


@router.get("/devices", response_model=list[DeviceOut])
def get_devices(ctx: Ctx, session: DbSession, _admin: Admin) -> list[dict]:
    return list_devices(session, ctx.settings, ctx.clock.now_ms())


@router.post("/devices/{device_id}/accept", status_code=204)
def post_accept(device_id: DeviceId, body: AcceptIn, ctx: Ctx, session: DbSession, _admin: Admin) -> None:
    try:
        accept_device(session, device_id, body.password, ctx.clock.now_ms())
    except GbViewError as exc:
        raise _view_error(exc) from None
    session.commit()


@router.put("/channels/{device_id}/{channel_id}/station", status_code=204)
def put_binding(device_id: DeviceId, channel_id: ChannelId, body: BindIn, ctx: Ctx, session: DbSession,
                _admin: Admin) -> None:
    try:
        bind_channel(session, device_id, channel_id, body.station_id, ctx.clock.now_ms())
    except GbViewError as exc:
        raise _view_error(exc) from None
    session.commit()


@router.post("/devices/{device_id}/catalog", status_code=202, responses={
    409: {"description": "the device is not registered (code gb_device_offline)"},
    503: {"description": "no GB28181 SIP server runs on this machine (code gb_server_unavailable)"}})
async def post_catalog(device_id: DeviceId, ctx: Ctx, _admin: Admin) -> dict:
    try:
        ok = await run_in_threadpool(ask_catalog, ctx.settings, device_id, 10.0)
    except OSError:
        raise ApiError(503, "gb_server_unavailable", "国标（GB/T 28181）接入服务未运行") from None
    if not ok:
        raise ApiError(409, "gb_device_offline", f"设备 {device_id} 未注册，无法查询目录")
    return {"queried": device_id}
