"""The alert round of `vms serve`: every alerts.evaluate_seconds, check the rules, then send what is due.

The database being unreachable is the one condition the rules cannot see (they read the database): the
round itself notices it. Past alerts.database_grace_seconds it tells every channel that takes the
server's own alerts directly (nothing can be queued), and once the database answers again it writes
that alert and its deliveries, and queues the recovery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from vms.alerts import metrics
from vms.alerts.dispatch import Dispatcher, DispatchResult
from vms.alerts.engine import AlertEngine, RoundResult, queue_message, routes_to
from vms.alerts.messages import AlertMessage, SendResult
from vms.alerts.rules import local_text
from vms.core.clock import Clock
from vms.core.settings import Settings
from vms.db.engine import Database, rows_matched
from vms.db.models import Alert, AlertDelivery, AlertMaintenance, AlertState, DeliveryState, SystemEvent
from vms.retention.locks import JobLease

log = logging.getLogger("vms.alerts")
JOB_ID = "alerts"
LEASE_NAME = "alerts"
PRUNE_EVERY_MS = 3_600_000
CLOCK_STEP_S = 30  # the wall clock moved this much more (or less) than the monotonic one between rounds


@dataclass
class _DatabaseOutage:
    since_ms: int
    told_ms: int | None = None
    results: dict[str, SendResult] | None = None


class AlertService:
    def __init__(self, settings: Settings, database: Database, clock: Clock, channels: dict | None = None) -> None:
        self.settings = settings
        self.db = database
        self.clock = clock
        if channels is None:
            from vms.alerts.channels import make_channels

            channels = make_channels(settings.alerts, settings.tz)
        self.channels = channels
        self.engine = AlertEngine(settings, clock.now_ms())
        self.dispatcher = Dispatcher(settings, self.channels, clock)
        self.outage: _DatabaseOutage | None = None
        self.pruned_ms = 0
        self._last_clocks: tuple[int, float] | None = None
        # Renewed before each send: a round slowed by timing-out receivers keeps it.
        lease_ms = max(120_000, int(settings.alerts.evaluate_seconds * 4000))
        self.lease = JobLease(database, LEASE_NAME, clock, lease_ms=lease_ms)

    def tick(self) -> tuple[RoundResult | None, DispatchResult | None]:
        now = self.clock.now_ms()
        mono = self.clock.monotonic()
        stepped = self._clock_stepped(now, mono)
        try:
            if not self.lease.acquire():
                return None, None  # another server sharing this database runs the alerts
            if self.outage is not None:
                self._outage_over(now)
            if stepped:
                # The wall clock jumped (NTP, an operator): every status row now looks older (or newer) than
                # it is. Count downtime afresh from now, as after a start, and judge nothing this round.
                self.engine.started_ms = now
                self.engine.first_seen.clear()
                round_result = RoundResult()
            else:
                with self.db.session() as s:
                    round_result = self.engine.evaluate(s, now)
            sent = self.dispatcher.run(self.db, now, keep_going=self.lease.renew)
            log.debug("alert round: raised %d, resolved %d, reminders %d, sent %d, failed %d",
                      len(round_result.raised), len(round_result.resolved), round_result.reminders, sent.sent,
                      sent.failed)
            if now - self.pruned_ms >= PRUNE_EVERY_MS:
                self.prune(now)
            metrics.LAST_ROUND.set(self.clock.now_ms() / 1000)
            return round_result, sent
        except (OperationalError, InterfaceError) as exc:
            # Only the database being out of reach; any other error is a bug, logged by the job.
            metrics.ROUNDS_FAILED.inc()
            self._database_down(now, exc)
            return None, None
        except Exception:
            metrics.ROUNDS_FAILED.inc()
            raise

    def _clock_stepped(self, now: int, mono: float) -> bool:
        last = self._last_clocks
        self._last_clocks = (now, mono)
        if last is None:
            return False
        drift_s = (now - last[0]) / 1000 - (mono - last[1])
        if abs(drift_s) > CLOCK_STEP_S:
            log.warning("alerts: the wall clock stepped by %+.0f s; downtime is counted afresh from now", drift_s)
            return True
        return False

    def prune(self, now: int) -> int:
        """Forget alerts ended more than alerts.keep_days ago, with their messages (and old test messages
        and digests): the tables stay the size of a year of alerts, not of the server's life."""
        cutoff = now - int(self.settings.alerts.keep_days * 86_400_000)
        with self.db.session() as s:
            old = select(Alert.id).where(Alert.state == AlertState.RESOLVED, Alert.resolved_ms < cutoff)
            s.execute(delete(AlertDelivery).where(AlertDelivery.alert_id.in_(old)))
            s.execute(delete(AlertDelivery).where(AlertDelivery.alert_id.is_(None), AlertDelivery.created_ms < cutoff,
                                                  AlertDelivery.state != DeliveryState.QUEUED))
            n = rows_matched(s.execute(delete(Alert).where(Alert.state == AlertState.RESOLVED,
                                                           Alert.resolved_ms < cutoff)))
            s.execute(delete(SystemEvent).where(SystemEvent.at_ms < cutoff))
            s.execute(delete(AlertMaintenance).where(AlertMaintenance.end_ms < cutoff))
            # A test message left queued by a crash between its send and its record: not worth a year.
            s.execute(update(AlertDelivery).where(
                AlertDelivery.kind == "test", AlertDelivery.state == DeliveryState.QUEUED,
                AlertDelivery.created_ms < now - 86_400_000).values(state=DeliveryState.FAILED,
                                                                    last_error="outcome unknown"))
            metrics.FIRING.set(s.scalar(select(func.count()).select_from(Alert).where(
                Alert.state == AlertState.FIRING)) or 0)
        self.pruned_ms = now
        return n

    # ------------------------------------------------------------ the database itself
    def _database_down(self, now: int, exc: Exception) -> None:
        if self.outage is None:
            self.outage = _DatabaseOutage(since_ms=now)
            log.error("alerts: the database is unreachable (%s)", type(exc).__name__)
        outage = self.outage
        grace_ms = int(self.settings.alerts.database_grace_seconds * 1000)
        if outage.told_ms is not None or now - outage.since_ms < grace_ms:
            return
        if "database_unreachable" in self.settings.alerts.disabled_rules:
            outage.told_ms = now
            return
        message = AlertMessage(kind="firing", rule="database_unreachable", severity="critical",
                               title="vms 数据库无法连接",
                               detail=f"自 {local_text(outage.since_ms, self.settings.tz)} 起无法连接数据库："
                                      "录像继续写入磁盘，索引待数据库恢复后补写；状态、回放与告警记录暂不可用。",
                               station_id=None, station_name=None, town=None, since_ms=outage.since_ms,
                               at_ms=now, local_time=local_text(now, self.settings.tz))
        outage.results = {}
        for ch in self.settings.alerts.all_channels():
            channel = self.channels.get(ch.name)
            if channel is None or not routes_to(ch, "critical", None):
                continue
            self.dispatcher.note_send(ch.name)
            try:
                outage.results[ch.name] = channel.send([message], 0)
            except Exception as err:  # noqa: BLE001
                outage.results[ch.name] = SendResult(ok=False, error=type(err).__name__)
        outage.told_ms = now
        log.critical("alerts: database unreachable for %d s; told %d channels directly",
                     (now - outage.since_ms) // 1000, sum(r.ok for r in outage.results.values()))

    def _outage_over(self, now: int) -> None:
        """The database answers again: record the outage's alert (if it was told) and queue the recovery."""
        outage = self.outage
        assert outage is not None
        if outage.told_ms is not None and outage.results is not None:
            with self.db.session() as s:
                alert = Alert(key=f"database_unreachable:{outage.since_ms}", rule="database_unreachable",
                              severity="critical", station_id=None, town=None, title="vms 数据库无法连接",
                              detail=f"数据库自 {local_text(outage.since_ms, self.settings.tz)} 起无法连接，"
                                     f"{local_text(now, self.settings.tz)} 恢复。",
                              state=AlertState.RESOLVED, since_ms=outage.since_ms, fired_ms=outage.told_ms,
                              resolved_ms=now, one_shot=False, notified=True, reminders=0, updated_ms=now)
                s.add(alert)
                s.flush()
                for name, res in outage.results.items():
                    s.add(AlertDelivery(alert_id=alert.id, channel=name, kind="firing", severity="critical",
                                        state=DeliveryState.SENT if res.ok else DeliveryState.FAILED,
                                        attempts=1, created_ms=outage.told_ms, next_attempt_ms=outage.told_ms,
                                        sent_ms=outage.told_ms if res.ok else None,
                                        last_error=None if res.ok else res.error, items=1))
                queue_message(s, alert, "resolved", self.settings.alerts.all_channels(), now)
            log.warning("alerts: the database is reachable again")
        self.outage = None


def register_alert_jobs(scheduler, settings: Settings, database: Database, clock: Clock) -> AlertService | None:
    if not settings.alerts.enabled:
        return None
    service = AlertService(settings, database, clock)
    if not service.channels:
        log.info("alerts: no channel configured (alerts.webhook_url or alerts.channels); alerts are recorded only")

    def run() -> None:
        try:
            service.tick()
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("alert round failed")

    scheduler.add_job(run, "interval", seconds=settings.alerts.evaluate_seconds, id=JOB_ID, name="alerts",
                      max_instances=1, coalesce=True, replace_existing=True)
    return service

