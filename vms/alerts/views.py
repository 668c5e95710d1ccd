"""Alerts, deliveries and maintenance windows as the API and the CLI show them, and the maintenance
windows' own rules (shared so `vms alerts maintenance add` refuses what POST /api/alerts/maintenance does).

Messages are Chinese: the operators of the console and the command line read them."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vms.alerts.rules import RULE_LABELS
from vms.catalog.towns import TOWN_NAMES
from vms.core.clock import from_ms
from vms.core.errors import VmsError
from vms.db.models import Alert, AlertDelivery, AlertMaintenance, DeliveryState, Station

MAINTENANCE_MAX_DAYS = 7  # a longer window is a station taken out of service: disable it instead
# A window may start a little before now (the form was filled in a few minutes ago), never further back:
# it would suppress alerts already raised and told, after the fact.
MAINTENANCE_PAST_START_MS = 10 * 60_000
MAINTENANCE_MAX_OPEN = 500  # windows not yet ended; every alert round scans them
CHANNEL_TEST_INTERVAL_MS = 10_000  # one test per channel this often (a robot throttles a burst for minutes)
REASON_MIN = 2
REASON_MAX = 500


def local_iso(ms: int | None, tz: ZoneInfo) -> str | None:
    """Local ISO 8601 with offset, to the millisecond (what vms.api.timeparse.iso gives the API)."""
    return None if ms is None else from_ms(ms, tz).isoformat(timespec="milliseconds")


def alert_dict(a: Alert, station_name: str | None, tz: ZoneInfo) -> dict:
    return {
        "id": a.id, "key": a.key, "rule": a.rule, "rule_label": RULE_LABELS.get(a.rule, a.rule),
        "severity": a.severity, "station_id": a.station_id, "station_name": station_name, "town": a.town,
        "title": a.title, "detail": a.detail, "state": a.state,
        "since_ms": a.since_ms, "since": local_iso(a.since_ms, tz),
        "fired_ms": a.fired_ms, "fired": local_iso(a.fired_ms, tz),
        "resolved_ms": a.resolved_ms, "resolved": local_iso(a.resolved_ms, tz),
        "acked_ms": a.acked_ms, "acked": local_iso(a.acked_ms, tz), "acked_by": a.acked_by, "ack_note": a.ack_note,
        "muted_until_ms": a.muted_until_ms, "muted_until": local_iso(a.muted_until_ms, tz), "muted_by": a.muted_by,
        "suppressed": a.suppressed, "reminders": a.reminders, "notified": a.notified,
    }


def delivery_dict(d: AlertDelivery, tz: ZoneInfo, digest: AlertDelivery | None = None) -> dict:
    """One delivery; `digest` is the digest that carried it (state batched), whose state and send time
    say whether it reached the channel."""
    return {
        "id": d.id, "channel": d.channel, "kind": d.kind, "severity": d.severity, "state": d.state,
        "attempts": d.attempts, "created_ms": d.created_ms, "created": local_iso(d.created_ms, tz),
        "sent_ms": d.sent_ms, "sent": local_iso(d.sent_ms, tz), "last_error": d.last_error,
        "digest_id": d.digest_id,
        "digest_state": digest.state if digest is not None else None,
        "digest_sent_ms": digest.sent_ms if digest is not None else None,
        "digest_sent": local_iso(digest.sent_ms, tz) if digest is not None else None,
    }


def deliveries_of(session: Session, alert_id: int, tz: ZoneInfo) -> list[dict]:
    """An alert's deliveries, oldest first, each batched one with the state of the digest that carried it."""
    rows = list(session.scalars(select(AlertDelivery).where(AlertDelivery.alert_id == alert_id)
                                .order_by(AlertDelivery.id)))
    digest_ids = {d.digest_id for d in rows if d.state == DeliveryState.BATCHED and d.digest_id is not None}
    digests = ({d.id: d for d in session.scalars(select(AlertDelivery).where(AlertDelivery.id.in_(digest_ids)))}
               if digest_ids else {})
    return [delivery_dict(d, tz, digests.get(d.digest_id) if d.state == DeliveryState.BATCHED
                          and d.digest_id is not None else None) for d in rows]


def channel_test_wait_ms(session: Session, channel: str, now_ms: int) -> int:
    """How long before CHANNEL may be tested again (0: now): one test attempt per CHANNEL_TEST_INTERVAL_MS."""
    last = session.scalar(select(func.max(AlertDelivery.created_ms))
                          .where(AlertDelivery.channel == channel, AlertDelivery.kind == "test",
                                 AlertDelivery.created_ms > now_ms - CHANNEL_TEST_INTERVAL_MS))
    return 0 if last is None else max(0, last + CHANNEL_TEST_INTERVAL_MS - now_ms)


def channel_test_too_soon(channel: str, wait_ms: int) -> tuple[int, str]:
    """The whole seconds to wait (for Retry-After) and the refusal, for the API and the CLI alike."""
    wait_s = max(1, -(-wait_ms // 1000))
    return wait_s, (f"告警通道 {channel} 在 {CHANNEL_TEST_INTERVAL_MS // 1000} 秒内已测试过，请 {wait_s} 秒后再试"
                    "（频繁发送会被机器人限流）")


def station_names(session: Session, alerts: list[Alert]) -> dict[str, str]:
    ids = {a.station_id for a in alerts if a.station_id}
    if not ids:
        return {}
    return {sid: name for sid, name in session.execute(select(Station.id, Station.name).where(Station.id.in_(ids)))}


# ---------------------------------------------------------------- maintenance windows
class MaintenanceError(VmsError):
    """A maintenance window that cannot be made or ended; `code` names the case for the API."""

    def __init__(self, message: str, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def maintenance_state(w: AlertMaintenance, now_ms: int) -> str:
    if w.end_ms <= now_ms:
        return "past"
    return "active" if w.start_ms <= now_ms else "future"


def maintenance_dict(w: AlertMaintenance, tz: ZoneInfo, now_ms: int) -> dict:
    return {
        "id": w.id, "station_id": w.station_id, "town": w.town,
        "scope": "station" if w.station_id else ("town" if w.town else "all"),
        "start_ms": w.start_ms, "start": local_iso(w.start_ms, tz), "end_ms": w.end_ms, "end": local_iso(w.end_ms, tz),
        "reason": w.reason, "created_by": w.created_by, "created_ms": w.created_ms,
        "state": maintenance_state(w, now_ms),
    }


def _local(ms: int, tz: ZoneInfo) -> str:
    return f"{from_ms(ms, tz):%Y-%m-%d %H:%M:%S}"


def check_maintenance(session: Session, station_id: str | None, town: str | None, start_ms: int, end_ms: int,
                      reason: str, now_ms: int, tz: ZoneInfo) -> str | None:
    """Refuse a window that cannot be right; returns the town the window concerns (a station's town,
    the town itself, or None for everything) so the caller can check who may make it."""
    if station_id and town:
        raise MaintenanceError("维护时段只能针对一个站点或一个镇（或全部），不能同时指定 station_id 和 town",
                               "maintenance_scope_both")
    if end_ms <= start_ms:
        raise MaintenanceError(f"结束时间 {_local(end_ms, tz)} 须晚于开始时间 {_local(start_ms, tz)}",
                               "maintenance_reversed")
    if end_ms - start_ms > MAINTENANCE_MAX_DAYS * 86_400_000:
        days = (end_ms - start_ms) / 86_400_000
        raise MaintenanceError(f"维护时段过长：{days:.1f} 天，最多 {MAINTENANCE_MAX_DAYS} 天"
                               "（长期停用的站点请在站点设置中停用）", "maintenance_too_long")
    if end_ms <= now_ms:
        raise MaintenanceError(f"结束时间 {_local(end_ms, tz)} 已经过去（现在 {_local(now_ms, tz)}）："
                               "维护时段须在将来结束", "maintenance_in_past")
    if start_ms < now_ms - MAINTENANCE_PAST_START_MS:
        raise MaintenanceError(f"开始时间 {_local(start_ms, tz)} 早于现在（{_local(now_ms, tz)}）"
                               f"{MAINTENANCE_PAST_START_MS // 60_000} 分钟以上：维护时段不能追溯，"
                               "已经发生的告警不会因此取消", "maintenance_in_past")
    if not (REASON_MIN <= len(reason.strip()) <= REASON_MAX):
        raise MaintenanceError(f"请填写维护原因（{REASON_MIN} 至 {REASON_MAX} 个字）", "maintenance_reason")
    if station_id:
        station_town = session.scalar(select(Station.town).where(Station.id == station_id))
        if station_town is None:
            raise MaintenanceError(f"站点 {station_id} 不存在", "station_not_found", 404)
        return station_town
    if town:
        if town not in TOWN_NAMES:
            raise MaintenanceError(f"未知的镇 {town}；可选：{'、'.join(TOWN_NAMES)}", "town_unknown")
        return town
    return None


def add_maintenance(session: Session, station_id: str | None, town: str | None, start_ms: int, end_ms: int,
                    reason: str, created_by: str, now_ms: int, tz: ZoneInfo) -> AlertMaintenance:
    check_maintenance(session, station_id, town, start_ms, end_ms, reason, now_ms, tz)
    open_windows = session.scalar(select(func.count()).select_from(AlertMaintenance)
                                  .where(AlertMaintenance.end_ms > now_ms)) or 0
    if open_windows >= MAINTENANCE_MAX_OPEN:
        raise MaintenanceError(f"未结束的维护时段已有 {open_windows} 个，最多 {MAINTENANCE_MAX_OPEN} 个："
                               "请先结束不再需要的维护时段", "maintenance_too_many", 409)
    w = AlertMaintenance(station_id=station_id or None, town=town or None, start_ms=start_ms, end_ms=end_ms,
                         reason=reason.strip(), created_by=created_by[:64], created_ms=now_ms)
    session.add(w)
    session.flush()
    return w


def maintenance_town(session: Session, w: AlertMaintenance) -> str | None:
    """The town a window concerns (None: everything, or a station no longer in the catalogue)."""
    if w.station_id:
        return session.scalar(select(Station.town).where(Station.id == w.station_id))
    return w.town


def list_maintenance(session: Session, now_ms: int, include_past: bool = False) -> list[AlertMaintenance]:
    q = select(AlertMaintenance).order_by(AlertMaintenance.start_ms, AlertMaintenance.id)
    if not include_past:
        q = q.where(AlertMaintenance.end_ms > now_ms)
    return list(session.scalars(q))


def end_maintenance(session: Session, w: AlertMaintenance, now_ms: int, tz: ZoneInfo) -> str:
    """End a window now: a running one ends at now (its past stays on record), a future one is deleted.
    Returns "ended" or "deleted"."""
    state = maintenance_state(w, now_ms)
    if state == "past":
        raise MaintenanceError(f"维护时段 {w.id} 已于 {_local(w.end_ms, tz)} 结束", "maintenance_over", 409)
    if state == "future":
        session.delete(w)
        return "deleted"
    w.end_ms = now_ms
    return "ended"
