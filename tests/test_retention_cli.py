"""`vms retention` and `vms holds` from the command line, the capacity plan, and the serve jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import insert, select
from test_retention_sweep import DAY, MIN, NOW, T0, A, B, C, Footage, import_stations
from typer.testing import CliRunner

from vms.cli import app
from vms.cli import context as cli_context
from vms.core.clock import SimulatedClock
from vms.core.settings import load_settings
from vms.db.engine import Database
from vms.db.migrate import upgrade
from vms.db.models import PurgeLog, Segment
from vms.retention.jobs import PRESSURE_JOB_ID, SWEEP_JOB_ID, register_retention_jobs
from vms.retention.status import capacity_plan, footage_by_station

# The commands on 16 days of footage files per test, and two vms processes at once.
pytestmark = pytest.mark.slow  # not in scripts/test.sh --fast

REPO = Path(__file__).resolve().parents[1]
VMS = [sys.executable, "-c", "from vms.cli import main; main()"]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A configured installation in tmp_path: settings file, migrated SQLite with the catalogue, and
    16 days of hourly footage of three stations."""
    config = {
        "data_dir": str(tmp_path / "data"),
        "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings"), "min_free_bytes": 0,
                                 "critical_free_bytes": 0}]},
        "retention": {"days": 15},
    }
    (tmp_path / "vms.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    monkeypatch.setenv("VMS_CONFIG", str(tmp_path / "vms.yaml"))
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    import_stations(db)
    footage = Footage(db, {"main": tmp_path / "recordings"})
    for st in (A, B, C):
        footage.every(st, T0, NOW, 60 * MIN)
    cli_context.settings.cache_clear()
    cli_context.database.cache_clear()
    yield footage
    cli_context.database.cache_clear()
    db.dispose()


def vms(*args: str):
    cli_context.settings.cache_clear()
    cli_context.database.cache_clear()
    return CliRunner().invoke(app, list(args))


NOW_LOCAL = "2026-01-17T08:00"  # NOW in Asia/Shanghai, given without an offset


def test_run_deletes_and_summarises(site):
    dry = vms("retention", "run", "--dry-run", "--now", NOW_LOCAL)
    assert dry.exit_code == 0, dry.output
    assert "DRY RUN" in dry.output and "would delete 72 segments" in dry.output
    assert len(site.remaining()) == 3 * 16 * 24
    res = vms("retention", "run", "--now", NOW_LOCAL)
    assert res.exit_code == 0, res.output
    assert "deleted 72 segments" in res.output and "expired" in res.output and "volume main" in res.output
    assert len(site.remaining()) == 3 * 15 * 24
    as_json = vms("retention", "run", "--now", "2026-01-17T00:00:00Z", "--format", "json")
    assert as_json.exit_code == 0 and json.loads(as_json.output)["segments"] == 0


def test_run_rejects_a_bad_time(site):
    res = vms("retention", "run", "--now", "yesterday")
    assert res.exit_code == 2
    assert "invalid --now 'yesterday'" in res.output and "ISO 8601" in res.output


def test_run_exits_1_when_a_segment_cannot_be_deleted(site):
    with site.db.session() as s:  # a corrupt row pointing outside the volume must never be followed
        s.execute(insert(Segment.__table__).values(
            station_id=A, stream="main", node="x", volume="main", path="../../outside.mp4", start_ms=T0 - DAY,
            end_ms=T0 - DAY + MIN, duration_ms=MIN, bytes=1, has_audio=False, frames=0, keyframes=0,
            state="complete"))
    res = vms("retention", "run", "--now", NOW_LOCAL)
    assert res.exit_code == 1
    assert "escapes volume" in res.output
    assert len(site.remaining()) == 3 * 15 * 24 + 1  # the rest was done; that row waits, marked 'deleting'


def test_two_processes_at_once_never_double_delete(site, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([*VMS, "retention", "run", "--now", NOW_LOCAL], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    deleted = 0
    for out, _err in outs:
        assert ("deleted" in out) or ("another retention run is in progress" in out), out
        if "deleted" in out:
            deleted += int(out.split("deleted ", 1)[1].split(" ", 1)[0])
    assert deleted == 72
    with site.db.session() as s:
        assert sum(s.scalars(select(PurgeLog.segments))) == 72


def test_holds_cli_validates_and_round_trips(site):
    bad = [
        (["--station", "nowhere", "--start", "2026-01-01T08:00", "--end", "2026-01-01T09:00", "--reason", "x"],
         "没有站点 'nowhere'"),
        (["--station", A, "--start", "2026-01-01T09:00", "--end", "2026-01-01T09:00", "--reason", "x"],
         "结束时间须晚于开始时间"),
        (["--station", A, "--start", "2026-01-01T08:00", "--end", "2026-01-01T09:00", "--reason", "  "],
         "须填写保全事由"),
        (["--station", A, "--start", "1 Jan", "--end", "2026-01-01T09:00", "--reason", "x"], "invalid --start"),
        (["--station", A, "--start", "2026-01-01T08:00", "--end", "2026-01-01T09:00", "--reason", "x",
          "--expires", "2020-01-01"], "到期时间已经过去"),
    ]
    for args, message in bad:
        res = vms("holds", "add", *args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, res.output
    ok = vms("holds", "add", "--station", A, "--start", "2026-01-01T08:00", "--end", "2026-01-01T09:00",
             "--reason", "投诉 2026-014", "--by", "李四")
    assert ok.exit_code == 0, ok.output
    assert "placed on pingshan-town" in ok.output
    listed = json.loads(vms("holds", "list", "--format", "json").output)
    assert len(listed) == 1
    hold = listed[0]
    assert (hold["start_ms"], hold["end_ms"]) == (T0, T0 + 60 * MIN)  # local time without an offset
    assert (hold["reason"], hold["created_by"], hold["state"]) == ("投诉 2026-014", "李四", "active")
    # the hold keeps A's 08:00 segment through the sweep
    assert vms("retention", "run", "--now", NOW_LOCAL).exit_code == 0
    kept = sorted(start for st, start, end, _ in site.remaining().values() if st == A and end <= NOW - 15 * DAY)
    assert kept == [T0]
    assert vms("holds", "list", "--station", B).output.strip().endswith("0 holds")
    rel = vms("holds", "release", str(hold["id"]), "--by", "李四")
    assert rel.exit_code == 0 and "released" in rel.output
    assert vms("holds", "list").output.strip().endswith("0 holds")
    everything = json.loads(vms("holds", "list", "--all", "--format", "json").output)
    assert everything[0]["state"] == "released" and everything[0]["released_by"] == "李四"
    again = vms("holds", "release", str(hold["id"]))
    assert again.exit_code == 2 and "已由" in again.output and "解除" in again.output
    missing = vms("holds", "release", "9999")
    assert missing.exit_code == 2 and "保全 9999 不存在" in missing.output


def test_status_shows_footage_and_the_45_tb_rule(site):
    res = vms("retention", "status", "--format", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    by_id = {s["station_id"]: s for s in data["stations"]}
    assert len(by_id) == 139
    a = by_id[A]
    assert (a["oldest_ms"], a["newest_ms"], a["segments"], a["bytes"]) == (T0, NOW, 16 * 24, 16 * 24 * 100)
    assert a["days_covered"] == 16.0 and a["overdue"] is True  # a day older than 15 days is waiting
    assert by_id["baihua-v01"]["segments"] == 0
    cap = data["capacity"]
    assert cap["reference"].startswith("139 cameras x 2 Mbps x 15 days = 45.0 TB")
    text = vms("retention", "status", "--days", "30").output
    assert "capacity plan for 30 days" in text and "90.1 TB" in text
    assert vms("retention", "status", "--days", "0").exit_code == 2


def test_capacity_plan_uses_measured_bitrates(db, settings):
    footage = Footage(db, {"main": Path(settings.storage.volumes[0].path)})
    now = T0 + DAY
    # A: 60 s segments of 7,500,000 bytes = 1 Mbps; B: 3 Mbps; the 137 others get the median, 2 Mbps
    footage.every(A, now - 2 * 60 * MIN, now, MIN, nbytes=7_500_000 // 1000)
    with db.session() as s:
        s.execute(Segment.__table__.update().values(bytes=7_500_000))
    footage.every(B, now - 2 * 60 * MIN, now, MIN, nbytes=10)
    with db.session() as s:
        s.execute(Segment.__table__.update().where(Segment.station_id == B).values(bytes=22_500_000))
        plan = capacity_plan(s, settings, now, days=15, disk_usage=lambda _v, _r: (100 * 10**12, 50 * 10**12))
        stations = footage_by_station(s, settings, now)
    rates = {p.station_id: p for p in plan.stations}
    assert rates[A].bitrate_bps == 1_000_000 and rates[A].measured
    assert rates[B].bitrate_bps == 3_000_000
    assert rates["baihua-town"].bitrate_bps == 2_000_000 and not rates["baihua-town"].measured
    assert "median of the 2 stations" in plan.fallback_source
    assert plan.total_bytes_needed == round(139 * 2e6 / 8 * 86400 * 15)
    assert plan.volumes[0].fits is True
    assert next(f for f in stations if f.station_id == A).recorded_hours == 2.0


def test_serve_jobs_are_registered_and_sweep(db, settings, tmp_path):
    footage = Footage(db, {"main": Path(settings.storage.volumes[0].path)})
    footage.every(A, T0, NOW, 60 * MIN)
    scheduler = BackgroundScheduler(timezone="UTC")
    jobs = register_retention_jobs(scheduler, settings, db, SimulatedClock(NOW),
                                   disk_usage=lambda _v, _r: (10**12, 10**12 // 2))
    by_id = {j.id: j for j in scheduler.get_jobs()}
    assert by_id[SWEEP_JOB_ID].trigger.interval.total_seconds() == 600
    assert by_id[PRESSURE_JOB_ID].trigger.interval.total_seconds() == 60
    assert jobs.sweep().segments == 24
    assert jobs.pressure_check().segments == 0


def test_run_on_an_unmigrated_database_says_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "vms.yaml").write_text(yaml.safe_dump({"data_dir": str(tmp_path / "empty")}))
    monkeypatch.setenv("VMS_CONFIG", str(tmp_path / "vms.yaml"))
    monkeypatch.chdir(tmp_path)
    res = vms("retention", "run")
    cli_context.database.cache_clear()
    assert res.exit_code == 1
    assert "no such table" in res.output and "vms db upgrade" in res.output
