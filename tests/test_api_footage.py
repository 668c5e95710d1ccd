"""Status, snapshot, timeline, playback (Range), exports and the access log over real fMP4 segment files."""

from __future__ import annotations

import io
import json
import threading
import time

import av
import numpy as np
import pytest
from sqlalchemy import select
from test_api_helpers import add_segments, login

from vms.db.models import AccessLog, CameraStatus, Fault, Gap, Station, StationState
from vms.ingest.keyframes import keyframe_path
from vms.recording.volumes import VolumeSet

SID = "pingshan-town"


def _decode_all(data: bytes) -> tuple[int, float, list[str]]:
    with av.open(io.BytesIO(data)) as c:
        kinds = [s.type for s in c.streams]
        frames = 0
        last = 0.0
        for f in c.decode(video=0):
            frames += 1
            last = f.time
    return frames, last, kinds


def test_station_list_shows_live_status_without_credentials(api, db, clock, settings, clip):
    now = clock.now_ms()
    with db.session() as s:
        st = s.get(Station, SID)
        st.main_url = "rtsp://admin:Secr3tPass@192.168.1.20:554/Streaming/Channels/101"
        s.add(CameraStatus(station_id=SID, node="n1", state="streaming", fps=15.0, bitrate_bps=2e6, codec="h264",
                           width=1920, height=1080, updated_ms=now - 2000, last_packet_ms=now - 3000, reconnects=1,
                           audio="dropped: pcm_mulaw",
                           detail="rtsp://admin:Secr3tPass@192.168.1.20 ok"))
        s.add(CameraStatus(station_id="pingshan-v01", node="n1", state="streaming", updated_ms=now - 60_000))
        # Fresh, says streaming, but its last frame is older than stall_seconds: not streaming.
        s.add(CameraStatus(station_id="pingshan-v04", node="n1", state="streaming", fps=15.0, bitrate_bps=2e6,
                           updated_ms=now - 1000, last_packet_ms=now - 30_000))
        s.add(CameraStatus(station_id="pingshan-v05", node="n1", state="stopped", updated_ms=now - 600_000))
        s.get(Station, "pingshan-v06").enabled = False
        s.add(CameraStatus(station_id="pingshan-v06", node="n1", state="stopped", updated_ms=now - 600_000))
        s.add(CameraStatus(station_id="pingshan-v02", node="n1", state="backoff", reason="auth_failed",
                           updated_ms=now - 1000))
        s.add(StationState(station_id=SID, state="closed", start_ms=now - 7_200_000, end_ms=now - 3_600_000))
        s.add(StationState(station_id=SID, state="open", start_ms=now - 3_600_000, end_ms=None))
        s.add(Fault(station_id=SID, kind="blurred", severity="minor", start_ms=now - 600_000, end_ms=None))
        s.add(Fault(station_id=SID, kind="black", severity="major", start_ms=now - 900_000, end_ms=now - 800_000))
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, now - 20_000, 2, settings.tz,
                 state_last="growing")
    admin = login(api, "admin")
    r = api.get("/api/stations", headers=admin)
    assert r.status_code == 200 and "Secr3tPass" not in r.text
    body = r.json()
    assert body["count"] == 139
    by_id = {s["id"]: s for s in body["stations"]}
    me = by_id[SID]
    assert me["camera"]["state"] == "streaming" and me["camera"]["online"] and me["recording"]
    assert me["camera"]["audio"] == "dropped: pcm_mulaw"
    assert me["open_state"] == "open" and [f["kind"] for f in me["faults"]] == ["blurred"]
    assert by_id["pingshan-v01"]["camera"]["state"] == "offline"  # status a minute old
    stalled = by_id["pingshan-v04"]["camera"]
    assert stalled["state"] == "stalled" and not stalled["online"] and stalled["fps"] is None
    assert stalled["bitrate_bps"] is None and "30 s ago" in stalled["detail"]
    assert by_id["pingshan-v05"]["camera"]["state"] == "stopped"  # stopped on purpose, then silent: not offline
    assert by_id["pingshan-v06"]["camera"]["state"] == "disabled" and not by_id["pingshan-v06"]["enabled"]
    assert by_id["pingshan-v02"]["camera"]["reason"] == "auth_failed"
    assert by_id["pingshan-v03"]["camera"]["state"] == "unknown" and not by_id["pingshan-v03"]["recording"]
    assert api.get("/api/stations?state=backoff", headers=admin).json()["count"] == 1
    assert api.get("/api/stations?level=town", headers=admin).json()["count"] == 16
    r = api.get("/api/stations?town=火星", headers=admin)
    assert r.status_code == 400 and "没有镇街" in r.json()["detail"]
    detail = api.get(f"/api/stations/{SID}", headers=admin)
    assert detail.status_code == 200 and "Secr3tPass" not in detail.text and "***@" in detail.text
    assert api.get("/api/stations/Bad_Id!", headers=admin).status_code == 422
    assert api.get("/api/stations/no-such-station", headers=admin).status_code == 404
    r = api.patch(f"/api/stations/{SID}", headers=admin, json={"business_hours": "18:00-08:00"})
    assert r.status_code == 400 and "结束早于开始" in r.json()["detail"]


def _write_keyframe(settings, clip, wall_ms: int) -> None:
    """A keyframe file in the format KeyframeCacheObserver writes: JSON header line + Annex B access unit."""
    with av.open(str(clip)) as c:
        v = c.streams.video[0]
        bsf = av.BitStreamFilterContext("h264_mp4toannexb", v)
        pkt = next(p for p in c.demux(v) if p.is_keyframe)
        data = b"".join(bytes(p) for p in bsf.filter(pkt))
    path = keyframe_path(settings.data_dir, SID)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"wall_ms": wall_ms, "codec": "h264", "width": 160, "height": 120}).encode()
    path.write_bytes(header + b"\n" + data)


@pytest.mark.slow  # waits out the snapshot's real-time deadlines
def test_snapshot_fresh_stale_and_offline(api, db, clock, settings, clip):
    now = clock.now_ms()
    with db.session() as s:
        s.add(CameraStatus(station_id=SID, node="n1", state="streaming", updated_ms=now, last_packet_ms=now))
    view = login(api, "view")
    r = api.get(f"/api/stations/{SID}/snapshot.jpg", headers=view)
    assert r.status_code == 503 and "暂无画面" in r.json()["detail"]
    _write_keyframe(settings, clip, now - 1500)
    r = api.get(f"/api/stations/{SID}/snapshot.jpg", headers=view)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = np.frombuffer(r.content, np.uint8)
    import cv2

    decoded = cv2.imdecode(img, cv2.IMREAD_COLOR)
    assert decoded.shape == (120, 160, 3)
    clock.advance(12)
    with db.session() as s:
        cam = s.get(CameraStatus, SID)
        cam.updated_ms = cam.last_packet_ms = clock.now_ms()
    api.app.state.ctx.extras["status_cache"].invalidate()
    r = api.get(f"/api/stations/{SID}/snapshot.jpg", headers=view)
    assert r.status_code == 503 and "秒前" in r.json()["detail"]
    # The stale file made the API ask the session for fresh keyframes; one that arrives while the
    # request waits is served.
    assert (keyframe_path(settings.data_dir, SID).with_suffix(".want")).exists()
    fresh = threading.Timer(1.0, _write_keyframe, (settings, clip, clock.now_ms()))
    fresh.start()
    r = api.get(f"/api/stations/{SID}/snapshot.jpg", headers=view)
    fresh.join()
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with db.session() as s:
        cam = s.get(CameraStatus, SID)
        cam.state, cam.reason = "backoff", "timeout"
    _write_keyframe(settings, clip, clock.now_ms())
    api.app.state.ctx.extras["status_cache"].invalidate()
    r = api.get(f"/api/stations/{SID}/snapshot.jpg", headers=view)
    assert r.status_code == 503 and r.json()["detail"] == "摄像机连接失败，等待重试：暂无画面"
    with db.session() as s:
        logged = list(s.scalars(select(AccessLog).where(AccessLog.action == "snapshot")))
    assert len(logged) == 2 and {e.username for e in logged} == {"view"} and logged[0].station_id == SID


def test_timeline_merges_segments_and_lists_gaps(api, db, clock, settings, clip):
    now = clock.now_ms()
    t0 = now - 3_600_000
    # 3 joined segments, a 60 s gap, then 2 more (the last 1 s apart: still joined).
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, t0, 5, settings.tz,
                 gap_after={2: 60_000, 3: 1000})
    with db.session() as s:
        s.add(Gap(station_id=SID, node="n1", start_ms=t0 + 30_000, end_ms=t0 + 90_000, reason="timeout",
                  detail="rtsp://u:pw@cam/x timed out"))
        s.add(Gap(station_id=SID, node="n1", start_ms=now - 5000, end_ms=None, reason="refused"))
    aud = login(api, "aud")
    r = api.get(f"/api/stations/{SID}/timeline", headers=aud,
                params={"start": "2025-12-31T00:00:00Z", "end": "2026-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    tl = r.json()
    assert tl["recorded"] == [[t0, t0 + 30_000], [t0 + 90_000, t0 + 111_000]]
    assert [g["reason"] for g in tl["gaps"]] == ["timeout", "refused"] and tl["gaps"][1]["end_ms"] is None
    assert "pw@" not in r.text
    # Local time without an offset is Asia/Shanghai (UTC+8): the same instant as 00:00Z.
    r2 = api.get(f"/api/stations/{SID}/timeline", headers=aud,
                 params={"start": "2025-12-31T08:00:00", "end": "2026-01-01T08:00:00"})
    assert r2.json()["recorded"] == tl["recorded"]
    r = api.get(f"/api/stations/{SID}/timeline", headers=aud, params={"start": "2026-01-01", "end": "2025-12-31"})
    assert r.status_code == 400 and r.json()["code"] == "time_range_reversed" and "须晚于" in r.json()["detail"]
    r = api.get(f"/api/stations/{SID}/timeline", headers=aud, params={"start": "yesterday", "end": "2025-12-31"})
    assert r.status_code == 400 and r.json()["code"] == "time_invalid"
    assert r.json()["detail"].startswith("start='yesterday' 不是时间")


def test_playback_range_with_range_requests_and_access_log(api, db, clock, settings, clip):
    now = clock.now_ms()
    t0 = now - 600_000
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, t0, 4, settings.tz, gap_after={1: 120_000})
    op = login(api, "op")
    api.cookies.clear()
    body = {"start": t0 + 2500, "end": t0 + 150_000, "reason": "投诉核查 2026-001"}
    r = api.post(f"/api/stations/{SID}/playback", headers=op, json={**body, "reason": ""})
    assert r.status_code == 422  # reason required
    r = api.post(f"/api/stations/{SID}/playback", headers=op, json={k: str(v) for k, v in body.items()})
    assert r.status_code == 201, r.text
    pb = r.json()
    # Starts at the keyframe at or before the start asked for (keyframe every second; AAC priming of the
    # test clip shifts video by up to 0.13 s).
    assert t0 + 1000 <= pb["first_ms"] <= t0 + 2500
    assert len(pb["spans"]) == 2 and pb["spans"][1]["wall_start_ms"] == t0 + 140_000
    assert pb["spans"][1]["wall_end_ms"] >= t0 + 149_000
    full = api.get(pb["url"], headers=op)
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
    assert full.headers.get("accept-ranges") == "bytes"
    frames, last, kinds = _decode_all(full.content)
    assert kinds == ["video", "audio"]
    # 17.5 s of the first two segments plus 10 s of the third, at 10 fps, from the keyframe before start.
    assert 270 <= frames <= 290 and 26.5 <= last <= 29.0
    part = api.get(pb["url"], headers={**op, "Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == full.content[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(full.content)}"
    # Another operator cannot use this playback; a viewer cannot play back at all.
    assert api.get(pb["url"], headers=login(api, "op_ph")).status_code == 404
    api.cookies.clear()
    # Ranges with no footage, in the future, too long, or reversed: 4xx saying what is wrong.
    r = api.post(f"/api/stations/{SID}/playback", headers=op,
                 json={"start": "2025-11-01T10:00", "end": "2025-11-01T10:10", "reason": "old case"})
    assert r.status_code == 404 and "录像保留 15 天" in r.json()["detail"]
    r = api.post(f"/api/stations/{SID}/playback", headers=op,
                 json={"start": "2026-02-01T10:00", "end": "2026-02-01T10:10", "reason": "future"})
    assert r.status_code == 400 and "在将来" in r.json()["detail"]
    r = api.post(f"/api/stations/{SID}/playback", headers=op,
                 json={"start": "2025-12-31T10:00", "end": "2025-12-31T14:00", "reason": "too long"})
    assert r.status_code == 400 and r.json()["code"] == "time_range_too_long" and "回放范围过长" in r.json()["detail"]
    with db.session() as s:
        rows = list(s.scalars(select(AccessLog).where(AccessLog.action == "playback")))
    assert len(rows) == 1 and rows[0].reason == "投诉核查 2026-001" and rows[0].start_ms == t0 + 2500
    assert rows[0].username == "op" and rows[0].client == "testclient"


def test_export_job_to_completion_download_and_expiry(api, db, clock, settings, clip):
    now = clock.now_ms()
    t0 = now - 600_000
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, t0, 3, settings.tz)
    op = login(api, "op")
    api.cookies.clear()
    r = api.post("/api/exports", headers=op, json={"station_id": SID, "start": str(t0 + 5000),
                                                   "end": str(t0 + 25_000)})
    assert r.status_code == 422  # no reason
    r = api.post("/api/exports", headers=op, json={"station_id": SID, "start": str(t0 + 5000),
                                                   "end": str(t0 + 25_000), "reason": "公安调取 #7"})
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 30
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = api.get(f"/api/exports/{job['id']}", headers=op).json()
    assert job["state"] == "done" and job["progress"] == 1.0, job
    d = api.get(job["download_url"], headers=op)
    assert d.status_code == 200 and "attachment" in d.headers["content-disposition"]
    frames, last, _ = _decode_all(d.content)
    assert 195 <= frames <= 210  # 20 s at 10 fps, from the keyframe at or before the start
    # A ranged re-read is not a new download in the log; the first download is.
    assert api.get(job["download_url"], headers={**op, "Range": "bytes=500-"}).status_code == 206
    # Other users do not see it; admins do.
    assert api.get(f"/api/exports/{job['id']}", headers=login(api, "op_ph")).status_code == 404
    admin = login(api, "admin")
    api.cookies.clear()
    assert api.get(f"/api/exports/{job['id']}", headers=admin).status_code == 200
    log = api.get("/api/access-log", headers=admin, params={"station_id": SID}).json()["entries"]
    assert [e["action"] for e in log] == ["download", "export"]
    assert all(e["reason"] == "公安调取 #7" for e in log)
    # After the keep time the file is deleted and the download says so.
    clock.advance(settings.api.export_keep_hours * 3600 + 1)
    from vms.api.exports import expire_exports

    assert expire_exports(api.app.state.ctx) == 1
    r = api.get(job["download_url"], headers=login(api, "op"))
    assert r.status_code == 410 and "过期" in r.json()["detail"]


def test_live_view_registration_is_logged(api, db):
    view = login(api, "view")
    r = api.post(f"/api/stations/{SID}/live-views", headers=view, json={"reason": "巡查"})
    assert r.status_code == 201
    admin = login(api, "admin")
    entries = api.get("/api/access-log?action=live", headers=admin).json()["entries"]
    assert len(entries) == 1 and entries[0]["username"] == "view" and entries[0]["reason"] == "巡查"


def test_status_list_refreshes_in_the_background_and_never_keeps_a_refresh_older_than_a_change(
        api, db, clock, monkeypatch):
    from vms.api import status as status_module

    cache = status_module.status_cache(api.app.state.ctx)
    first = cache.snapshot()
    assert len(first.stations) == 139
    release, started = threading.Event(), threading.Event()
    real = status_module.compute_status

    def slow_compute(session, ctx, now=None):
        started.set()
        release.wait(10)
        return real(session, ctx, now)

    monkeypatch.setattr(status_module, "compute_status", slow_compute)
    clock.advance(cache.ttl + 1)
    # Stale: the caller gets the old list at once while the recompute runs in the background.
    assert cache.fresh() is first and started.wait(5)
    cache.invalidate()  # a change committed while that recompute was reading
    release.set()
    assert cache._lock.acquire(timeout=10)  # the background refresh has finished
    cache._lock.release()
    assert cache._snap is None  # the refresh that began before the change was not kept
    monkeypatch.setattr(status_module, "compute_status", real)
    assert cache.snapshot() is not first and cache.snapshot().computed_mono == clock.monotonic()
