"""Alerts (issue 20): the list and one alert with its messages, acknowledge and mute, maintenance
windows, and the channels alerts go to (described without secrets; an admin may send a test message).

Town-limited users see and handle only the alerts of their towns' stations; the server's own alerts
(no town: disk, database, retention) only users of every town see. An alert not visible is 404, as if
it did not exist (a town user does not learn of other towns' alerts)."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import Field
from sqlalchemy import select

from vms.alerts import engine as alert_engine
from vms.alerts.views import (
    MaintenanceError,
    add_maintenance,
    alert_dict,
    channel_test_too_soon,
    channel_test_wait_ms,
    deliveries_of,
    end_maintenance,
    list_maintenance,
    maintenance_dict,
    maintenance_town,
    station_names,
)
from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.context import ApiContext
from vms.api.deps import STATION_ID_PATTERN, Ctx, DbSession, require
from vms.api.errors import ApiError
from vms.api.schemas import TIME_DESCRIPTION, ApiModel, TimeText, time_query
from vms.api.timeparse import parse_time
from vms.db.models import Alert, AlertMaintenance, Station

log = logging.getLogger("vms.alerts")
router = APIRouter(prefix="/api/alerts", tags=["alerts"])

Reader = Annotated[Principal, Depends(require(P.ALERTS_READ))]
Writer = Annotated[Principal, Depends(require(P.ALERTS_WRITE))]
Admin = Annotated[Principal, Depends(require(P.ALERTS_ADMIN))]
AlertId = Annotated[int, Path(ge=1, le=2**62, description="the alert's id")]
WindowId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the maintenance window's id")]
CHANNELS = "alert_channels"  # ctx.extras key: the channels, made once per app


class AlertOut(ApiModel):
    id: int
    key: str
    rule: str
    rule_label: str = Field(description="the rule's Chinese name")
    severity: str = Field(description="info | minor | major | critical")
    station_id: str | None
    station_name: str | None
    town: str | None = Field(description="null: the server's own alert (disk, database, retention)")
    title: str
    detail: str | None
    state: str = Field(description="firing | resolved")
    since_ms: int
    since: str = Field(description="the condition began (local ISO 8601)")
    fired_ms: int
    fired: str
    resolved_ms: int | None
    resolved: str | None
    acked_ms: int | None
    acked: str | None
    acked_by: str | None
    ack_note: str | None
    muted_until_ms: int | None
    muted_until: str | None
    muted_by: str | None
    suppressed: str | None = Field(description="maintenance: raised inside a maintenance window, not told")
    reminders: int
    notified: bool = Field(description="a firing message was queued for the channels")


class AlertList(ApiModel):
    count: int
    alerts: list[AlertOut]
    next_before_id: int | None = Field(default=None, description="more: pass as before_id for the next page")


class DeliveryOut(ApiModel):
    id: int
    channel: str
    kind: str = Field(description="firing | reminder | resolved | digest | test")
    severity: str
    state: str = Field(description="queued | sent | batched | failed | dropped")
    attempts: int
    created_ms: int
    created: str
    sent_ms: int | None
    sent: str | None
    last_error: str | None
    digest_id: int | None = Field(description="the digest that carried it (state batched)")
    digest_state: str | None = Field(default=None, description="state batched: the carrying digest's state "
                                                               "(sent: delivered; queued: not yet; failed)")
    digest_sent_ms: int | None = Field(default=None, description="state batched: when the digest was delivered")
    digest_sent: str | None = None


class AlertDetail(AlertOut):
    deliveries: list[DeliveryOut]


class AckIn(ApiModel):
    note: str | None = Field(default=None, max_length=500, description="what is being done about it")


class MuteIn(ApiModel):
    minutes: float = Field(allow_inf_nan=False, description="silence reminders and the recovery message this long")


class MaintenanceOut(ApiModel):
    id: int
    station_id: str | None
    town: str | None
    scope: str = Field(description="station | town | all")
    start_ms: int
    start: str
    end_ms: int
    end: str
    reason: str
    created_by: str
    created_ms: int
    state: str = Field(description="active | future | past")


class MaintenanceIn(ApiModel):
    station_id: str | None = Field(default=None, pattern=STATION_ID_PATTERN)
    town: str | None = Field(default=None, max_length=32)
    start: TimeText = Field(description=TIME_DESCRIPTION, examples=["2026-03-01T08:00:00"])
    end: TimeText = Field(description=TIME_DESCRIPTION, examples=["2026-03-01T12:00:00"])
    reason: str = Field(max_length=500, description="why (e.g. 供电检修, 更换摄像机)")


class ChannelTestOut(ApiModel):
    channel: str
    delivery_id: int
    ok: bool
    error: str | None


def _not_found(alert_id: int) -> ApiError:
    return ApiError(404, "alert_not_found", f"告警 {alert_id} 不存在")


def _visible(principal: Principal, town: str | None) -> bool:
    """The server's own alerts (no town) concern the whole county: users of every town only."""
    return principal.towns is None if town is None else principal.may_see_town(town)


def _alert(session, principal: Principal, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None or not _visible(principal, alert.town):
        raise _not_found(alert_id)
    return alert


def _out(ctx: ApiContext, session, alert: Alert) -> dict:
    return alert_dict(alert, station_names(session, [alert]).get(alert.station_id or ""), ctx.settings.tz)


@router.get("", response_model=AlertList)
def list_alerts(
    ctx: Ctx, session: DbSession, principal: Reader,
    state: Literal["firing", "resolved", "all"] = "all",
    station_id: Annotated[str | None, Query(pattern=STATION_ID_PATTERN)] = None,
    rule: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_]+$", description="e.g. camera_offline")] = None,
    town: Annotated[str | None, Query(max_length=32)] = None,
    since: Annotated[str | None, time_query("alerts raised at or after; ISO 8601 or epoch milliseconds")] = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**62, description="page: alerts older than this id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict:
    tz = ctx.settings.tz
    q = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if principal.towns is not None:  # in the query, so a page is full of visible alerts
        q = q.where(Alert.town.in_(principal.towns))
    if state != "all":
        q = q.where(Alert.state == state)
    if station_id:
        q = q.where(Alert.station_id == station_id)
    if rule:
        q = q.where(Alert.rule == rule)
    if town:
        q = q.where(Alert.town == town)
    if since:
        q = q.where(Alert.fired_ms >= parse_time(since, "since", tz))
    if before_id:
        q = q.where(Alert.id < before_id)
    rows = list(session.scalars(q))
    names = station_names(session, rows)
    alerts = [alert_dict(a, names.get(a.station_id or ""), tz) for a in rows]
    return {"count": len(alerts), "alerts": alerts, "next_before_id": rows[-1].id if len(rows) == limit else None}


# ---------------------------------------------------------------- maintenance windows
# (Before /{alert_id}: the paths below are not alert ids.)

def _may_manage(principal: Principal, town: str | None) -> bool:
    """A window for everything silences every town: users of every town only."""
    return principal.towns is None if town is None else principal.may_see_town(town)


@router.get("/maintenance", response_model=list[MaintenanceOut])
def get_maintenance(ctx: Ctx, session: DbSession, principal: Reader, include_past: bool = False) -> list[dict]:
    """Active and future windows (with include_past: also those that ended). A town user sees the
    windows of their towns and those for everything (which silence their towns too)."""
    now = ctx.clock.now_ms()
    out = []
    for w in list_maintenance(session, now, include_past=include_past):
        town = maintenance_town(session, w)
        if (w.station_id is None and w.town is None) or (town is not None and principal.may_see_town(town)):
            out.append(maintenance_dict(w, ctx.settings.tz, now))
    return out


@router.post("/maintenance", response_model=MaintenanceOut, status_code=201,
             responses={400: {"description": "codes maintenance_scope_both, maintenance_reversed, "
                                             "maintenance_too_long, maintenance_in_past (ends before now, or "
                                             "starts more than 10 minutes before now), maintenance_reason, "
                                             "town_unknown"},
                        403: {"description": "code maintenance_forbidden: not your towns"},
                        404: {"description": "code station_not_found"},
                        409: {"description": "code maintenance_too_many: 500 windows not yet ended"}})
def create_maintenance(body: MaintenanceIn, ctx: Ctx, session: DbSession, principal: Writer) -> dict:
    tz = ctx.settings.tz
    start = parse_time(body.start, "start", tz)
    end = parse_time(body.end, "end", tz)
    now = ctx.clock.now_ms()
    if body.station_id:
        # A station of another town is "not found" for a town user, as everywhere else in the API.
        town = session.scalar(select(Station.town).where(Station.id == body.station_id))
        if town is not None and not principal.may_see_town(town):
            raise ApiError(404, "station_not_found", f"站点 {body.station_id} 不存在")
    elif not _may_manage(principal, body.town):
        what = f"{body.town}" if body.town else "全县（所有站点）"
        raise ApiError(403, "maintenance_forbidden",
                       f"无权为{what}设置维护时段：账号只管理 {'、'.join(principal.towns or ())}")
    try:
        w = add_maintenance(session, body.station_id, body.town, start, end, body.reason, principal.username, now, tz)
    except MaintenanceError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    log.info("maintenance window %d (%s) set by %s", w.id, w.station_id or w.town or "all", principal.username)
    return maintenance_dict(w, tz, now)


@router.delete("/maintenance/{window_id}", response_model=MaintenanceOut,
               responses={404: {"description": "code maintenance_not_found"},
                          409: {"description": "code maintenance_over: it has ended already"}})
def delete_maintenance(window_id: WindowId, ctx: Ctx, session: DbSession, principal: Writer) -> dict:
    """End a window now: a running one ends at this moment (it stays on record), a future one is deleted.
    Answers the window as it was left."""
    w = session.get(AlertMaintenance, window_id)
    town = maintenance_town(session, w) if w is not None else None
    everything = w is not None and w.station_id is None and w.town is None
    if w is None or not (everything or (town is not None and principal.may_see_town(town))):
        raise ApiError(404, "maintenance_not_found", f"维护时段 {window_id} 不存在")
    if not _may_manage(principal, town):
        raise ApiError(403, "maintenance_forbidden", "全县的维护时段只能由管理所有镇的账号结束")
    now = ctx.clock.now_ms()
    shown = maintenance_dict(w, ctx.settings.tz, now)
    try:
        what = end_maintenance(session, w, now, ctx.settings.tz)
    except MaintenanceError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    log.info("maintenance window %d %s by %s", window_id, what, principal.username)
    if what == "ended":
        shown = maintenance_dict(w, ctx.settings.tz, now)
    return shown


# ---------------------------------------------------------------- channels
def _channels(ctx: ApiContext) -> dict[str, Any]:
    """The configured channels (vms.alerts.channels), made once per app from the settings. Nothing is
    pooled: each send opens its own HTTP client (or SMTP connection) and closes it."""
    channels = ctx.extras.get(CHANNELS)
    if channels is None:
        from vms.alerts.channels import make_channels

        channels = ctx.extras[CHANNELS] = make_channels(ctx.settings.alerts, ctx.settings.tz)
    return channels


def _channel_visible(principal: Principal, channel: Any) -> bool:
    """A town-limited user sees only the channels of their towns: `towns` set and within theirs (a channel
    for every town carries other towns' alerts too). Users of every town see all."""
    if principal.towns is None:
        return True
    towns = list(channel.settings.towns)
    return bool(towns) and all(principal.may_see_town(t) for t in towns)


def _visible_channels(ctx: ApiContext, principal: Principal) -> dict[str, Any]:
    return {name: ch for name, ch in _channels(ctx).items() if _channel_visible(principal, ch)}


@router.get("/channels", response_model=list[dict[str, Any]])
def get_channels(ctx: Ctx, principal: Writer) -> list[dict]:
    """Where alerts go: each channel's type, masked address, towns and severities. Never a key or secret.
    A town-limited user sees only the channels for their towns."""
    return [ch.describe() for ch in _visible_channels(ctx, principal).values()]


@router.post("/channels/{name}/test", response_model=ChannelTestOut,
             responses={404: {"description": "code channel_not_found"},
                        429: {"description": "code channel_test_too_soon: this channel was tested in the last "
                                             "10 seconds (Retry-After says when to try again)"}})
def test_channel(name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,32}$")], ctx: Ctx, principal: Admin) -> dict:
    """Send a test message through one channel now, recorded as a delivery (kind test). 200 whether or
    not the receiver took it: `ok` and `error` say. At most one test per channel every 10 seconds (the
    robots throttle a burst: DingTalk for 10 minutes)."""
    from vms.alerts.dispatch import send_test

    visible = _visible_channels(ctx, principal)
    channel = visible.get(name)
    if channel is None:
        known = "、".join(visible) or "（未配置任何通道）"
        raise ApiError(404, "channel_not_found", f"告警通道 {name} 不存在；已配置：{known}")
    with ctx.database.session() as session:
        wait_ms = channel_test_wait_ms(session, name, ctx.clock.now_ms())
    if wait_ms:
        wait_s, message = channel_test_too_soon(name, wait_ms)
        raise ApiError(429, "channel_test_too_soon", message, headers={"Retry-After": str(wait_s)})
    delivery_id, result = send_test(ctx.database, ctx.settings, channel, ctx.clock.now_ms())
    log.info("alert channel %s tested by %s: %s", name, principal.username, "ok" if result.ok else result.error)
    return {"channel": name, "delivery_id": delivery_id, "ok": result.ok, "error": result.error}


# ---------------------------------------------------------------- one alert
@router.get("/{alert_id}", response_model=AlertDetail, responses={404: {"description": "code alert_not_found"}})
def get_alert(alert_id: AlertId, ctx: Ctx, session: DbSession, principal: Reader) -> dict:
    alert = _alert(session, principal, alert_id)
    return {**_out(ctx, session, alert), "deliveries": deliveries_of(session, alert.id, ctx.settings.tz)}


def _action(fn, alert_id: int, *args) -> Alert:
    try:
        return fn(*args)
    except LookupError:
        raise _not_found(alert_id) from None
    except alert_engine.AlertActionError as exc:
        raise ApiError(409, "alert_not_firing", str(exc)) from None


@router.post("/{alert_id}/ack", response_model=AlertOut,
             responses={404: {"description": "code alert_not_found"},
                        409: {"description": "code alert_not_firing: it has ended"}})
def ack_alert(alert_id: AlertId, ctx: Ctx, session: DbSession, principal: Writer, body: AckIn | None = None) -> dict:
    """Acknowledge: someone is on it. Stops the reminders (the recovery is still told)."""
    _alert(session, principal, alert_id)
    note = ((body.note or "").strip() or None) if body else None
    alert = _action(alert_engine.acknowledge, alert_id, session, alert_id, principal.username, note,
                    ctx.clock.now_ms())
    log.info("alert %d acknowledged by %s", alert_id, principal.username)
    return _out(ctx, session, alert)


@router.post("/{alert_id}/mute", response_model=AlertOut,
             responses={404: {"description": "code alert_not_found"},
                        409: {"description": "code alert_not_firing"},
                        422: {"description": "code mute_minutes_invalid"}})
def mute_alert(alert_id: AlertId, body: MuteIn, ctx: Ctx, session: DbSession, principal: Writer) -> dict:
    """No reminders and no recovery message for this many minutes (at most alerts.mute_max_hours)."""
    _alert(session, principal, alert_id)
    max_hours = ctx.settings.alerts.mute_max_hours
    if not (1 <= body.minutes <= max_hours * 60):
        raise ApiError(422, "mute_minutes_invalid",
                       f"静音时长须在 1 分钟到 {max_hours:g} 小时之间（收到 {body.minutes:g} 分钟）")
    alert = _action(alert_engine.mute, alert_id, session, alert_id, principal.username, body.minutes, max_hours,
                    ctx.clock.now_ms())
    log.info("alert %d muted for %g min by %s", alert_id, body.minutes, principal.username)
    return _out(ctx, session, alert)


@router.delete("/{alert_id}/mute", response_model=AlertOut, responses={404: {"description": "code alert_not_found"}})
def unmute_alert(alert_id: AlertId, ctx: Ctx, session: DbSession, principal: Writer) -> dict:
    _alert(session, principal, alert_id)
    alert = _action(alert_engine.unmute, alert_id, session, alert_id, ctx.clock.now_ms())
    log.info("alert %d unmuted by %s", alert_id, principal.username)
    return _out(ctx, session, alert)
