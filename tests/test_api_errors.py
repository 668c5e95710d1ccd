"""Every refusal carries a stable code and a Chinese message with local times (issue 19, items 1-3):
ApiErrors, FastAPI's own validation, Starlette's unknown path and wrong method, dependencies' 401/403,
the body limit and throttling; the console's session check answers 200 before login."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_api_helpers import add_segments, add_user, login

from vms.api.app import create_app
from vms.recording.volumes import VolumeSet

SID = "pingshan-town"
CODE = re.compile(r"^[a-z][a-z0-9_]*$")
CJK = re.compile(r"[\u3400-\u9fff]")
EPOCH = re.compile(r"\d{10,}")  # epoch seconds or milliseconds
ISO_T = re.compile(r"\d{4}-\d\d-\d\dT\d\d")  # an ISO time where a date-time was meant
LOCAL = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


@pytest.fixture
def client(settings, db, clock) -> Iterator[TestClient]:
    settings.api.max_body_bytes = 4096
    for name, role in (("admin", "admin"), ("op", "operator"), ("aud", "auditor"), ("view", "viewer")):
        add_user(db, name, role, clock.now_ms())
    with TestClient(create_app(settings, db, clock), raise_server_exceptions=False) as c:
        yield c


def _refusal(r, status: int, code: str | None = None) -> dict:
    """The body of a refusal: the status, a stable code, a Chinese message without epochs or ISO times."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body.get("code"), str) and CODE.match(body["code"]), body
    if code is not None:
        assert body["code"] == code, body
    assert isinstance(body.get("detail"), str) and CJK.search(body["detail"]), body
    assert not EPOCH.search(body["detail"]) and not ISO_T.search(body["detail"]), body
    return body


def test_every_kind_of_4xx_has_a_code_and_a_chinese_message(client):
    view = login(client, "view")
    op = login(client, "op")
    client.cookies.clear()
    # Request validation (FastAPI): the problems named in Chinese, listed for programs, input not echoed.
    body = _refusal(client.get(f"/api/stations/{SID}/timeline", headers=op), 422, "invalid_request")
    assert "start" in body["detail"] and "缺少" in body["detail"], body
    assert {tuple(e["loc"]) for e in body["errors"]} == {("query", "start"), ("query", "end")}, body
    long_reason = "秘" * 600
    body = _refusal(client.post(f"/api/stations/{SID}/playback", headers=op,
                                json={"start": "2026-01-01T08:00", "end": "2026-01-01T08:01", "reason": long_reason}),
                    422, "invalid_request")
    assert "最多 500 个字符" in body["detail"] and long_reason not in str(body), body["detail"]
    # Starlette's router: unknown path, wrong method.
    body = _refusal(client.get("/api/nothing-here", headers=op), 404, "not_found")
    assert "/api/nothing-here" in body["detail"]
    _refusal(client.get("/nothing-at-all"), 404, "not_found")
    _refusal(client.delete("/api/auth/me", headers=op), 405, "method_not_allowed")
    # Dependencies: not logged in, a role without the permission (naming both in Chinese), unknown station.
    _refusal(client.get("/api/stations"), 401, "not_logged_in")
    _refusal(client.get("/api/stations", headers={"Authorization": "Bearer nope"}), 401, "token_unknown")
    body = _refusal(client.get("/api/users", headers=view), 403, "forbidden")
    assert "观看员" in body["detail"] and "管理用户" in body["detail"], body
    _refusal(client.get("/api/stations/no-such-station", headers=op), 404, "station_not_found")
    # Routers' own refusals that were plain HTTPExceptions in English.
    _refusal(client.get("/api/stations?town=火星镇", headers=op), 400, "town_unknown")
    _refusal(client.get(f"/api/exports/{'ab' * 16}", headers=op), 404, "export_not_found")
    _refusal(client.post("/api/holds/999/release", headers=op), 404, "hold_not_found")
    _refusal(client.get("/api/audits/monthly?month=1999-01", headers=op), 400, "audit_input_invalid")
    _refusal(client.get("/api/playback/abcdefgh12.mp4", headers=op), 404, "playback_not_found")
    # The body limit (before routing) and throttling.
    _refusal(client.post("/api/auth/login", content=b"{" + b" " * 10_000 + b"}",
                         headers={"Content-Type": "application/json"}), 413, "body_too_large")
    statuses = []
    for _ in range(20):
        r = client.post("/api/auth/login", json={"username": "op", "password": "wrong password"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
        _refusal(r, 401, "login_failed")
    body = _refusal(r, 429, "login_throttled")
    assert "秒后再试" in body["detail"] and r.headers.get("Retry-After"), (statuses, body)


def test_messages_give_local_date_times(client, db, settings, clock, clip):
    op = login(client, "op")
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, clock.now_ms() - 60_000, 2, settings.tz)
    # 2026-01-01T08:00:00+08:00 is the simulated clock's now; the range is given as epoch milliseconds.
    body = _refusal(client.get(f"/api/stations/{SID}/timeline", headers=op,
                               params={"start": "1767225600000", "end": "1767222000000"}), 400, "time_range_reversed")
    assert re.search(rf"end（{LOCAL}）须晚于开始时间 start（{LOCAL}）", body["detail"]), body
    assert "2026-01-01 07:00:00" in body["detail"] and "2026-01-01 08:00:00" in body["detail"], body
    body = _refusal(client.post(f"/api/stations/{SID}/playback", headers=op,
                                json={"start": "2025-12-31T10:00", "end": "2025-12-31T10:05", "reason": "核查"}),
                    404, "no_footage")
    assert "2025-12-31 10:00:00 至 2025-12-31 10:05:00" in body["detail"] and "没有录像" in body["detail"], body
    body = _refusal(client.post("/api/exports", headers=op, json={
        "station_id": SID, "start": "2026-01-01T09:00", "end": "2026-01-01T09:05", "reason": "核查"}),
        400, "start_in_future")
    assert "2026-01-01 09:00:00" in body["detail"], body
    _refusal(client.post(f"/api/stations/{SID}/playback", headers=op,
                         json={"start": "2026-01-01T07:59:05", "end": "2026-01-01T07:59:50", "reason": "  "}),
             400, "reason_required")


def test_session_answers_200_before_login_and_me_keeps_its_401(client):
    client.cookies.clear()
    r = client.get("/api/auth/session")
    assert r.status_code == 200 and r.json() == {"user": None, "reason": None}, r.text
    _refusal(client.get("/api/auth/me"), 401, "not_logged_in")
    r = client.post("/api/auth/login", json={"username": "aud", "password": "correct horse battery"})
    assert r.status_code == 200, r.text
    r = client.get("/api/auth/session")  # the login cookie
    assert r.status_code == 200 and r.json()["user"]["username"] == "aud", r.text
    assert "audits:read" in r.json()["user"]["permissions"]
    client.post("/api/auth/logout")
    # A cookie that no longer logs in: null with the reason, and the cookie is removed.
    client.cookies.set("vms_session", "vmss_stale")
    r = client.get("/api/auth/session")
    assert r.status_code == 200 and r.json() == {"user": None, "reason": "token_unknown"}, r.text
    assert "vms_session=" in r.headers.get("set-cookie", ""), r.headers


def test_the_openapi_document_describes_the_refusal_body(client):
    login(client, "admin")
    schema = client.get("/openapi.json").json()["components"]["schemas"]["HTTPValidationError"]
    assert schema["properties"]["detail"]["type"] == "string" and "code" in schema["required"], schema
