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
