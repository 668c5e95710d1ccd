"""Monthly compliance: rules, reasons, stations added mid-month or disabled, roll-ups, month boundaries,
the scheduled jobs (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import insert, select, update

from tests.test_audit_daily import H, L, catalog_db  # noqa: F401  (fixture)
from vms.audit import audit_days, audit_month, monthly_report, station_history
from vms.audit.jobs import AuditBusyError, register_audit_jobs, run_daily_audit, run_monthly_audit
from vms.audit.monthly import required_open_days
from vms.core.clock import SimulatedClock
from vms.core.settings import AuditSettings, Settings
from vms.db.models import AuditMonthly, OnlineInterval, Segment, Station, StationState
from vms.retention.locks import JobLease

OK, FEW, OFF, LATE, OFFDAY = "pingshan-town", "pingshan-v01", "pingshan-v02", "pingshan-v03", "pingshan-v04"
DISABLED = "pingshan-v05"
DAY = 86_400_000


def jan(d: int, hhmm: str = "00:00") -> int:
    return L(f"2026-01-{d:02d} {hhmm}") if d <= 31 else L(f"2026-02-{d - 31:02d} {hhmm}")


def fill(conn, station: str, first: int, last: int, open_days: set[int], skip: set[int] = frozenset()) -> None:
    """Online and recorded (10-min segments) every day first..last except `skip`; open 09:00-17:00 on open_days."""
    for d in range(first, last + 1):
        if d in skip:
            continue
        a, b = jan(d), jan(d + 1)
        conn.execute(insert(OnlineInterval), [dict(station_id=station, node="n1", start_ms=a, end_ms=b)])
        conn.execute(insert(Segment), [
            dict(station_id=station, node="n1", volume="main", path=f"{station}/{t}.mp4", start_ms=t,
                 end_ms=t + 600_000, state="complete") for t in range(a, b, 600_000)])
        if d in open_days:
            conn.execute(insert(StationState), [dict(station_id=station, state="open", start_ms=jan(d, "09:00"),
                                                     end_ms=jan(d, "17:00"))])


@pytest.fixture
def month_settings(tmp_path) -> Settings:
    return Settings.model_validate({"data_dir": str(tmp_path / "data")})


def test_month_pass_fail_with_reasons(catalog_db, month_settings):  # noqa: F811
    with catalog_db.engine.begin() as c:
        fill(c, OK, 1, 31, set(range(1, 26)))
        fill(c, FEW, 1, 31, set(range(1, 16)))
        fill(c, OFF, 1, 31, set(range(1, 26)), skip={3, 4})
        fill(c, LATE, 16, 31, set(range(16, 27)))  # 11 open days of 16 in service
        c.execute(update(Station).where(Station.id == LATE).values(active_since="2026-01-16"))
        c.execute(update(Station).where(Station.id == DISABLED).values(enabled=False))
    clock = SimulatedClock(jan(32, "02:00"))
    with catalog_db.session() as s:
        res = audit_month(s, month_settings, clock, "2026-01")
    assert res.days_audited == 31 and res.stations == 139 and res.exempt == 1
    with catalog_db.session() as s:
        rep = monthly_report(s, "2026-01", town="平山街道")
    by = {i["station_id"]: i for i in rep["stations"]}
    assert by[OK]["status"] == "pass" and by[OK]["reasons"] == [] and by[OK]["open_days"] == 25
    assert by[OK]["online_percent"] == 100.0 and by[OK]["coverage_percent"] == 100.0

    assert by[FEW]["status"] == "fail"
    assert [r["code"] for r in by[FEW]["reasons"]] == ["few_open_days"]
    assert "天数为 15 天" in by[FEW]["reasons"][0]["message"] and "要求的 20 天" in by[FEW]["reasons"][0]["message"]

    assert by[OFF]["status"] == "fail" and by[OFF]["online_percent"] == round(100 * 29 / 31, 1)
    assert {r["code"] for r in by[OFF]["reasons"]} == {"low_online", "low_coverage"}
    assert by[OFF]["no_footage_days"] == 2
    assert any("2 天全天无录像" in r["message"] for r in by[OFF]["reasons"])

    # Commissioned on the 16th: judged on its 16 days, needing 20 x 16/31 -> 11 open days.
    assert by[LATE]["active_days"] == 16 and by[LATE]["required_open_days"] == 11
    assert by[LATE]["status"] == "pass" and by[LATE]["online_percent"] == 100.0
    assert by[LATE]["open_in_hours_by_day"][:15] == [None] * 15 and by[LATE]["open_in_hours_by_day"][15] == 8.0

    assert by[DISABLED]["status"] == "exempt" and by[DISABLED]["passed"] is None
    assert by[DISABLED]["reasons"][0]["code"] == "station_disabled"

    assert by[OFFDAY]["status"] == "fail"  # no data at all
    assert by[OFFDAY]["no_footage_days"] == 31

    town = rep["towns"][0]
    assert town["town"] == "平山街道" and town["stations"] == 9 and town["exempt"] == 1
    assert town["assessed"] == 8 and town["passed"] == 2 and town["failed"] == 6
    assert rep["county"] == {k: v for k, v in town.items() if k != "town"}
    # pingshan-v03 and -v06 are poverty villages in the catalogue: v03 passes, v06 (no data) fails.
    assert rep["poverty"]["stations"] == 2 and rep["poverty"]["failing"] == ["pingshan-v06"]
    assert [i["station_id"] for i in rep["failing"]] == [FEW, OFF, OFFDAY, "pingshan-v06", "pingshan-v07",
                                                           "pingshan-v08"]

    # Re-running replaces the month (one row per station, not two).
    with catalog_db.session() as s:
        audit_month(s, month_settings, clock, "2026-01", recompute=False)
        assert len(s.scalars(select(AuditMonthly).where(AuditMonthly.month == "2026-01")).all()) == 139


def test_fraction_rule_and_pro_rata():
    full = AuditSettings()
    assert required_open_days(full, 31, 31) == 20 and required_open_days(full, 30, 30) == 20
    assert required_open_days(full, 16, 31) == 11 and required_open_days(full, 1, 31) == 1
    assert required_open_days(AuditSettings(min_open_days=31), 28, 28) == 28
    frac = AuditSettings(min_open_days_fraction=0.5)
    assert required_open_days(frac, 31, 31) == 16 and required_open_days(frac, 30, 30) == 15
    with pytest.raises(ValueError):
        AuditSettings(min_open_days_fraction=1.5)


def test_month_boundary_splits_intervals(catalog_db, month_settings):  # noqa: F811
    with catalog_db.session() as s:
        s.add(OnlineInterval(station_id=OK, node="n1", start_ms=L("2026-01-31 22:00"), end_ms=L("2026-02-01 02:00")))
        s.add(StationState(station_id=OK, state="open", start_ms=L("2026-01-31 17:00"),
                           end_ms=L("2026-02-01 09:00")))
    clock = SimulatedClock(L("2026-02-02 03:00"))
    with catalog_db.session() as s:
        audit_month(s, month_settings, clock, "2026-02")  # Feb 1 only (the 2nd has begun: partial)
        audit_days(s, month_settings, clock, [date(2026, 1, 31)])
        j31, f1 = station_history(s, OK, "2026-01-31", "2026-02-01")
        feb = monthly_report(s, "2026-02")
    assert j31["online_ms"] == 2 * H and f1["online_ms"] == 2 * H
    assert j31["open_in_hours_ms"] == H and f1["open_in_hours_ms"] == H
    ok = next(i for i in feb["stations"] if i["station_id"] == OK)
    assert ok["active_days"] == 2 and ok["partial"] and ok["days_in_month"] == 28
    assert len(feb["days"]) == 28


def test_scheduled_jobs(catalog_db, month_settings):  # noqa: F811
    sched = BackgroundScheduler(timezone="UTC")
    clock = SimulatedClock(L("2026-03-01 00:30"))
    daily, monthly = register_audit_jobs(sched, month_settings, catalog_db, clock)
    sched.start(paused=True)
    try:
        nxt_daily = daily.trigger.get_next_fire_time(None, __import__("datetime").datetime.fromtimestamp(
            clock.now_ms() / 1000, month_settings.tz))
        assert nxt_daily.strftime("%Y-%m-%d %H:%M %Z") == "2026-03-01 01:00 CST"
        nxt_month = monthly.trigger.get_next_fire_time(None, nxt_daily)
        assert nxt_month.strftime("%Y-%m-%d %H:%M") == "2026-03-01 02:00"
    finally:
        sched.shutdown(wait=False)
    # What the jobs do at those times: yesterday's day, then the previous month.
    clock.set(L("2026-03-01 01:00"))
    res = run_daily_audit(month_settings, catalog_db, clock)
    assert res.days == ["2026-02-28"]
    clock.set(L("2026-03-01 02:00"))
    m = run_monthly_audit(month_settings, catalog_db, clock)
    assert m.month == "2026-02" and m.days_audited >= 27
    # A second server cannot audit while the lease is held.
    lease = JobLease(catalog_db, "audit", clock, lease_ms=60_000)
    assert lease.acquire()
    with pytest.raises(AuditBusyError, match="another audit is running"):
        run_daily_audit(month_settings, catalog_db, clock)
    lease.release()


def test_daily_audit_on_a_shortened_schedule(catalog_db, month_settings):  # noqa: F811
    """audit.daily_every_minutes replaces the 01:00 cron by an interval (used by the soak test)."""
    settings = month_settings.model_copy(deep=True)
    settings.audit.daily_every_minutes = 0.5
    sched = BackgroundScheduler(timezone="UTC")
    clock = SimulatedClock(L("2026-03-01 00:30"))
    daily, _monthly = register_audit_jobs(sched, settings, catalog_db, clock)
    sched.start(paused=True)
    try:
        now = datetime.fromtimestamp(clock.now_ms() / 1000, settings.tz)
        first = daily.trigger.get_next_fire_time(None, now)
        second = daily.trigger.get_next_fire_time(first, first)
        assert (second - first).total_seconds() == 30
    finally:
        sched.shutdown(wait=False)
