"""The API of a real `vms serve` process recording simulated cameras: login, list, snapshot, timeline,
playback of a range, export, the access log, role limits and 401/403 paths."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime

import av
import cv2
import httpx
import numpy as np
import pytest

from tests.serve_support import PASSWORD, running_serve

pytestmark = pytest.mark.slow  # a real vms serve recording the RTSP simulator: not in scripts/test.sh --fast


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running_serve(tmp_path_factory.mktemp("api-serve"), cameras=2, footage_seconds=12) as s:
        yield s


def _client(srv, user: str) -> httpx.Client:
    c = httpx.Client(base_url=srv["base"], timeout=60)
    r = c.post("/api/auth/login", json={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    c.headers["Authorization"] = f"Bearer {r.json()['token']}"
    return c


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_unauthenticated_requests_are_refused_except_health(srv):
    assert httpx.get(f"{srv['base']}/api/health").status_code == 200
    for path in ("/api/stations", f"/api/stations/{srv['stations'][0]}/snapshot.jpg", "/api/access-log", "/metrics"):
        assert httpx.get(srv["base"] + path).status_code == 401, path
    bad = httpx.post(f"{srv['base']}/api/auth/login", json={"username": "wang-admin", "password": "wrong"})
    assert bad.status_code == 401


def test_list_snapshot_timeline_playback_export_and_access_log(srv):
    admin = _client(srv, "wang-admin")
    sid = srv["stations"][0]
    stations = admin.get("/api/stations").json()["stations"]
    assert len(stations) == 139
    live = {s["id"]: s for s in stations}[sid]
    assert live["camera"]["state"] == "streaming"
    assert "***" not in str(stations) and "rtsp://" not in str(stations)

    snap = admin.get(f"/api/stations/{sid}/snapshot.jpg")
    assert snap.status_code == 200 and snap.headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(snap.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (240, 320)
    # Never older than a few seconds while streaming.
    age = time.time() - datetime.fromisoformat(snap.headers["x-frame-time"]).timestamp()
    assert age < 5, age

    now_ms = int(time.time() * 1000)
    tl = admin.get(f"/api/stations/{sid}/timeline", params={"start": _iso(now_ms - 3600_000), "end": _iso(now_ms)})
    assert tl.status_code == 200, tl.text
    spans = tl.json()["recorded"]
    assert spans, tl.json()
    rec_start, rec_end = spans[-1]
    assert rec_end - rec_start >= 8000

    start_ms, end_ms = rec_start + 2000, rec_start + 7000
    pb = admin.post(f"/api/stations/{sid}/playback",
                    json={"start": _iso(start_ms), "end": _iso(end_ms), "reason": "核查站点营业情况"})
    assert pb.status_code == 201, pb.text
    info = pb.json()
    assert info["first_ms"] <= start_ms and info["last_ms"] >= end_ms - 1000
    video = admin.get(info["url"])
    assert video.status_code == 200
    part = admin.get(info["url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    with av.open(io.BytesIO(video.content)) as c:
        vs = c.streams.video[0]
        frames = [f for f in c.decode(vs)]
        seconds = float((frames[-1].pts - frames[0].pts) * vs.time_base)
    assert seconds >= (end_ms - start_ms) / 1000 - 0.2

    no_reason = admin.post(f"/api/stations/{sid}/playback", json={"start": _iso(start_ms), "end": _iso(end_ms)})
    assert no_reason.status_code in (400, 422)
    reversed_range = admin.post(f"/api/stations/{sid}/playback",
                                json={"start": _iso(end_ms), "end": _iso(start_ms), "reason": "核查"})
    assert reversed_range.status_code in (400, 422) and "end" in reversed_range.text, reversed_range.text
    assert admin.get("/api/stations/no-such-station").status_code == 404

    ex = admin.post("/api/exports", json={"station_id": sid, "start": _iso(start_ms), "end": _iso(end_ms),
                                          "reason": "上级检查调阅"})
    assert ex.status_code == 202, ex.text
    job = ex.json()
    deadline = time.monotonic() + 60
    while job["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = admin.get(f"/api/exports/{job['id']}").json()
    assert job["state"] == "done", job
    dl = admin.get(f"/api/exports/{job['id']}/download")
    assert dl.status_code == 200
    with av.open(io.BytesIO(dl.content)) as c:
        assert sum(1 for _ in c.decode(video=0)) >= 5 * 15 - 15

    log = admin.get("/api/access-log", params={"station_id": sid}).json()["entries"]
    actions = {e["action"] for e in log}
    assert {"snapshot", "playback", "export"} <= actions
    entry = next(e for e in log if e["action"] == "playback")
    assert entry["username"] == "wang-admin" and entry["reason"] == "核查站点营业情况"
    assert entry["client"] == "127.0.0.1" and entry["start_ms"] <= start_ms


def test_role_limits(srv):
    sid = srv["stations"][0]
    now_ms = int(time.time() * 1000)
    body = {"start": _iso(now_ms - 8000), "end": _iso(now_ms - 3000), "reason": "test"}
    viewer, auditor, operator = (_client(srv, u) for u in ("chen-viewer", "zhao-auditor", "li-operator"))
    assert viewer.get("/api/stations").status_code == 200
    assert viewer.post(f"/api/stations/{sid}/playback", json=body).status_code == 403
    assert viewer.post("/api/exports", json={"station_id": sid, **body}).status_code == 403
    assert auditor.get(f"/api/stations/{sid}/snapshot.jpg").status_code == 403
    assert auditor.post(f"/api/stations/{sid}/playback", json=body).status_code == 403
    assert operator.post(f"/api/stations/{sid}/playback", json=body).status_code == 201
    assert operator.get("/api/access-log").status_code == 403
    assert operator.patch(f"/api/stations/{sid}", json={"enabled": False}).status_code == 403


def test_footage_keyframes_exports_and_database_are_closed_to_other_users(srv):
    """Files vms made were world-readable (0644, directories 0755); the database holds camera credentials."""
    admin = _client(srv, "wang-admin")
    sid = srv["stations"][0]
    now_ms = int(time.time() * 1000)
    ex = admin.post("/api/exports", json={"station_id": sid, "start": _iso(now_ms - 9000), "end": _iso(now_ms - 3000),
                                          "reason": "权限检查"})
    assert ex.status_code == 202, ex.text
    deadline = time.monotonic() + 60
    while admin.get(f"/api/exports/{ex.json()['id']}").json()["state"] != "done" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert admin.get(f"/api/stations/{sid}/snapshot.jpg").status_code == 200  # a keyframe file, fresh
    root = srv["root"]
    made = [p for top in (root / "data", root / "recordings") for p in [top, *top.rglob("*")]]
    kinds = {p.suffix for p in made if p.is_file()}
    assert {".mp4", ".kf", ".db"} <= kinds, kinds  # footage and exports, keyframes, the database
    open_to_others = [(str(p.relative_to(root)), oct(p.stat().st_mode & 0o777)) for p in made
                      if p.exists() and p.stat().st_mode & 0o007]
    assert not open_to_others, open_to_others
    assert (root / "data" / "exports" / f"{ex.json()['id']}.mp4").stat().st_mode & 0o777 == 0o640
    assert (root / "data" / "vms.db").stat().st_mode & 0o777 == 0o600
