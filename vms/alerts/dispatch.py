"""The outbox: sends queued alert messages (alert_deliveries rows) through their channels.

Per channel and round:
- quiet hours: a message below the channel's quiet_min_severity waits for the end of its quiet hours;
- the robot's rate limit (max_per_minute, 20 for WeCom and DingTalk) is never exceeded: what does not
  fit waits for the next round;
- many messages due at once (digest_threshold or more, or more than the minute's budget left) go as
  ONE digest: a mass outage (a town's power cut) is one message, not sixty;
- a failed send is retried with growing waits (or the wait the robot asked for) until
  alerts.retry_max_hours; a refusal that retrying cannot fix (a wrong key) fails at once.

No database transaction is open while a channel sends (a robot may take its whole timeout to answer, and
SQLite would hold its write lock that long): rows are picked and committed, sent, then the outcome is
written. A crash between a send and the write of its outcome sends that message again after the restart
(at least once; webhooks carry X-VMS-Delivery for receivers that must drop duplicates).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from vms.alerts import metrics
from vms.alerts.engine import severity_rank
from vms.alerts.messages import AlertMessage, SendResult
from vms.alerts.rules import local_text
from vms.core.clock import Clock
from vms.core.settings import AlertChannelSettings, Settings
from vms.db.engine import Database
from vms.db.models import Alert, AlertDelivery, DeliveryState, Station

if TYPE_CHECKING:
    from vms.alerts.channels import Channel

log = logging.getLogger("vms.alerts")

RETRY_FIRST_S = 30.0
RETRY_MAX_S = 300.0  # alerts are news: a receiver back from an outage gets them within 5 minutes
RATE_WINDOW_MS = 60_000
DIGEST_MAX_ITEMS = 500  # one digest carries at most this many messages (the rest go in the next)


def retry_wait_s(attempts: int, asked_s: float | None) -> float:
    """30 s, 1, 2, 4 minutes, then every 5 minutes; never sooner than the receiver asked."""
    wait = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** max(0, attempts - 1))
    return max(wait, asked_s or 0.0)


def quiet_until(channel: AlertChannelSettings, now_ms: int, settings: Settings) -> int | None:
    """If now is within the channel's quiet hours, when they end (epoch ms); else None."""
    if not channel.quiet_hours:
        return None
    start_text, end_text = channel.quiet_hours.split("-")
    local = datetime.fromtimestamp(now_ms / 1000, settings.tz)

    def at(day_offset: int, text: str) -> datetime:
        hh, mm = (int(x) for x in text.split(":"))
        base = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=day_offset)
        return base + timedelta(hours=hh, minutes=mm)

    for offset in (-1, 0):  # a range that began yesterday evening, or today
        start = at(offset, start_text)
        end = at(offset, end_text)
        if end <= start:
            end += timedelta(days=1)
        if start <= local < end:
            return int(end.timestamp() * 1000)
    return None


@dataclass
class _Unit:
    """One send: a single message or a digest."""

    delivery_id: int
    channel: str
    messages: list[AlertMessage]
    member_ids: list[int] = field(default_factory=list)


@dataclass
class DispatchResult:
    sent: int = 0  # sends that succeeded (a digest counts once)
    failed: int = 0  # sends that failed this round (to be retried or given up)
    messages: int = 0  # messages delivered, digests counted by their items
    errors: list[str] = field(default_factory=list)


def message_for(delivery: AlertDelivery, alert: Alert | None, station_name: str | None, settings: Settings,
                now_ms: int) -> AlertMessage:
    if alert is None:
        return AlertMessage(kind="test", rule="test", severity=delivery.severity, title="测试消息：告警通道工作正常",
                            detail=f"这是来自 vms 的测试消息（通道 {delivery.channel}）。收到即表示配置正确。",
                            station_id=None, station_name=None, town=None, since_ms=delivery.created_ms,
                            at_ms=now_ms, local_time=local_text(now_ms, settings.tz), alert_id=None)
    detail = alert.detail
    if delivery.kind == "reminder":
        detail = f"（提醒：告警仍未恢复，已持续 {(now_ms - alert.since_ms) // 60_000} 分钟，请处理或在控制台确认）" + (
            f" {detail}" if detail else "")
    elif delivery.kind == "resolved" and alert.resolved_ms is not None:
        lasted = (alert.resolved_ms - alert.since_ms) // 60_000
        detail = f"已于 {local_text(alert.resolved_ms, settings.tz)} 恢复，持续 {lasted} 分钟。"
    return AlertMessage(kind=delivery.kind, rule=alert.rule, severity=alert.severity, title=alert.title, detail=detail,
                        station_id=alert.station_id, station_name=station_name, town=alert.town,
                        since_ms=alert.since_ms, at_ms=now_ms, local_time=local_text(now_ms, settings.tz),
                        alert_id=alert.id)


class Dispatcher:
    """Sends what is due. Keeps each channel's send times of the last minute (its rate budget)."""

    def __init__(self, settings: Settings, channels: dict[str, Channel], clock: Clock) -> None:
        self.settings = settings
        self.channels = channels
        self.clock = clock
        # Each channel's sends in the last minute, on the monotonic clock (a wall-clock step must neither
        # free nor freeze a robot's budget). The database's record of attempts (last_attempt_ms) adds
        # what other processes sent: `vms alerts test`, the API's test, another server.
        self.sends: dict[str, deque[float]] = {}

    def _window(self, name: str) -> deque[float]:
        window = self.sends.setdefault(name, deque())
        now = self.clock.monotonic()
        while window and window[0] <= now - RATE_WINDOW_MS / 1000:
            window.popleft()
        return window

    def budget(self, s: Session, channel: AlertChannelSettings, now_ms: int) -> int:
        elsewhere = recent_attempts(s, channel.name, now_ms)
        return channel.max_per_minute - max(len(self._window(channel.name)), elsewhere)

    def note_send(self, name: str) -> None:
        self.sends.setdefault(name, deque()).append(self.clock.monotonic())

    def run(self, database: Database, now_ms: int, keep_going: Callable[[], bool] | None = None) -> DispatchResult:
        """Send what is due. `keep_going` is asked before each send after the first (the round's lease:
        a round that ran long must not send what another server has taken over)."""
        with database.session() as s:
            units = self._pick(s, now_ms)
        result = DispatchResult()
        outcomes: list[tuple[_Unit, SendResult, int]] = []
        for unit in units:
            channel = self.channels[unit.channel]
            # Counted when it really goes: a slow channel before it may have taken most of the minute.
            if len(self._window(unit.channel)) >= channel.settings.max_per_minute:
                continue
            if outcomes and keep_going is not None and not keep_going():
                break
            self.note_send(unit.channel)
            sent_at = self.clock.now_ms()
            try:
                res = channel.send(unit.messages, unit.delivery_id)
            except Exception as exc:  # noqa: BLE001 - a channel's bug must not stop the others
                log.exception("alert channel %s failed unexpectedly", unit.channel)
                res = SendResult(ok=False, error=f"{type(exc).__name__}")
            outcomes.append((unit, res, sent_at))
        if outcomes:
            with database.session() as s:
                for unit, res, sent_at in outcomes:
                    self._record(s, unit, res, sent_at, result)
        return result

    # ------------------------------------------------------------ picking
    def _pick(self, s: Session, now_ms: int) -> list[_Unit]:
        units: list[_Unit] = []
        # Messages for a channel taken out of the settings will never be sent: say so, don't leave them queued.
        s.execute(update(AlertDelivery).where(
            AlertDelivery.state == DeliveryState.QUEUED, AlertDelivery.channel.not_in(list(self.channels)),
            AlertDelivery.kind != "test").values(state=DeliveryState.DROPPED, last_error="channel not configured"))
        for ch in self.settings.alerts.all_channels():
            if ch.name not in self.channels:
                continue
            due = list(s.scalars(select(AlertDelivery).where(
                AlertDelivery.channel == ch.name, AlertDelivery.state == DeliveryState.QUEUED,
                AlertDelivery.next_attempt_ms <= now_ms).order_by(AlertDelivery.id).limit(DIGEST_MAX_ITEMS * 2)))
            if not due:
                continue
            quiet_end = quiet_until(ch, now_ms, self.settings)
            if quiet_end is not None:
                waiting = [d for d in due if severity_rank(d.severity) < severity_rank(ch.quiet_min_severity)]
                for d in waiting:
                    d.next_attempt_ms = quiet_end
                due = [d for d in due if d not in waiting]
            budget = self.budget(s, ch, now_ms)
            if not due or budget <= 0:
                continue
            digests = [d for d in due if d.kind == "digest"]
            singles = [d for d in due if d.kind != "digest"]
            if len(singles) >= ch.digest_threshold or len(singles) + len(digests) > budget:
                if len(singles) > 1:
                    digest = AlertDelivery(alert_id=None, channel=ch.name, kind="digest",
                                           severity=max((d.severity for d in singles), key=severity_rank),
                                           state=DeliveryState.QUEUED, attempts=0, created_ms=now_ms,
                                           next_attempt_ms=now_ms, items=0)
                    s.add(digest)
                    s.flush()
                    members = singles[:DIGEST_MAX_ITEMS]
                    for d in members:
                        d.state = DeliveryState.BATCHED
                        d.digest_id = digest.id
                    digest.items = len(members)
                    digests.append(digest)
                    singles = []
            for d in (digests + singles)[:budget]:
                unit = self._unit(s, d, now_ms)
                if unit is not None:
                    units.append(unit)
        return units

    def _unit(self, s: Session, d: AlertDelivery, now_ms: int) -> _Unit | None:
        if d.kind == "digest":
            # What it still carries: a reminder acknowledged meanwhile was taken out (dropped).
            members = list(s.scalars(select(AlertDelivery).where(
                AlertDelivery.digest_id == d.id, AlertDelivery.state == DeliveryState.BATCHED)
                .order_by(AlertDelivery.id)))
            if not members:
                d.state = DeliveryState.DROPPED
                d.last_error = "nothing left to send"
                return None
        else:
            members = [d]
        alert_ids = {m.alert_id for m in members if m.alert_id is not None}
        alerts = {a.id: a for a in s.scalars(select(Alert).where(Alert.id.in_(alert_ids)))} if alert_ids else {}
        station_ids = {a.station_id for a in alerts.values() if a.station_id}
        names: dict[str, str] = {}
        if station_ids:
            names = {sid: name for sid, name in s.execute(select(Station.id, Station.name)
                                                          .where(Station.id.in_(station_ids)))}
        messages = []
        for m in members:
            alert = alerts.get(m.alert_id) if m.alert_id is not None else None
            messages.append(message_for(m, alert, names.get(alert.station_id) if alert and alert.station_id else None,
                                        self.settings, now_ms))
        return _Unit(d.id, d.channel, messages, [m.id for m in members] if d.kind == "digest" else [])

    # ------------------------------------------------------------ outcomes
    def _record(self, s: Session, unit: _Unit, res: SendResult, now_ms: int, result: DispatchResult) -> None:
        d = s.get(AlertDelivery, unit.delivery_id)
        if d is None:
            return
        d.attempts += 1
        d.last_attempt_ms = now_ms
        metrics.MESSAGES.labels(unit.channel, "ok" if res.ok else "failed").inc()
        if res.ok:
            d.state = DeliveryState.SENT
            d.sent_ms = now_ms
            d.last_error = None
            result.sent += 1
            result.messages += len(unit.messages)
            return
        result.failed += 1
        error = (res.error or "unknown error")[:500]
        result.errors.append(f"{unit.channel}: {error}")
        d.last_error = error
        too_old = now_ms - d.created_ms > self.settings.alerts.retry_max_hours * 3_600_000
        if res.permanent or too_old:
            d.state = DeliveryState.FAILED
            for member in unit.member_ids:
                m = s.get(AlertDelivery, member)
                if m is not None:
                    m.state = DeliveryState.FAILED
                    m.last_error = error
            log.error("alert message %d to %s given up: %s", d.id, unit.channel, error)
        else:
            d.next_attempt_ms = now_ms + int(retry_wait_s(d.attempts, res.retry_after_s) * 1000)
            log.warning("alert message %d to %s failed (attempt %d, next in %.0f s): %s", d.id, unit.channel,
                        d.attempts, (d.next_attempt_ms - now_ms) / 1000, error)


def recent_attempts(s: Session, channel: str, now_ms: int) -> int:
    """Sends to a channel in the minute before now, by any process (alert_deliveries.last_attempt_ms)."""
    return s.scalar(select(func.count()).select_from(AlertDelivery).where(
        AlertDelivery.channel == channel, AlertDelivery.last_attempt_ms > now_ms - RATE_WINDOW_MS,
        AlertDelivery.last_attempt_ms <= now_ms)) or 0


def send_test(database: Database, settings: Settings, channel: Channel, now_ms: int) -> tuple[int, SendResult]:
    """Send a test message through one channel now, recording it like any delivery. It counts against the
    robot's per-minute budget like every send, and is refused when the minute's budget is spent."""
    with database.session() as s:
        if recent_attempts(s, channel.name, now_ms) >= channel.settings.max_per_minute:
            return 0, SendResult(ok=False, error=f"通道 {channel.name} 一分钟内已发送 "
                                                 f"{channel.settings.max_per_minute} 条，稍后再试", retry_after_s=60)
        d = AlertDelivery(alert_id=None, channel=channel.name, kind="test", severity="info",
                          state=DeliveryState.QUEUED, attempts=0, created_ms=now_ms, last_attempt_ms=now_ms,
                          next_attempt_ms=now_ms + 10 * 365 * 86_400_000, items=1)  # never picked by a round
        s.add(d)
        s.flush()
        delivery_id = d.id
        message = message_for(d, None, None, settings, now_ms)
    try:
        res = channel.send([message], delivery_id)
    except Exception as exc:  # noqa: BLE001
        res = SendResult(ok=False, error=type(exc).__name__)
    with database.session() as s:
        d2 = s.get(AlertDelivery, delivery_id)
        if d2 is not None:
            d2.attempts = 1
            d2.state = DeliveryState.SENT if res.ok else DeliveryState.FAILED
            d2.sent_ms = now_ms if res.ok else None
            d2.last_error = None if res.ok else (res.error or "unknown error")[:500]
    return delivery_id, res
