"""The API's limits in process: request body sizes, the access log of export downloads, export and hold
limits (tests/test_api_limits_serve.py has those that need a real server)."""

from __future__ import annotations

import time

import pytest
from test_api_helpers import PASSWORD, add_segments, login

from vms.recording.volumes import VolumeSet

SID = "pingshan-town"


def test_a_body_over_the_limit_is_refused_before_it_is_read(api, settings):
    big = settings.api.max_body_bytes + 1
    r = api.post("/api/auth/login", json={"username": "op", "password": "x" * big})
    assert r.status_code == 413 and r.json()["code"] == "body_too_large" and "请求内容过大" in r.json()["detail"]
    # Refused before any handler runs: a logout whose body is too large does not log out.
    headers = login(api, "op")
    api.cookies.clear()
    r = api.post("/api/auth/logout", headers={**headers, "Content-Type": "application/octet-stream"},
                 content=b"\0" * big)
    assert r.status_code == 413
    assert api.get("/api/auth/me", headers=headers).status_code == 200


def test_a_streamed_body_is_counted_as_it_comes(api, settings):
    def chunks():
        for _ in range(64):  # 4 MB in 64 kB chunks, no Content-Length
            yield b"a" * 65536

    r = api.post("/api/auth/login", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    # A body within the limit still works.
    r = api.post("/api/auth/login", json={"username": "op", "password": PASSWORD})
    assert r.status_code == 200


def _finished_export(api, headers, start_ms: int, end_ms: int, reason: str = "公安调取 #7") -> dict:
    r = api.post("/api/exports", headers=headers, json={"station_id": SID, "start": str(start_ms),
                                                        "end": str(end_ms), "reason": reason})
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 60
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = api.get(f"/api/exports/{job['id']}", headers=headers).json()
    assert job["state"] == "done", job
    return job


def _downloads(api, admin) -> list[dict]:
    entries = api.get("/api/access-log", headers=admin, params={"action": "download"}).json()["entries"]
    return [(e["username"], e["export_id"]) for e in entries]


@pytest.mark.parametrize("first_range", ["bytes=00-", "bytes=-99999999999", "bytes=1-", "bytes= 0-", None])
def test_every_download_of_an_export_is_logged_once_per_user(api, db, clock, settings, clip, first_range):
    """Before, a row was written only when the Range header started with `bytes=0-`: `bytes=00-` or
    `bytes=-99999999999` downloaded the whole file unlogged."""
    now = clock.now_ms()
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, now - 600_000, 3, settings.tz)
    op, admin = login(api, "op"), login(api, "admin")
    api.cookies.clear()
    job = _finished_export(api, op, now - 595_000, now - 575_000)
    headers = {**op, "Range": first_range} if first_range else op
    r = api.get(job["download_url"], headers=headers)
    assert r.status_code in (200, 206) and len(r.content) >= job["bytes"] - 1
    assert _downloads(api, admin) == [("op", job["id"])]
    # The player's further requests, whatever their range, are the same download.
    for more in ("bytes=0-", "bytes=500-999", None):
        api.get(job["download_url"], headers={**op, "Range": more} if more else op)
    assert _downloads(api, admin) == [("op", job["id"])]
    # Another user's download, and another export, are logged.
    assert api.get(job["download_url"], headers={**admin, "Range": "bytes=100-"}).status_code == 206
    second = _finished_export(api, op, now - 595_000, now - 575_000)
    assert api.get(second["download_url"], headers=op).status_code == 200
    assert sorted(_downloads(api, admin)) == sorted([("op", job["id"]), ("admin", job["id"]),
                                                     ("op", second["id"])])


def test_two_download_rows_of_one_export_and_user_cannot_exist(any_db, clock):
    """Two first requests at once both find no row: the unique index keeps one, the other is not an error."""
    from sqlalchemy.exc import IntegrityError

    from vms.api.access import record_access, record_download
    from vms.api.accounts import Principal
    from vms.db.models import ExportJob

    op = Principal(user_id=1, username="op", role="operator", towns=None, kind="session", token_id=1,
                   permissions=frozenset())
    job = ExportJob(id="f" * 32, station_id=SID, start_ms=0, end_ms=1000, reason="r", username="op", state="done",
                    created_ms=0)
    with any_db.session() as s:
        record_access(s, op, "download", clock.now_ms(), "10.0.0.1", export_id=job.id)
    with pytest.raises(IntegrityError), any_db.session() as s:
        record_access(s, op, "download", clock.now_ms(), "10.0.0.1", export_id=job.id)
    with any_db.session() as s:
        assert record_download(s, op, job, clock.now_ms(), "10.0.0.1") is False
        record_access(s, op, "export", clock.now_ms(), "10.0.0.1", export_id=job.id)  # other actions: any number
        record_access(s, op, "export", clock.now_ms(), "10.0.0.1", export_id=job.id)


def _job_row(db, username: str, state: str, now: int, size: int | None = None, start_ms: int = 0) -> None:
    import uuid

    from vms.db.models import ExportJob

    with db.session() as s:
        s.add(ExportJob(id=uuid.uuid4().hex, station_id=SID, start_ms=start_ms, end_ms=start_ms + 20_000, reason="r",
                        username=username, state=state, progress=0.5, bytes=size, created_ms=now,
                        expires_ms=now + 3_600_000 if state == "done" else None))


def test_exports_in_progress_are_limited_per_user_and_in_all(api, db, clock, settings, clip):
    now = clock.now_ms()
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, now - 600_000, 3, settings.tz)
    op = login(api, "op")
    api.cookies.clear()
    body = {"station_id": SID, "start": str(now - 595_000), "end": str(now - 575_000), "reason": "投诉核查"}
    for _ in range(settings.api.export_max_active_per_user):  # (rows: a remux of these would end at once)
        _job_row(db, "op", "running", now)
    r = api.post("/api/exports", headers=op, json=body)
    assert r.status_code == 429 and r.json()["code"] == "export_busy_user", r.text
    assert "导出在进行中" in r.json()["detail"]
    for _ in range(settings.api.export_max_active - settings.api.export_max_active_per_user):
        _job_row(db, "someone", "queued", now)
    r = api.post("/api/exports", headers=login(api, "admin"), json=body)
    assert r.status_code == 429 and r.json()["code"] == "export_busy", r.text
    with db.session() as s:
        from vms.db.models import AccessLog, ExportJob

        assert s.query(ExportJob).count() == settings.api.export_max_active  # nothing was added
        assert s.query(AccessLog).count() == 0


def test_bytes_of_exports_are_limited_per_user_and_in_all_until_they_expire(api, db, clock, settings, clip):
    from vms.api.exports import estimated_bytes, expire_exports

    now = clock.now_ms()
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, now - 600_000, 3, settings.tz)
    with db.session() as s:
        estimate = estimated_bytes(s, SID, now - 595_000, now - 575_000)
    assert estimate > 10_000
    op, admin = login(api, "op"), login(api, "admin")
    api.cookies.clear()
    settings.api.export_max_bytes_per_user = int(estimate * 2.5)
    job = _finished_export(api, op, now - 595_000, now - 575_000)
    assert abs(job["bytes"] - estimate) < estimate * 0.3  # the estimate is close to what an export makes
    _finished_export(api, op, now - 595_000, now - 575_000)
    body = {"station_id": SID, "start": str(now - 595_000), "end": str(now - 575_000), "reason": "再导一次"}
    r = api.post("/api/exports", headers=op, json=body)
    assert r.status_code == 429 and r.json()["code"] == "export_quota_user", r.text
    assert "每人上限" in r.json()["detail"]
    # Another user still may, until all the exports kept pass the limit of all users together.
    settings.api.export_max_bytes = int(estimate * 3.5)
    assert api.post("/api/exports", headers=admin, json=body).status_code == 202
    r = api.post("/api/exports", headers=admin, json=body)
    assert r.status_code == 429 and r.json()["code"] == "export_quota", r.text
    # Exports expire after api.export_keep_hours: their files are deleted and no longer count.
    clock.advance(settings.api.export_keep_hours * 3600 + 1)
    time.sleep(1)  # (the admin's export finishes)
    assert expire_exports(api.app.state.ctx) >= 2
    assert api.post("/api/exports", headers=login(api, "op"), json=body).status_code == 202


def test_partial_export_files_of_a_killed_server_are_deleted_at_start(api):
    from vms.api import maintenance

    ctx = api.app.state.ctx
    ctx.export_dir.mkdir(parents=True, exist_ok=True)
    part = ctx.export_dir / ("e" * 32 + ".mp4.part")
    part.write_bytes(b"\0" * 1000)
    ctx.extras.pop("exports", None)  # as in a new process, before any export runs
    maintenance.startup(ctx)
    assert not part.exists()


def test_holds_cover_recorded_footage_only(api, db, clock, settings, clip):
    """Before, an operator could hold footage until 9999-12-31, or hours not recorded yet."""
    now = clock.now_ms()
    t0 = now - 3 * 86_400_000
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, t0, 3, settings.tz, gap_after={0: 600_000})
    op = login(api, "op")
    api.cookies.clear()

    def hold(start_ms: int, end_ms: int, station_id: str = SID):
        return api.post("/api/holds", headers=op, json={"station_id": station_id, "start": str(start_ms),
                                                        "end": str(end_ms), "reason": "案件 2026-17"})

    cases = [
        (t0, 253402300799000, 400, "time_out_of_range"),  # 9999-12-31: refused as a time before any hold rule
        (now - 3_600_000, now + 3_600_000, 400, "hold_in_future"),
        (now - 40 * 86_400_000, now - 3_600_000, 400, "hold_too_long"),
        (t0 - 3_600_000, t0 + 5000, 400, "hold_before_footage"),
        (t0 + 12_000, t0 + 600_000, 404, "hold_no_footage"),  # inside the 10-minute gap
        (now - 3_600_000, now, 404, "hold_no_footage"),  # nothing recorded since
    ]
    for start_ms, end_ms, status, code in cases:
        r = hold(start_ms, end_ms)
        assert r.status_code == status and r.json()["code"] == code, (start_ms - t0, end_ms - t0, r.text)
    r = hold(t0 - 3_600_000, t0 + 5000)
    assert "现存最早的录像" in r.json()["detail"]
    r = hold(t0, now - 3_600_000, station_id="pinghai-town")
    assert r.status_code == 404 and r.json()["code"] == "hold_no_footage"
    # Footage recorded, within the limits (the end may be a few seconds ahead of the server's clock).
    assert hold(t0, t0 + 5000).status_code == 201
    assert hold(t0 + 5000, now + 30_000).status_code == 201
    with db.session() as s:
        from vms.db.models import Hold

        assert s.query(Hold).count() == 2


def test_proxy_and_origin_settings_are_checked_at_start_with_file_and_key(tmp_path):
    from vms.core.errors import ConfigError
    from vms.core.settings import load_settings

    path = tmp_path / "vms.yaml"
    path.write_text("api:\n  trusted_proxies: [127.0.0.1, 10.0.0.0/8, '::1']\n  allowed_origins: [https://a.cn]\n")
    api = load_settings(path, env={}).api
    assert api.trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1"] and api.allowed_origins == ["https://a.cn"]
    path.write_text("api:\n  port: 8080\n  trusted_proxies: [nginx.local]\n  allowed_origins: [a.cn/x]\n")
    with pytest.raises(ConfigError) as e:
        load_settings(path, env={})
    assert "vms.yaml:3: api.trusted_proxies" in str(e.value) and "'nginx.local' is not an IP address" in str(e.value)
    assert "vms.yaml:4: api.allowed_origins" in str(e.value)
