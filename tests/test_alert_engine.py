"""The alert rules and state machine with a simulated clock (issue 20): grace, one recovery, reminders,
acknowledge, maintenance, digests under the robots' rate limit, retries, quiet hours, the database down.

The channel here is a recorder of what it was asked to send (the HTTP channels and their robot-like
receivers are tested in test_alert_channels.py, the whole chain with real processes in test_alert_serve.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, select, update

from vms.alerts.engine import acknowledge, mute
from vms.alerts.jobs import AlertService
from vms.alerts.messages import AlertMessage, SendResult
from vms.core.clock import SimulatedClock
from vms.core.settings import AlertChannelSettings, Settings
from vms.db.engine import Database
from vms.db.models import (
    Alert,
    AlertDelivery,
    AlertMaintenance,
    AuditMonthly,
    CameraStatus,
    Fault,
    OnlineInterval,
    PurgeLog,
    Station,
    StationState,
    SystemEvent,
)
from vms.recording.volumes import VolumeSet

TZ = ZoneInfo("Asia/Shanghai")


class RecordingChannel:
    """Takes what a robot would be sent; can be told to fail like a receiver that is down."""

    def __init__(self, settings: AlertChannelSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.type = settings.type
        self.sends: list[list[AlertMessage]] = []
        self.down = False
        self.attempts = 0

    def send(self, messages: Sequence[AlertMessage], delivery_id: int) -> SendResult:
        self.attempts += 1
        if self.down:
            return SendResult(ok=False, error="ConnectError: connection refused")
        self.sends.append(list(messages))
        return SendResult(ok=True)

    def describe(self) -> dict:
        return {"name": self.name, "type": self.type}

    def messages(self, kind: str | None = None) -> list[AlertMessage]:
        return [m for batch in self.sends for m in batch if kind is None or m.kind == kind]


def local_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp() * 1000)


@pytest.fixture
def alert_settings(settings: Settings) -> Settings:
    data = settings.model_dump()
    data["alerts"] = {
        "offline_grace_seconds": 300, "evaluate_seconds": 15, "reminder_minutes": [30, 60],
        "disk_min_free_percent": 0,
        "channels": [{"name": "county", "type": "webhook", "url": "http://127.0.0.1:9/hook", "digest_threshold": 4}],
    }
    data["storage"]["volumes"][0]["min_free_bytes"] = 0
    data["storage"]["volumes"][0]["critical_free_bytes"] = 0
    s = Settings.model_validate(data)
    VolumeSet(s.storage.volumes).mark("main")
    return s


class Rig:
    """An alert service over the catalogue's 139 stations, their cameras reported by `pulse`."""

    def __init__(self, settings: Settings, db: Database, clock: SimulatedClock) -> None:
        self.settings, self.db, self.clock = settings, db, clock
        self.channel = RecordingChannel(settings.alerts.all_channels()[0])
        self.service = AlertService(settings, db, clock, channels={self.channel.name: self.channel})
        with db.session() as s:
            self.station_ids = list(s.scalars(select(Station.id).order_by(Station.id)))
        self.down: set[str] = set()

    def pulse(self) -> None:
        """Every camera not in `down` reports streaming with a frame just recorded (as the workers do)."""
        now = self.clock.now_ms()
        with self.db.session() as s:
            known = set(s.scalars(select(CameraStatus.station_id)))
            for sid in self.station_ids:
                if sid not in known:
                    s.add(CameraStatus(station_id=sid, node="n1", state="streaming", reconnects=0,
                                       segments_written=0, bytes_written=0, last_packet_ms=now, updated_ms=now))
            s.execute(update(CameraStatus).where(CameraStatus.station_id.not_in(self.down))
                      .values(state="streaming", last_packet_ms=now, updated_ms=now))

    def run(self, seconds: float, step: float = 15) -> None:
        """Time passes; the alert round runs every `step` seconds."""
        t = 0.0
        while t < seconds:
            self.clock.advance(step)
            self.pulse()  # (the workers report every few seconds: fresh at every round)
            self.service.tick()
            t += step

    def alerts(self, **where) -> list[Alert]:
        with self.db.session() as s:
            q = select(Alert).order_by(Alert.id)
            for k, v in where.items():
                q = q.where(getattr(Alert, k) == v)
            rows = list(s.scalars(q))
            s.expunge_all()
            return rows


@pytest.fixture
def rig(alert_settings, db, clock) -> Rig:
    clock.set(local_ms("2026-12-07T10:00:00"))
    r = Rig(alert_settings, db, clock)
    r.run(60)
    return r


def test_a_stopped_camera_alerts_once_after_the_grace_and_recovers_once(rig: Rig):
    sid = rig.station_ids[0]
    rig.down = {sid}
    rig.run(4 * 60)  # under the 300 s grace: nothing
    assert rig.channel.sends == []
    rig.run(90)
    firing = rig.channel.messages("firing")
    assert len(firing) == 1 and firing[0].station_id == sid and firing[0].rule == "camera_offline"
    assert "离线" in firing[0].title and firing[0].local_time.startswith("2026-12-07 10:")
    rig.run(10 * 60)  # still down, before the first reminder (30 min): nothing more
    assert len(rig.channel.messages()) == 1
    rig.down = set()
    rig.run(60)
    resolved = rig.channel.messages("resolved")
    assert len(resolved) == 1 and resolved[0].station_id == sid
    assert [a.state for a in rig.alerts(rule="camera_offline")] == ["resolved"]
    rig.run(10 * 60)
    assert len(rig.channel.messages()) == 2  # nothing after the recovery


def test_a_blip_shorter_than_the_grace_tells_nobody(rig: Rig):
    rig.down = {rig.station_ids[1]}
    rig.run(120)
    rig.down = set()
    rig.run(600)
    assert rig.channel.sends == [] and rig.alerts() == []


@pytest.mark.slow  # hours of simulated rounds over 139 stations
def test_reminders_come_at_growing_waits_until_acknowledged(rig: Rig):
    sid = rig.station_ids[2]
    rig.down = {sid}
    rig.run(6 * 60)
    assert len(rig.channel.messages("firing")) == 1
    rig.run(31 * 60)  # first reminder after 30 min
    assert len(rig.channel.messages("reminder")) == 1
    rig.run(40 * 60)  # the next after 60 more: none yet at +40
    assert len(rig.channel.messages("reminder")) == 1
    rig.run(25 * 60)
    assert len(rig.channel.messages("reminder")) == 2
    alert = rig.alerts(rule="camera_offline")[0]
    with rig.db.session() as s:
        acknowledge(s, alert.id, "op1", "已派人检查", rig.clock.now_ms())
    rig.run(3 * 3600, step=60)  # acknowledged: no more reminders
    assert len(rig.channel.messages("reminder")) == 2
    rig.down = set()
    rig.run(60)
    assert len(rig.channel.messages("resolved")) == 1  # the recovery is still told


def test_a_muted_alert_neither_reminds_nor_recovers_aloud(rig: Rig):
    rig.down = {rig.station_ids[3]}
    rig.run(6 * 60)
    alert = rig.alerts(rule="camera_offline")[0]
    with rig.db.session() as s:
        mute(s, alert.id, "op1", 120, 24, rig.clock.now_ms())
    rig.run(60 * 60, step=60)
    rig.down = set()
    rig.run(60)
    assert [m.kind for m in rig.channel.messages()] == ["firing"]


def test_sixty_cameras_dropped_at_once_are_one_digest(rig: Rig):
    rig.down = set(rig.station_ids[:60])  # a town's power cut
    rig.run(6 * 60)
    assert len(rig.channel.sends) == 1, [len(b) for b in rig.channel.sends]
    assert len(rig.channel.sends[0]) == 60
    assert {m.station_id for m in rig.channel.sends[0]} == set(rig.station_ids[:60])
    rig.down = set()
    rig.run(60)
    assert len(rig.channel.sends) == 2 and len(rig.channel.sends[1]) == 60
    assert {m.kind for m in rig.channel.sends[1]} == {"resolved"}


def test_a_robot_never_gets_more_than_its_limit_per_minute(rig: Rig, alert_settings, db, clock):
    # Digests off (threshold 100): 40 alerts due at once must still keep to 20 a minute.
    data = alert_settings.model_dump()
    data["alerts"]["channels"][0].update({"digest_threshold": 100, "max_per_minute": 20})
    rig2 = Rig(Settings.model_validate(data), db, clock)
    rig2.down = set(rig2.station_ids[:10])
    rig2.run(6 * 60)
    # 10 singles fit the budget
    assert len(rig2.channel.sends) == 10
    # Now 30 more at once: 20 in the first minute would be the limit: they go as one digest.
    rig2.down = set(rig2.station_ids[:40])
    sends_before = len(rig2.channel.sends)
    rig2.run(6 * 60, step=5)
    times = rig2.channel.sends[sends_before:]
    assert sum(len(b) for b in times) == 30
    assert len(times) <= 20


@pytest.mark.slow  # hours of simulated rounds over 139 stations
def test_maintenance_silences_and_leaving_it_does_not_announce_what_was_already_down(rig: Rig):
    sid = rig.station_ids[4]
    now = rig.clock.now_ms()
    with rig.db.session() as s:
        s.add(AlertMaintenance(station_id=sid, town=None, start_ms=now, end_ms=now + 20 * 60_000,
                               reason="更换摄像机", created_by="op1", created_ms=now))
    rig.down = {sid}
    rig.run(30 * 60)  # down through the whole window and beyond it
    assert rig.channel.sends == []
    [alert] = rig.alerts(rule="camera_offline")
    assert alert.suppressed == "maintenance" and alert.state == "firing"
    rig.run(60 * 60, step=60)  # no reminders either
    rig.down = set()
    rig.run(60)
    assert rig.channel.sends == []  # and no recovery for what was never told


@pytest.mark.slow  # hours of simulated rounds over 139 stations
def test_a_receiver_that_is_down_gets_the_message_once_when_it_returns(rig: Rig):
    rig.channel.down = True
    rig.down = {rig.station_ids[5]}
    rig.run(6 * 60)
    rig.run(20 * 60)
    assert rig.channel.sends == [] and rig.channel.attempts >= 3  # retried, with growing waits
    attempts_in_20_min = rig.channel.attempts
    assert attempts_in_20_min < 20  # not every round: backoff
    rig.channel.down = False
    rig.run(40 * 60)
    firing = rig.channel.messages("firing")
    assert len(firing) == 1  # delivered, exactly once
    with rig.db.session() as s:
        states = [d.state for d in s.scalars(select(AlertDelivery).where(AlertDelivery.kind == "firing"))]
        errors = [d.last_error for d in s.scalars(select(AlertDelivery).where(AlertDelivery.kind == "firing"))]
    assert states == ["sent"] and errors == [None]


def test_quiet_hours_hold_minor_messages_until_morning(alert_settings, db, clock):
    data = alert_settings.model_dump()
    data["alerts"]["channels"][0].update({"quiet_hours": "22:00-07:00", "quiet_min_severity": "critical"})
    clock.set(local_ms("2026-12-07T23:00:00"))
    rig = Rig(Settings.model_validate(data), db, clock)
    rig.run(60)
    rig.down = {rig.station_ids[6]}
    rig.run(10 * 60)
    assert rig.channel.sends == [] and len(rig.alerts(rule="camera_offline")) == 1
    clock.set(local_ms("2026-12-08T06:59:00"))
    rig.run(30)
    assert rig.channel.sends == []
    rig.run(120)
    assert len(rig.channel.messages("firing")) == 1


def _closed_all_day(db: Database, sid: str, from_ms: int) -> None:
    with db.session() as s:
        s.add(StationState(station_id=sid, state="closed", start_ms=from_ms, end_ms=None))


def test_a_station_that_does_not_open_in_its_business_hours_alerts_once(alert_settings, db, clock):
    clock.set(local_ms("2026-12-07T06:00:00"))
    rig = Rig(alert_settings, db, clock)
    a, b = rig.station_ids[7], rig.station_ids[8]
    with db.session() as s:
        for sid in (a, b):
            s.get(Station, sid).business_hours = "08:00-18:00"
    midnight = local_ms("2026-12-07T00:00:00")
    _closed_all_day(db, a, midnight)
    _closed_all_day(db, b, midnight)
    clock.set(local_ms("2026-12-07T08:25:00"))
    rig.run(60)
    assert rig.channel.sends == []  # within the 30 minutes' grace
    rig.run(10 * 60)
    firing = rig.channel.messages("firing")
    assert sorted(m.station_id for m in firing) == sorted([a, b])
    assert all(m.rule == "station_not_open" and "未按时开门" in m.title for m in firing)
    # a opens at 09:00: one recovery; b never opens: its alert ends with the hours, no recovery.
    clock.set(local_ms("2026-12-07T09:00:00"))
    now = clock.now_ms()
    with db.session() as s:
        row = s.scalar(select(StationState).where(StationState.station_id == a, StationState.end_ms.is_(None)))
        row.end_ms = now
        s.add(StationState(station_id=a, state="open", start_ms=now, end_ms=None))
    rig.run(60)
    assert [m.station_id for m in rig.channel.messages("resolved")] == [a]
    clock.set(local_ms("2026-12-07T18:00:30"))
    rig.run(60)
    assert [m.station_id for m in rig.channel.messages("resolved")] == [a]
    assert [x.state for x in rig.alerts(rule="station_not_open")] == ["resolved", "resolved"]
    assert len(rig.channel.messages("reminder")) > 0  # b was reminded during the day (unacknowledged)


def test_a_station_closed_long_in_its_hours_after_opening(alert_settings, db, clock):
    clock.set(local_ms("2026-12-07T08:00:00"))
    rig = Rig(alert_settings, db, clock)
    sid = rig.station_ids[9]
    with db.session() as s:
        s.get(Station, sid).business_hours = "08:00-12:00,14:00-18:00"
        s.add(StationState(station_id=sid, state="open", start_ms=local_ms("2026-12-07T08:05:00"),
                           end_ms=local_ms("2026-12-07T10:00:00")))
        s.add(StationState(station_id=sid, state="closed", start_ms=local_ms("2026-12-07T10:00:00"), end_ms=None))
    clock.set(local_ms("2026-12-07T10:50:00"))
    rig.run(60)
    assert rig.channel.sends == []
    rig.run(15 * 60)  # 11:06: closed for over an hour
    assert [m.rule for m in rig.channel.messages("firing")] == ["station_closed_long"]
    clock.set(local_ms("2026-12-07T12:00:30"))  # lunch break: it ends quietly
    rig.run(60)
    assert rig.channel.messages("resolved") == []
    assert [x.state for x in rig.alerts(rule="station_closed_long")] == ["resolved"]


def test_a_confirmed_video_fault_alerts_after_its_grace(rig: Rig):
    sid = rig.station_ids[10]
    rig.run(6 * 60)  # past the analysis' settling after the start (faults' ends are evidence only then)
    with rig.db.session() as s:
        s.add(Fault(station_id=sid, kind="covered", severity="major", start_ms=rig.clock.now_ms(), end_ms=None))
    rig.run(60)
    assert rig.channel.sends == []  # fault_grace_seconds 120
    rig.run(90)
    [m] = rig.channel.messages("firing")
    assert m.rule == "camera_fault" and "遮挡" in m.title and m.severity == "major"
    with rig.db.session() as s:
        f = s.scalar(select(Fault).where(Fault.station_id == sid))
        f.end_ms = rig.clock.now_ms()
    rig.run(30)
    assert len(rig.channel.messages("resolved")) == 1


def test_events_are_told_once(rig: Rig):
    with rig.db.session() as s:
        s.add(SystemEvent(at_ms=rig.clock.now_ms(), kind="worker_restarted", subject="n1/worker-0",
                          detail="重启：it died"))
        s.add(SystemEvent(at_ms=rig.clock.now_ms(), kind="retention_failed", subject="run-1", detail="出错"))
    rig.run(10 * 60)
    rules = sorted(m.rule for m in rig.channel.messages())
    assert rules == ["retention_failed", "worker_restarted"]
    assert [a.state for a in rig.alerts()] == ["resolved", "resolved"]


def test_per_station_thresholds_override_the_town_and_the_default(alert_settings, db, clock):
    data = alert_settings.model_dump()
    with db.session() as s:
        st = s.scalar(select(Station).order_by(Station.id))
        sid, town = st.id, st.town
    data["alerts"]["per_town"] = {town: {"offline_grace_seconds": 900}}
    data["alerts"]["per_station"] = {sid: {"offline_grace_seconds": 60}}
    clock.set(local_ms("2026-12-07T10:00:00"))
    rig = Rig(Settings.model_validate(data), db, clock)
    rig.run(30)
    with db.session() as s:
        other = s.scalar(select(Station.id).where(Station.town == town, Station.id != sid).order_by(Station.id))
    rig.down = {sid, other}
    rig.run(120)
    assert [m.station_id for m in rig.channel.messages("firing")] == [sid]
    rig.run(14 * 60)
    assert sorted(m.station_id for m in rig.channel.messages("firing")) == sorted([sid, other])


def test_a_town_channel_gets_only_its_towns_stations(alert_settings, db, clock):
    with db.session() as s:
        towns = [t for (t,) in s.execute(select(Station.town).distinct().order_by(Station.town))]
        first_of = {t: s.scalar(select(Station.id).where(Station.town == t).order_by(Station.id)) for t in towns[:2]}
    data = alert_settings.model_dump()
    data["alerts"]["channels"][0]["towns"] = [towns[0]]
    clock.set(local_ms("2026-12-07T10:00:00"))
    rig = Rig(Settings.model_validate(data), db, clock)
    rig.run(30)
    rig.down = set(first_of.values())
    with db.session() as s:
        s.add(SystemEvent(at_ms=clock.now_ms(), kind="worker_restarted", subject="n1/worker-0", detail="x"))
    rig.run(6 * 60)
    assert [m.station_id for m in rig.channel.messages()] == [first_of[towns[0]]]


def test_the_database_unreachable_is_told_directly_and_recorded_when_it_returns(rig: Rig, tmp_path):
    good = rig.db
    bad = Database(f"sqlite:///{tmp_path / 'no-such-dir' / 'vms.db'}")
    rig.service.db = rig.service.lease.database = bad
    rig.run(30)
    assert rig.channel.sends == []  # within database_grace_seconds (60)
    rig.run(60)
    [m] = rig.channel.messages("firing")
    assert m.rule == "database_unreachable" and m.severity == "critical"
    rig.run(120)
    assert len(rig.channel.messages("firing")) == 1  # told once
    rig.service.db = rig.service.lease.database = good
    rig.run(30)
    assert len(rig.channel.messages("resolved")) == 1
    [alert] = rig.alerts(rule="database_unreachable")
    assert alert.state == "resolved" and alert.notified
    with good.session() as s:
        kinds = sorted(d.kind for d in s.scalars(select(AlertDelivery).where(AlertDelivery.alert_id == alert.id)))
    assert kinds == ["firing", "resolved"]


def test_a_volume_that_lost_its_marker_alerts(rig: Rig):
    marker = rig.settings.storage.volumes[0].path / ".vms-volume"
    marker.unlink()
    rig.run(6 * 60)
    [m] = rig.channel.messages("firing")
    assert m.rule == "volume_missing" and m.severity == "critical"
    marker.touch()
    rig.run(30)
    assert len(rig.channel.messages("resolved")) == 1


def test_stale_rows_cleanup_does_not_leave_firing_alerts_for_disabled_stations(rig: Rig):
    sid = rig.station_ids[11]
    rig.down = {sid}
    rig.run(6 * 60)
    assert len(rig.channel.messages("firing")) == 1
    with rig.db.session() as s:
        s.get(Station, sid).enabled = False  # taken out of service: not a camera fault any more
        s.execute(delete(CameraStatus).where(CameraStatus.station_id == sid))
    rig.run(30)
    assert [a.state for a in rig.alerts(rule="camera_offline")] == ["resolved"]
    assert rig.channel.messages("resolved") == []  # it did not come back: no recovery is told


def test_disk_low_early_evictions_and_the_monthly_audit_are_told(alert_settings, db, clock):
    data = alert_settings.model_dump()
    data["alerts"]["disk_min_free_percent"] = 100  # any real disk is "low" now
    clock.set(local_ms("2026-12-01T03:00:00"))
    rig = Rig(Settings.model_validate(data), db, clock)
    now = clock.now_ms()
    with db.session() as s:
        for sid in rig.station_ids[:3]:
            s.add(PurgeLog(at_ms=now, station_id=sid, volume="main", start_ms=now - 86_400_000, end_ms=now - 80_000_000,
                           segments=10, bytes=5 * 10**8, reason="pressure", run_id="20261201T030000-abcd"))
        s.add(PurgeLog(at_ms=now, station_id=rig.station_ids[5], volume="main", start_ms=0, end_ms=1, segments=1,
                       bytes=1, reason="expired", run_id="20261201T030000-old"))
        for i, sid in enumerate(rig.station_ids[:5]):
            s.add(AuditMonthly(station_id=sid, month="2026-11", passed=i >= 2, metrics={},
                               reasons=["开门天数不足：12 天，要求 20 天"] if i < 2 else [], computed_ms=now))
    rig.run(10 * 60)
    by_rule = {m.rule: m for m in rig.channel.messages()}
    assert set(by_rule) == {"disk_low", "early_eviction", "audit_noncompliant"}, by_rule.keys()
    assert "3 个站点" in (by_rule["early_eviction"].detail or "")
    assert by_rule["audit_noncompliant"].title.startswith("2026-11 月度考核：2 个站点不达标")
    assert len(rig.channel.messages()) == 3  # each once (events are not reminded)


def test_ended_alerts_are_forgotten_after_keep_days_and_firing_ones_never(alert_settings, db, clock):
    data = alert_settings.model_dump()
    data["alerts"]["keep_days"] = 2
    clock.set(local_ms("2026-12-07T10:00:00"))
    rig = Rig(Settings.model_validate(data), db, clock)
    rig.run(30)
    rig.down = {rig.station_ids[0]}
    rig.run(6 * 60)
    rig.down = {rig.station_ids[1]}  # the first recovers, the second goes down and stays down
    rig.run(6 * 60, step=60)
    assert [a.state for a in rig.alerts(rule="camera_offline")] == ["resolved", "firing"]
    rig.run(3 * 86400, step=3600)
    [left] = rig.alerts(rule="camera_offline")
    assert left.state == "firing" and left.station_id == rig.station_ids[1]
    with db.session() as s:
        alert_ids = {d.alert_id for d in s.scalars(select(AlertDelivery))}
    assert alert_ids <= {left.id}


@pytest.mark.slow  # hours of simulated rounds over 139 stations
def test_through_a_real_wecom_robot_down_then_back_nothing_lost_nothing_twice(alert_settings, db, clock):
    """The same chain with the real WeCom channel (HTTP, errcode checked) and a robot-like receiver on
    127.0.0.1 that refuses connections while down and enforces 20 messages a minute."""
    from tests.alert_receivers import RobotReceiver
    from vms.alerts.channels import make_channels

    with RobotReceiver("wecom", per_minute=20) as robot:
        data = alert_settings.model_dump()
        data["alerts"]["channels"] = [{"name": "wecom", "type": "wecom", "url": robot.url, "timeout_seconds": 2,
                                       "digest_threshold": 4}]
        s = Settings.model_validate(data)
        clock.set(local_ms("2026-12-07T10:00:00"))
        rig = Rig(s, db, clock)
        rig.service = AlertService(s, db, clock, channels=make_channels(s.alerts, s.tz))
        rig.run(30)
        robot.down()
        rig.down = set(rig.station_ids[:3])  # three cameras: three single messages
        rig.run(6 * 60)
        rig.run(40 * 60)  # down past the first reminder's time (30 min): reminders must not pile up
        assert robot.received == []
        robot.up()
        rig.run(10 * 60)
        contents = [m["markdown"]["content"] for m in robot.received]
        assert len(contents) == 3 and all("离线" in c and "【告警" in c for c in contents), contents
        assert sorted(sid for sid in rig.station_ids[:3] if any(sid in c for c in contents)) == \
            sorted(rig.station_ids[:3])
        with db.session() as session:
            rows = list(session.scalars(select(AlertDelivery).order_by(AlertDelivery.id)))
        assert [r.state for r in rows] == ["sent"] * 3 and all(r.attempts >= 2 for r in rows)


def test_a_camera_going_offline_does_not_end_its_stations_other_alerts(alert_settings, db, clock):
    """Not open and covered, then the camera drops: the station did not open and nobody took the cover off;
    those alerts stay firing (no false recovery), and end only when the evidence says so."""
    clock.set(local_ms("2026-12-07T06:00:00"))
    rig = Rig(alert_settings, db, clock)
    sid = rig.station_ids[12]
    with db.session() as s:
        s.get(Station, sid).business_hours = "08:00-18:00"
    _closed_all_day(db, sid, local_ms("2026-12-07T00:00:00"))
    clock.set(local_ms("2026-12-07T08:40:00"))
    with db.session() as s:
        s.add(Fault(station_id=sid, kind="covered", severity="major", start_ms=clock.now_ms(), end_ms=None))
    rig.run(5 * 60)
    assert sorted(m.rule for m in rig.channel.messages("firing")) == ["camera_fault", "station_not_open"]
    rig.down = {sid}
    rig.run(10 * 60)
    assert rig.channel.messages("resolved") == []
    assert sorted(a.rule for a in rig.alerts(state="firing")) == ["camera_fault", "camera_offline",
                                                                    "station_not_open"]
    rig.down = set()
    rig.run(60)  # back, still closed and covered: only the camera alert ends
    assert [m.rule for m in rig.channel.messages("resolved")] == ["camera_offline"]


def test_no_reminders_configured_means_none_and_the_rounds_go_on(alert_settings, db, clock):
    data = alert_settings.model_dump()
    data["alerts"]["reminder_minutes"] = []
    clock.set(local_ms("2026-12-07T10:00:00"))
    rig = Rig(Settings.model_validate(data), db, clock)
    rig.run(30)
    rig.down = {rig.station_ids[0]}
    rig.run(2 * 3600, step=60)
    rig.down = {rig.station_ids[0], rig.station_ids[1]}
    rig.run(6 * 60)
    assert [m.kind for m in rig.channel.messages()] == ["firing", "firing"]


def test_a_reconnect_that_restarts_the_analysis_is_no_recovery(rig: Rig):
    """The analysis closes its open faults when a camera reconnects and confirms them again: meanwhile the
    missing fault is no evidence that the cover came off."""
    sid = rig.station_ids[13]
    rig.run(6 * 60)
    with rig.db.session() as s:
        s.add(Fault(station_id=sid, kind="covered", severity="major", start_ms=rig.clock.now_ms(), end_ms=None))
    rig.run(3 * 60)
    assert [m.rule for m in rig.channel.messages("firing")] == ["camera_fault"]
    now = rig.clock.now_ms()
    with rig.db.session() as s:  # what vms/analysis/sink.py does on a reconnect
        s.scalar(select(Fault).where(Fault.station_id == sid)).end_ms = now
        s.add(OnlineInterval(station_id=sid, node="n1", start_ms=now, end_ms=None))
    rig.run(60)
    with rig.db.session() as s:  # confirmed again 30 s later
        s.add(Fault(station_id=sid, kind="covered", severity="major", start_ms=rig.clock.now_ms(), end_ms=None))
    rig.run(10 * 60)
    assert [m.kind for m in rig.channel.messages()] == ["firing"]  # no false recovery, no second firing
    with rig.db.session() as s:
        for f in s.scalars(select(Fault).where(Fault.station_id == sid, Fault.end_ms.is_(None))):
            f.end_ms = rig.clock.now_ms()  # really uncovered, long after the reconnect
    rig.run(60)
    assert [m.kind for m in rig.channel.messages()] == ["firing", "resolved"]


def test_a_not_open_alert_ends_silently_with_the_hours_even_when_the_camera_was_off(alert_settings, db, clock):
    clock.set(local_ms("2026-12-07T06:00:00"))
    rig = Rig(alert_settings, db, clock)
    sid = rig.station_ids[14]
    with db.session() as s:
        s.get(Station, sid).business_hours = "08:00-18:00"
    _closed_all_day(db, sid, local_ms("2026-12-07T00:00:00"))
    clock.set(local_ms("2026-12-07T08:35:00"))
    rig.run(10 * 60)
    assert [m.rule for m in rig.channel.messages("firing")] == ["station_not_open"]
    clock.set(local_ms("2026-12-07T17:00:00"))
    rig.run(60)
    rig.down = {sid}  # powered off at closing time
    rig.run(3600, step=60)
    clock.set(local_ms("2026-12-08T07:30:00"))
    rig.down = set()  # back the next morning, still closed
    rig.run(10 * 60)
    assert [m.rule for m in rig.channel.messages("resolved")] == ["camera_offline"]  # not "opened"
    [alert] = rig.alerts(rule="station_not_open")
    assert alert.state == "resolved" and "营业时间已结束" in (alert.detail or "")


def test_a_wall_clock_step_raises_no_alerts(rig: Rig):
    rig.run(6 * 60)
    for step in (3600, -3600):
        rig.clock.step_wall(step)
        rig.service.tick()  # right after the step, before the workers' next status: every row looks old
        rig.run(6 * 60)
    assert rig.channel.sends == []


def test_sends_are_counted_when_they_go_and_test_messages_count_too(alert_settings, db, clock):
    """A slow channel before a robot in the same round (an SMTP server taking 50 s) must not let the robot
    get its minute's budget twice: sends are counted when they go, not when the round began."""
    from vms.alerts.dispatch import send_test

    data = alert_settings.model_dump()
    data["alerts"]["channels"] = [
        {"name": "slow-mail", "type": "webhook", "url": "http://127.0.0.1:9/a", "digest_threshold": 2},
        {"name": "robot", "type": "webhook", "url": "http://127.0.0.1:9/b", "digest_threshold": 100,
         "max_per_minute": 20}]
    s = Settings.model_validate(data)
    clock.set(local_ms("2026-12-07T10:00:00"))
    slow, robot = (RecordingChannel(c) for c in s.alerts.all_channels())
    rig = Rig(s, db, clock)
    rig.channel = robot
    rig.service = AlertService(s, db, clock, channels={"slow-mail": slow, "robot": robot})
    rig.run(30)
    robot_at: list[float] = []
    slow_send, robot_send = slow.send, robot.send

    def slow_mail(messages, delivery_id):
        if not slow.sends:
            clock.advance(50)  # the first time only
        return slow_send(messages, delivery_id)

    def timed_robot(messages, delivery_id):
        robot_at.append(clock.monotonic())
        return robot_send(messages, delivery_id)

    slow.send = slow_mail  # type: ignore[method-assign]
    robot.send = timed_robot  # type: ignore[method-assign]
    rig.down = set(rig.station_ids[:20])
    rig.run(15)
    rig.down = set(rig.station_ids[:40])  # 20 more, due one round later
    rig.run(10 * 60)
    assert len(robot_at) >= 30  # (the robot got them, singly, over several minutes)
    assert max(sum(1 for t in robot_at if a <= t < a + 60) for a in robot_at) <= 20
    # Test messages share the budget: the 21st in a minute is refused without being sent.
    robot.send = robot_send  # type: ignore[method-assign]
    clock.advance(120)
    before = len(robot.sends)
    results = [send_test(db, rig.settings, robot, clock.now_ms())[1] for _ in range(25)]
    assert sum(r.ok for r in results) == 20 and len(robot.sends) - before == 20
    assert "稍后再试" in (results[-1].error or "")


@pytest.mark.slow  # hours of simulated rounds over 139 stations
def test_no_reminders_pile_up_behind_a_digest_that_waits(rig: Rig):
    rig.channel.down = True
    rig.down = set(rig.station_ids[:10])
    rig.run(3 * 3600, step=60)
    rig.channel.down = False
    rig.run(10 * 60)
    kinds = [sorted({m.kind for m in batch}) for batch in rig.channel.sends]
    assert kinds == [["firing"]], kinds


def test_a_worker_restarting_in_a_loop_is_told_once_an_hour(rig: Rig):
    for i in range(40):
        with rig.db.session() as s:
            s.add(SystemEvent(at_ms=rig.clock.now_ms(), kind="worker_restarted", subject="n1/worker-0",
                              detail=f"restart {i}"))
        rig.run(30)
    assert len(rig.channel.messages("firing")) <= 2  # one per clock hour it spans
