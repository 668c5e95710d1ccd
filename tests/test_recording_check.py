"""`vms recordings check [--repair]` finds and fixes every way the disk and the index can disagree;
`vms cameras status` reports health."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.ingest_support import make_clip, record_clip
from vms.db.models import CameraStatus, Segment, Station
from vms.recording.fmp4 import probe_segment
from vms.recording.volumes import VolumeSet

pytestmark = pytest.mark.slow  # vms commands as processes: not in scripts/test.sh --fast

VMS = str(Path(sys.executable).with_name("vms"))


@pytest.fixture
def cli_env(settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMS_")}
    env["VMS_DATA_DIR"] = str(settings.data_dir)
    env["VMS_STORAGE__VOLUMES"] = json.dumps([{"name": "main", "path": str(settings.storage.volumes[0].path)}])
    return env


def _check(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([VMS, "recordings", "check", "--format", "json", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_check_reports_and_repairs_every_disagreement(tmp_path, db, settings, clock, cli_env):
    segs, _ = record_clip(make_clip(tmp_path / "c.ts", 20), db, settings, clock)
    assert len(segs) == 4
    vols = VolumeSet.from_settings(settings)
    ok = _check(cli_env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"files": 4, "rows": 4, "problems": []}

    gone, torn, kept = segs[0], segs[1], segs[2]
    vols.file_path(gone.volume, gone.path).unlink()
    torn_path = vols.file_path(torn.volume, torn.path)
    with open(torn_path, "r+b") as f:
        f.truncate(torn.bytes - 700)  # a torn last fragment
    # A file the index never heard of (a crash between file and row), named as the recorder names them.
    orphan_rel = kept.path.replace(".mp4", "").rsplit("/", 1)
    orphan_rel = f"{orphan_rel[0]}/{orphan_rel[1][:-3]}{(int(orphan_rel[1][-3:]) + 7) % 1000:03d}.mp4"
    shutil.copy(vols.file_path(kept.volume, kept.path), vols.file_path(kept.volume, orphan_rel))

    report = _check(cli_env)
    assert report.returncode == 1
    problems = {(p["kind"], p["path"]) for p in json.loads(report.stdout)["problems"]}
    assert problems == {("row_without_file", gone.path), ("truncated", torn.path), ("file_without_row", orphan_rel)}
    with db.session() as s:
        assert s.scalar(select(Segment).where(Segment.path == gone.path)) is not None  # report only

    fixed = _check(cli_env, "--repair")
    assert fixed.returncode == 0, fixed.stdout
    repaired = {(p["kind"], p["path"]) for p in json.loads(fixed.stdout)["problems"] if p["repaired"]}
    assert repaired == problems, fixed.stdout  # all([]) was true: a repair that found nothing passed
    with db.session() as s:
        rows = {r.path: r for r in s.scalars(select(Segment))}
    assert gone.path not in rows
    torn_row = rows[torn.path]
    probe = probe_segment(torn_path)
    assert torn_row.bytes == torn_path.stat().st_size and torn_row.frames == probe.frames < torn.frames
    assert torn_row.duration_ms == probe.duration_ms < torn.duration_ms
    orphan = rows[orphan_rel]
    assert orphan.state == "complete" and orphan.frames == kept.frames and orphan.station_id == kept.station_id
    again = _check(cli_env)
    assert again.returncode == 0 and json.loads(again.stdout)["problems"] == []


def test_cameras_status_prints_health_without_credentials(db, cli_env):
    from vms.core.clock import SystemClock

    now = SystemClock().now_ms()
    with db.session() as s:
        s.add(CameraStatus(station_id="baihua-town", node="n1", state="streaming", fps=15.0, bitrate_bps=2.0e6,
                           codec="h264", width=1920, height=1080, last_packet_ms=now, reconnects=2,
                           audio="pcm_alaw->aac", updated_ms=now))
        s.add(CameraStatus(station_id="baihua-v01", node="n1", state="backoff", reason="auth_failed",
                           detail="rtsp://admin:hunter2@10.0.0.5/ refused", updated_ms=now))
        s.add(CameraStatus(station_id="baihua-v02", node="n1", state="streaming", updated_ms=now - 3_600_000))
        # What a stop used to publish: rates over the few ms since the last status (122 fps, 18 Mbps).
        s.add(CameraStatus(station_id="baihua-v03", node="n1", state="stopped", fps=122.0, bitrate_bps=1.8e7,
                           updated_ms=now))
        s.get(Station, "baihua-v04").enabled = False
    out = subprocess.run([VMS, "cameras", "status", "--format", "json"], env=cli_env, capture_output=True,
                         text=True, check=True)
    rows = {r["id"]: r for r in json.loads(out.stdout)}
    assert len(rows) == 139
    assert rows["baihua-town"]["state"] == "streaming" and rows["baihua-town"]["fps"] == 15.0
    assert rows["baihua-town"]["reconnects"] == 2 and rows["baihua-town"]["width"] == 1920
    assert rows["baihua-town"]["audio"] == "pcm_alaw->aac" and rows["baihua-v01"]["audio"] is None
    assert rows["baihua-v01"]["reason"] == "auth_failed"
    assert rows["baihua-v02"]["state"] == "offline"  # its node stopped reporting
    assert rows["baihua-v03"]["state"] == "stopped" and rows["baihua-v03"]["fps"] is None
    assert rows["baihua-v03"]["bitrate_bps"] is None
    assert rows["baihua-v04"]["state"] == "disabled"
    assert rows["gaotan-town"]["state"] == "unknown"
    assert "hunter2" not in out.stdout
    table = subprocess.run([VMS, "cameras", "status"], env=cli_env, capture_output=True, text=True, check=True)
    assert "baihua-v01" in table.stdout and "hunter2" not in table.stdout
    assert "audio=pcm_alaw->aac" in next(line for line in table.stdout.splitlines() if "baihua-town" in line)

