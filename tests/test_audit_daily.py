"""Daily audit figures against synthetic index/analysis rows with known answers (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from tests.conftest import STATIONS_YAML
from vms.audit import AuditInputError, audit_days, daily_report, station_history
from vms.catalog.loader import load_catalog
from vms.catalog.store import import_catalog
from vms.core.clock import SimulatedClock, to_ms
from vms.core.settings import Settings
from vms.db.models import (
    ActivityEpisode,
    AuditDaily,
    Fault,
    Gap,
    OnlineInterval,
    PurgeLog,
    Segment,
    Station,
    StationState,
)

TZ = ZoneInfo("Asia/Shanghai")
H = 3_600_000
A, B, C = "pingshan-town", "pingshan-v01", "pingshan-v02"


def L(text: str) -> int:
    """UTC ms of a local (Asia/Shanghai) time 'YYYY-MM-DD HH:MM[:SS]'."""
    return to_ms(datetime.fromisoformat(text).replace(tzinfo=TZ))


def segments(station: str, start: int, end: int, step_ms: int = 60_000, tag: str = "n1") -> list[Segment]:
    out, t = [], start
    while t < end:
        e = min(t + step_ms, end)
        out.append(Segment(station_id=station, node=tag, volume="main", path=f"{station}/{tag}/{t}.mp4",
                           start_ms=t, end_ms=e, duration_ms=e - t, state="complete"))
        t = e
    return out


def online(station: str, start: str, end: str | None) -> OnlineInterval:
    return OnlineInterval(station_id=station, node="n1", start_ms=L(start), end_ms=end and L(end))


def state(station: str, kind: str, start: str, end: str | None) -> StationState:
    return StationState(station_id=station, state=kind, start_ms=L(start), end_ms=end and L(end))


@pytest.fixture
def audit_settings(tmp_path) -> Settings:
    return Settings.model_validate({"data_dir": str(tmp_path / "data")})


@pytest.fixture
def catalog_db(any_db):
    with any_db.session() as s:
        import_catalog(s, load_catalog(STATIONS_YAML))
        s.execute(update(Station).values(business_hours="08:00-18:00"))
    return any_db


def test_known_day_figures_on_both_databases(catalog_db, audit_settings):
    day = "2026-01-05"
    with catalog_db.session() as s:
        # A: online all day except 12:00-15:00 (3 h offline -> 87.5 %); recorded the same, with one
        # duplicated (overlapping) stretch from a second node that must not count twice.
        s.add_all([online(A, "2026-01-05 00:00", "2026-01-05 12:00"),
                   online(A, "2026-01-05 15:00", "2026-01-06 00:00")])
        s.add_all(segments(A, L("2026-01-05 00:00"), L("2026-01-05 12:00")))
        s.add_all(segments(A, L("2026-01-05 15:00"), L("2026-01-06 00:00")))
        s.add_all(segments(A, L("2026-01-05 10:00:30"), L("2026-01-05 11:00:30"), tag="n2"))
        s.add(Gap(station_id=A, node="n1", start_ms=L("2026-01-05 12:00"), end_ms=L("2026-01-05 15:00"),
                  reason="unreachable"))
        # Open 09:00-17:00, business hours 08:00-18:00 -> 8 h open, 8 h inside hours.
        s.add_all([state(A, "closed", "2026-01-05 00:00", "2026-01-05 09:00"),
                   state(A, "open", "2026-01-05 09:00", "2026-01-05 17:00"),
                   state(A, "closed", "2026-01-05 17:00", None)])
        s.add_all([ActivityEpisode(station_id=A, start_ms=L(f"2026-01-05 {h}:00"), end_ms=L(f"2026-01-05 {h}:10"))
                   for h in (10, 11, 16)])
        s.add(Fault(station_id=A, kind="covered", severity="major", start_ms=L("2026-01-05 16:00"),
                    end_ms=L("2026-01-05 16:30")))
        # B: open 06:00-20:00 -> 14 h open, 10 h inside 08:00-18:00; online all day (interval still going).
        s.add(OnlineInterval(station_id=B, node="n1", start_ms=L("2026-01-04 12:00"), end_ms=None))
        s.add_all(segments(B, L("2026-01-05 00:00"), L("2026-01-06 00:00"), step_ms=600_000))
        s.add(StationState(station_id=B, state="open", start_ms=L("2026-01-05 06:00"), end_ms=L("2026-01-05 20:00")))
    clock = SimulatedClock(L("2026-01-07 01:00"))
    with catalog_db.session() as s:
        res = audit_days(s, audit_settings, clock, [date(2026, 1, 5)])
    assert res.rows == 139
    with catalog_db.session() as s:
        rep = daily_report(s, day)
        a = next(i for i in rep["stations"] if i["station_id"] == A)
        assert a["online_ms"] == 21 * H and a["online_percent"] == 87.5
        assert a["recorded_ms"] == 21 * H and a["coverage_percent"] == 87.5
        assert a["open_ms"] == 8 * H and a["open_in_hours_ms"] == 8 * H
        assert a["first_open_ms"] == L("2026-01-05 09:00") and a["first_open"] == "09:00"
        assert a["last_close_ms"] == L("2026-01-05 17:00") and a["last_close"] == "17:00"
        assert a["activity_episodes"] == 3
        assert a["gaps_ms"] == {"unreachable": 3 * H}
        assert a["faults_ms"] == {"covered": H // 2}
        codes = {f["code"] for f in a["findings"]}
        assert codes == {"low_online", "low_coverage", "camera_fault", "gap_reasons"}
        assert any(f["message"] == "录像缺失原因：无法连接摄像机 3.0 小时" for f in a["findings"])
        assert any("87.5%" in f["message"] and "在线率" in f["message"] for f in a["findings"])
        assert any("镜头遮挡 0.5 小时" in f["message"] for f in a["findings"])

        b = next(i for i in rep["stations"] if i["station_id"] == B)
        assert b["online_ms"] == 24 * H and b["recorded_ms"] == 24 * H
        assert b["open_ms"] == 14 * H and b["open_in_hours_ms"] == 10 * H
        assert b["findings"] == []

        # A station with nothing at all still has a row, with the findings spelled out.
        c = next(i for i in rep["stations"] if i["station_id"] == C)
        assert c["recorded_ms"] == 0
        assert {"no_footage", "camera_offline"} <= {f["code"] for f in c["findings"]}
        assert any(f["message"] == "全天无录像" for f in c["findings"])
        assert rep["summary"]["stations"] == 139 and rep["summary"]["no_footage"] == 137


def test_intervals_crossing_local_midnight_split_between_days(catalog_db, audit_settings):
    with catalog_db.session() as s:
        # Local midnight is 16:00 UTC: an interval 20:00-04:00 local is 4 h on each day.
        s.add(OnlineInterval(station_id=A, node="n1", start_ms=L("2026-01-05 20:00"), end_ms=L("2026-01-06 04:00")))
        s.add(StationState(station_id=A, state="open", start_ms=L("2026-01-05 17:00"), end_ms=L("2026-01-06 09:00")))
        # One segment straddling midnight: 30 s on each side.
        s.add_all(segments(A, L("2026-01-05 23:59:30"), L("2026-01-06 00:00:30"), step_ms=60_000))
        s.add(Gap(station_id=A, node="n1", start_ms=L("2026-01-05 23:00"), end_ms=None, reason="stalled"))
    assert L("2026-01-06 00:00") % 86_400_000 == 16 * H
    clock = SimulatedClock(L("2026-01-06 12:00"))
    with catalog_db.session() as s:
        audit_days(s, audit_settings, clock, [date(2026, 1, 5), date(2026, 1, 6)])
    with catalog_db.session() as s:
        d5, d6 = station_history(s, A, "2026-01-05", "2026-01-06")
    assert d5["online_ms"] == 4 * H and d6["online_ms"] == 4 * H
    assert d5["recorded_ms"] == 30_000 and d6["recorded_ms"] == 30_000
    assert d5["open_ms"] == 7 * H and d5["open_in_hours_ms"] == H  # 17:00-18:00 inside hours
    assert d6["open_ms"] == 9 * H and d6["open_in_hours_ms"] == H  # 08:00-09:00 inside hours
    assert d5["first_open"] == "17:00" and d6["first_open"] == "00:00" and d6["last_close"] == "09:00"
    # The still-open gap is clipped to now (12:00 on the 6th), and the 6th is a partial day.
    assert d5["gaps_ms"] == {"stalled": H} and d6["gaps_ms"] == {"stalled": 12 * H}
    assert d6["partial"] and not d5["partial"]
    assert d6["online_percent"] == round(100 * 4 / 12, 1)
    assert any(f["code"] == "partial_day" and "12:00" in f["message"] for f in d6["findings"])


def test_rerun_replaces_results(catalog_db, audit_settings):
    clock = SimulatedClock(L("2026-01-07 01:00"))
    days = [date(2026, 1, 5)]
    with catalog_db.session() as s:
        audit_days(s, audit_settings, clock, days)
    with catalog_db.session() as s:
        assert daily_report(s, "2026-01-05")["stations"][0]["recorded_ms"] == 0
        s.add_all(segments(A, L("2026-01-05 08:00"), L("2026-01-05 10:00")))
    clock.advance(3600)
    with catalog_db.session() as s:
        audit_days(s, audit_settings, clock, days)
    with catalog_db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditDaily)) == 139
        a = station_history(s, A, "2026-01-05", "2026-01-05")[0]
        assert a["recorded_ms"] == 2 * H and a["computed_ms"] == clock.now_ms()


def test_purged_footage_keeps_the_earlier_measurement(catalog_db, audit_settings):
    clock = SimulatedClock(L("2026-01-06 01:00"))
    with catalog_db.session() as s:
        s.add_all(segments(A, L("2026-01-05 00:00"), L("2026-01-06 00:00"), step_ms=600_000))
    with catalog_db.session() as s:
        audit_days(s, audit_settings, clock, [date(2026, 1, 5)])
    # Retention deletes the day's footage and logs it; a later backfill must not report it missing.
    with catalog_db.session() as s:
        s.query(Segment).delete()
        s.add(PurgeLog(at_ms=clock.now_ms(), station_id=A, volume="main", start_ms=L("2026-01-05 00:00"),
                       end_ms=L("2026-01-06 00:00"), segments=144, bytes=1, reason="expired", run_id="r1"))
    clock.advance(20 * 86400)
    with catalog_db.session() as s:
        audit_days(s, audit_settings, clock, [date(2026, 1, 5)])
        a = station_history(s, A, "2026-01-05", "2026-01-05")[0]
    assert a["recorded_ms"] == 24 * H
    assert [f["code"] for f in a["findings"] if f["code"] == "footage_purged"] == ["footage_purged"]


def test_days_before_active_since_have_no_row(catalog_db, audit_settings):
    with catalog_db.session() as s:
        s.execute(update(Station).where(Station.id == A).values(active_since="2026-01-06"))
    with catalog_db.session() as s:
        audit_days(s, audit_settings, SimulatedClock(L("2026-01-08 00:00")), [date(2026, 1, 5), date(2026, 1, 6)])
        hist = station_history(s, A, "2026-01-05", "2026-01-06")
    assert hist[0] == {"day": "2026-01-05", "station_id": A, "audited": False}
    assert hist[1]["audited"] is True


def test_bad_input_is_named(db, settings, clock):
    with db.session() as s:
        with pytest.raises(AuditInputError, match="YYYY-MM-DD"):
            daily_report(s, "2026-1-5")
        with pytest.raises(AuditInputError, match="不存在"):
            daily_report(s, "2026-02-30")
        with pytest.raises(AuditInputError, match="没有镇街 '北京'"):
            daily_report(s, "2026-01-05", town="北京")
        with pytest.raises(AuditInputError, match="没有站点 'nope'"):
            station_history(s, "nope", "2026-01-01", "2026-01-02")
        with pytest.raises(AuditInputError, match="早于开始日期"):
            station_history(s, A, "2026-01-05", "2026-01-01")
        with pytest.raises(AuditInputError, match="还没有开始"):
            audit_days(s, settings, clock, [date(2026, 3, 1)])


def test_recorded_time_counts_main_stream_footage_once(catalog_db, audit_settings):
    with catalog_db.session() as s:
        s.add_all(segments(A, L("2026-01-05 08:00"), L("2026-01-05 10:00")))
        # Same node, overlapping (a restarted writer): the sum would exceed the span; merged exactly.
        s.add_all(segments(A, L("2026-01-05 09:00"), L("2026-01-05 09:30"), tag="n1-again"))
        for seg in segments(A, L("2026-01-05 10:00"), L("2026-01-05 10:30"), tag="n1-grow"):
            seg.state, seg.node = "growing", "n1"
            s.add(seg)
        for seg in segments(A, L("2026-01-05 12:00"), L("2026-01-05 13:00"), tag="del"):
            seg.state, seg.node = "deleting", "n1"  # being deleted: no longer footage
            s.add(seg)
        for seg in segments(A, L("2026-01-05 14:00"), L("2026-01-05 15:00"), tag="sub"):
            seg.stream, seg.node = "sub", "n1"  # the sub stream is not the recording
            s.add(seg)
        for seg in segments(B, L("2026-01-05 08:00"), L("2026-01-05 09:00"), tag="x"):
            seg.node = "n1"
            s.add(seg)
        s.add(Segment(station_id=B, node="n1", volume="main", path="b/dup.mp4", start_ms=L("2026-01-05 08:00"),
                      end_ms=L("2026-01-05 08:30"), state="complete"))  # same node, inside another segment
    with catalog_db.session() as s:
        audit_days(s, audit_settings, SimulatedClock(L("2026-01-06 02:00")), [date(2026, 1, 5)])
        a = station_history(s, A, "2026-01-05", "2026-01-05")[0]
        b = station_history(s, B, "2026-01-05", "2026-01-05")[0]
    assert a["recorded_ms"] == int(2.5 * H)
    assert b["recorded_ms"] == H


def test_every_gap_reason_and_fault_kind_has_chinese_text():
    from vms.analysis.detector import FAULT_KINDS
    from vms.audit.findings import FAULT_KINDS_ZH, GAP_REASONS_ZH
    from vms.recording.index import GAP_REASONS

    assert set(GAP_REASONS) <= set(GAP_REASONS_ZH)
    assert set(FAULT_KINDS) <= set(FAULT_KINDS_ZH)
