"""Conditions to alerts, and alerts to messages: the alert state machine (docs/design/alerts.md).

Per condition key, at most one firing alert. A round (`AlertEngine.evaluate`):
- a condition past its grace with no firing alert raises one; its firing message is queued for every
  channel the alert routes to, unless the station is in a maintenance window (then the alert is kept,
  `suppressed`, and stays silent until it ends -- also after the window ends: what was already down
  when maintenance ended is not announced);
- a firing alert whose condition is gone is resolved; a recovery message is queued only if a firing
  message was (and the alert was not muted, and the condition did not merely expire);
- an unacknowledged, unmuted firing alert gets reminders after growing waits (alerts.reminder_minutes).
Messages are rows of alert_deliveries (the outbox); vms/alerts/dispatch.py sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.alerts.rules import Condition, Evaluation, evaluate
from vms.core.settings import ALERT_SEVERITIES, AlertChannelSettings, Settings
from vms.db.models import Alert, AlertDelivery, AlertMaintenance, AlertState, DeliveryState

log = logging.getLogger("vms.alerts")


def severity_rank(severity: str) -> int:
    return ALERT_SEVERITIES.index(severity) if severity in ALERT_SEVERITIES else 0


def routes_to(channel: AlertChannelSettings, severity: str, town: str | None) -> bool:
    """Whether a channel receives an alert: severe enough, and of one of its towns (a channel limited to
    towns -- a town's officials -- gets its own stations only, not the server's own alerts)."""
    if severity_rank(severity) < severity_rank(channel.min_severity):
        return False
    return not channel.towns or (town is not None and town in channel.towns)


def queue_message(session: Session, alert: Alert, kind: str, channels: Iterable[AlertChannelSettings],
                  now_ms: int) -> int:
    """Queue one message about `alert` for every channel it routes to; returns how many."""
    n = 0
    waiting: set[str] = set()
    if kind == "reminder":
        # A channel that has not yet taken this alert's last message (its robot is down, quiet hours)
        # gets no reminder on top: the reminders would pile up and arrive together.
        waiting = {d.channel for d in unsent(session, alert.id)}
    for ch in channels:
        if ch.name not in waiting and routes_to(ch, alert.severity, alert.town):
            session.add(AlertDelivery(alert_id=alert.id, channel=ch.name, kind=kind, severity=alert.severity,
                                      state=DeliveryState.QUEUED, attempts=0, created_ms=now_ms,
                                      next_attempt_ms=now_ms, items=1))
            n += 1
    return n


def unsent(session: Session, alert_id: int) -> list[AlertDelivery]:
    """An alert's messages not yet delivered: queued, or carried by a digest that is still queued."""
    queued_digests = select(AlertDelivery.id).where(AlertDelivery.kind == "digest",
                                                    AlertDelivery.state == DeliveryState.QUEUED)
    return list(session.scalars(select(AlertDelivery).where(
        AlertDelivery.alert_id == alert_id,
        (AlertDelivery.state == DeliveryState.QUEUED)
        | ((AlertDelivery.state == DeliveryState.BATCHED) & AlertDelivery.digest_id.in_(queued_digests)))))


def drop_queued(session: Session, alert_id: int, kinds: tuple[str, ...]) -> None:
    """Unsent messages of these kinds for one alert are no longer worth sending (also inside a digest
    still waiting: it is rebuilt from the messages it still carries)."""
    for d in unsent(session, alert_id):
        if d.kind in kinds:
            d.state = DeliveryState.DROPPED
            d.last_error = "no longer needed"


def next_reminder(waits: list[float], sent: int, now_ms: int) -> int | None:
    """When the next reminder is due after `sent` reminders: the waits in turn, the last one repeating;
    none at all with an empty list."""
    if not waits:
        return None
    return now_ms + int(waits[min(sent, len(waits) - 1)] * 60_000)


def in_maintenance(windows: list[AlertMaintenance], station_id: str | None, town: str | None, at_ms: int) -> bool:
    for w in windows:
        if not (w.start_ms <= at_ms < w.end_ms):
            continue
        if w.station_id is None and w.town is None:
            return True
        if w.station_id is not None and w.station_id == station_id:
            return True
        if w.station_id is None and w.town is not None and w.town == town:
            return True
    return False


@dataclass
class RoundResult:
    raised: list[str] = field(default_factory=list)  # keys of alerts raised (told or suppressed)
    resolved: list[str] = field(default_factory=list)
    reminders: int = 0
    queued: int = 0


class AlertEngine:
    """Holds what rules cannot read back from evidence: when this server started, and when it first saw
    conditions that carry no start time of their own. Everything else is in the database."""

    def __init__(self, settings: Settings, started_ms: int) -> None:
        self.settings = settings
        self.started_ms = started_ms
        self.first_seen: dict[str, int] = {}

    def channels(self) -> list[AlertChannelSettings]:
        return self.settings.alerts.all_channels()

    def evaluate(self, session: Session, now_ms: int) -> RoundResult:
        ev = evaluate(session, self.settings, now_ms, started_ms=self.started_ms, first_seen=self.first_seen)
        self._remember(ev)
        return self.apply(session, ev, now_ms)

    def _remember(self, ev: Evaluation) -> None:
        self.first_seen.update(ev.observed)
        live = {c.key for c in ev.conditions}
        for key in [k for k in self.first_seen if k not in live]:
            del self.first_seen[key]

    def apply(self, session: Session, ev: Evaluation, now_ms: int) -> RoundResult:
        out = RoundResult()
        alerts = self.settings.alerts
        channels = self.channels()
        firing = {a.key: a for a in session.scalars(select(Alert).where(Alert.state == AlertState.FIRING))}
        windows = list(session.scalars(select(AlertMaintenance).where(
            AlertMaintenance.end_ms > now_ms - 7 * 86_400_000)))
        present: set[str] = set()
        for cond in ev.conditions:
            present.add(cond.key)
            alert = firing.get(cond.key)
            if alert is None:
                if cond.due_ms > now_ms:
                    continue
                if cond.one_shot and session.scalar(select(Alert.id).where(Alert.key == cond.key).limit(1)):
                    continue  # an event is told once
                alert = self._raise(session, cond, windows, channels, now_ms, out)
                if alert is not None and not cond.one_shot:
                    firing[cond.key] = alert
                continue
            # Still firing: remind if due (with the current text). Nothing is written otherwise: a round
            # over 139 stations must not rewrite every firing alert.
            if alert.muted_until_ms is not None and alert.muted_until_ms <= now_ms:
                alert.muted_until_ms = None
                alert.updated_ms = now_ms
            if (alert.notified and alert.acked_ms is None and alert.muted_until_ms is None
                    and alert.suppressed is None and alert.next_reminder_ms is not None
                    and not in_maintenance(windows, alert.station_id, alert.town, now_ms)
                    and alert.next_reminder_ms <= now_ms):
                alert.detail = cond.detail
                out.queued += queue_message(session, alert, "reminder", channels, now_ms)
                alert.reminders += 1
                alert.next_reminder_ms = next_reminder(alerts.reminder_minutes, alert.reminders, now_ms)
                alert.updated_ms = now_ms
                out.reminders += 1
        for key, alert in firing.items():
            if key in present:
                continue
            # Ends without a recovery message: the condition ran out (business hours over), its rule or
            # station was switched off. Nothing was put right, so nobody is told it was.
            silent = None
            if alert.expires_ms is not None and now_ms >= alert.expires_ms:
                silent = "营业时间已结束，告警关闭（不发恢复消息）"
            elif alert.station_id is not None and alert.station_id not in ev.enabled_stations:
                silent = "站点已停用或已移出目录，告警关闭（不发恢复消息）"
            elif key in ev.expired:
                silent = "规则已关闭或条件已过期，告警关闭（不发恢复消息）"
            elif any(key.startswith(prefix) for prefix in ev.held):
                continue  # no evidence either way this round
            alert.state = AlertState.RESOLVED
            alert.resolved_ms = now_ms
            alert.updated_ms = now_ms
            alert.next_reminder_ms = None
            drop_queued(session, alert.id, ("reminder",))
            if silent is not None:
                alert.detail = f"{alert.detail or ''}（{silent}）"
            elif (alert.notified and not (alert.muted_until_ms and alert.muted_until_ms > now_ms)
                  and not in_maintenance(windows, alert.station_id, alert.town, now_ms)):
                out.queued += queue_message(session, alert, "resolved", channels, now_ms)
            out.resolved.append(key)
            log.info("alert %s resolved", key)
        return out

    def _raise(self, session: Session, cond: Condition, windows: list[AlertMaintenance],
               channels: list[AlertChannelSettings], now_ms: int, out: RoundResult) -> Alert | None:
        # In maintenance now, or the condition began inside a window (already down when it ended).
        suppressed = (in_maintenance(windows, cond.station_id, cond.town, now_ms)
                      or in_maintenance(windows, cond.station_id, cond.town, cond.since_ms))
        alert = Alert(key=cond.key, rule=cond.rule, severity=cond.severity, station_id=cond.station_id,
                      town=cond.town, title=cond.title, detail=cond.detail, state=AlertState.FIRING,
                      since_ms=cond.since_ms, fired_ms=now_ms, expires_ms=cond.expires_ms,
                      one_shot=cond.one_shot, notified=False,
                      suppressed="maintenance" if suppressed else None, reminders=0, updated_ms=now_ms)
        session.add(alert)
        session.flush()  # its id, for the deliveries
        if not suppressed:
            out.queued += queue_message(session, alert, "firing", channels, now_ms)
            alert.notified = True
            if not cond.one_shot:
                alert.next_reminder_ms = next_reminder(self.settings.alerts.reminder_minutes, 0, now_ms)
        if cond.one_shot:
            alert.state = AlertState.RESOLVED
            alert.resolved_ms = now_ms
        out.raised.append(cond.key)
        log.warning("alert %s raised%s: %s", cond.key, " (in maintenance: not told)" if suppressed else "",
                    cond.title)
        return alert


# ---------------------------------------------------------------- actions (API and CLI)
class AlertActionError(ValueError):
    """An action that cannot be done to this alert; the message says why, in Chinese."""


def acknowledge(session: Session, alert_id: int, username: str, note: str | None, now_ms: int) -> Alert:
    """Stop the reminders of a firing alert (its recovery is still told)."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise LookupError(f"告警 {alert_id} 不存在")
    if alert.state != AlertState.FIRING:
        raise AlertActionError(f"告警 {alert_id} 已结束，无需确认")
    if alert.acked_ms is None:
        alert.acked_ms = now_ms
        alert.acked_by = username
        alert.ack_note = note
        alert.next_reminder_ms = None
        alert.updated_ms = now_ms
        drop_queued(session, alert.id, ("reminder",))
    return alert


def mute(session: Session, alert_id: int, username: str, minutes: float, max_hours: float, now_ms: int) -> Alert:
    """Silence a firing alert for a while: no reminders and no recovery message until then."""
    if not (0 < minutes <= max_hours * 60):
        raise AlertActionError(f"静音时长须在 1 分钟到 {max_hours:g} 小时之间")
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise LookupError(f"告警 {alert_id} 不存在")
    if alert.state != AlertState.FIRING:
        raise AlertActionError(f"告警 {alert_id} 已结束，无法静音")
    alert.muted_until_ms = now_ms + int(minutes * 60_000)
    alert.muted_by = username
    alert.updated_ms = now_ms
    drop_queued(session, alert.id, ("reminder",))
    return alert


def unmute(session: Session, alert_id: int, now_ms: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise LookupError(f"告警 {alert_id} 不存在")
    alert.muted_until_ms = None
    alert.updated_ms = now_ms
    return alert
