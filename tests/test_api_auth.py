"""Accounts, sessions, API keys, roles, town limits and the rule that every endpoint needs a login."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_api_helpers import PASSWORD, add_user, login

from vms.api.accounts import create_api_key, token_hash
from vms.api.app import create_app
from vms.db.models import AuthToken, User


def test_login_me_logout_with_bearer_and_cookie(api, db):
    r = api.post("/api/auth/login", json={"username": "op", "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    token = body["token"]
    assert body["user"]["role"] == "operator" and "playback" in body["user"]["permissions"]
    assert r.cookies.get("vms_session") == token
    # Only the hash is stored, never the token.
    with db.session() as s:
        hashes = list(s.scalars(select(AuthToken.token_hash)))
        pw = s.scalar(select(User.password_hash).where(User.username == "op"))
    assert token_hash(token) in hashes and token not in hashes
    assert pw.startswith("$argon2") and PASSWORD not in pw
    # The cookie set by login authenticates the next calls of this client.
    assert api.get("/api/auth/me").json()["username"] == "op"
    api.cookies.clear()
    headers = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/auth/me", headers=headers).status_code == 200
    assert api.post("/api/auth/logout", headers=headers).status_code == 204
    r = api.get("/api/auth/me", headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "token_revoked"


def test_wrong_password_unknown_user_and_malformed_header(api):
    r = api.post("/api/auth/login", json={"username": "op", "password": "wrong password"})
    assert r.status_code == 401 and r.json() == {"detail": "用户名或密码错误", "code": "login_failed"}
    r = api.post("/api/auth/login", json={"username": "nobody", "password": "wrong password"})
    assert r.status_code == 401 and r.json() == {"detail": "用户名或密码错误", "code": "login_failed"}
    r = api.get("/api/auth/me", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and r.json()["code"] == "bad_authorization" and "Bearer" in r.json()["detail"]
    assert api.get("/api/auth/me", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_login_limit_delays_an_address_after_its_free_failures(api, clock, settings):
    free = settings.api.login_failures_per_address
    for _ in range(free):
        assert api.post("/api/auth/login", json={"username": "view", "password": "bad guess!"}).status_code == 401
    # The next attempt from this address waits 1 s, whatever the account and the password.
    r = api.post("/api/auth/login", json={"username": "aud", "password": PASSWORD})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert r.json()["code"] == "login_throttled" and "登录失败次数过多" in r.json()["detail"]
    clock.advance(1)
    assert api.post("/api/auth/login", json={"username": "view", "password": PASSWORD}).status_code == 200


def test_session_expires_and_disabled_user_is_locked_out(api, clock, settings):
    headers = login(api, "view")
    api.cookies.clear()
    clock.advance(settings.api.session_hours * 3600 + 1)
    r = api.get("/api/auth/me", headers=headers)
    assert r.status_code == 401 and r.json() == {"detail": "会话已过期：请重新登录", "code": "session_expired"}
    headers = login(api, "view")
    admin = login(api, "admin")
    api.cookies.clear()
    assert api.patch("/api/users/view", json={"disabled": True}, headers=admin).status_code == 200
    assert api.get("/api/auth/me", headers=headers).status_code == 401
    # The right password of a disabled account gets the answer of a wrong one (test_api_accounts.py).
    r = api.post("/api/auth/login", json={"username": "view", "password": PASSWORD})
    assert r.status_code == 401 and r.json()["code"] == "login_failed"


def test_every_endpoint_but_health_requires_login(api):
    assert api.get("/openapi.json").status_code == 401  # the docs too (api.docs: login)
    spec = api.get("/openapi.json", headers=login(api, "view")).json()
    api.cookies.clear()
    checked = 0
    for path, ops in spec["paths"].items():
        for method in ops:
            url = re.sub(r"\{[^}]+\}", lambda m: "0123456789abcdef0123456789abcdef" if "export" in m.group()
                         else ("1" if m.group() in ("{hold_id}", "{key_id}") else "pingshan-town"), path)
            url = url.replace("{playback_id}", "abcdefgh12")
            r = api.request(method.upper(), url)
            if path in ("/api/health", "/api/auth/login", "/api/auth/session"):
                assert r.status_code in (200, 422)  # (the session check answers "nobody" with 200)
            else:
                assert r.status_code == 401, (method, url, r.status_code, r.text)
                checked += 1
    assert checked >= 20


ROLE_CASES = [
    # (user, method, path, json, expected status)
    ("view", "GET", "/api/stations", None, 200),
    ("view", "GET", "/api/stations/{sid}/snapshot.jpg", None, 503),  # allowed; no picture in this test
    ("view", "POST", "/api/stations/{sid}/playback", {"start": "2025-12-31T10:00", "end": "2025-12-31T10:05",
                                                     "reason": "test"}, 403),
    ("view", "POST", "/api/exports", {"station_id": "{sid}", "start": "2025-12-31T10:00",
                                      "end": "2025-12-31T10:05", "reason": "test"}, 403),
    ("view", "GET", "/api/audits/daily?day=2025-12-31", None, 403),
    ("view", "POST", "/api/stations/{sid}/live-views", {}, 201),
    ("aud", "GET", "/api/stations/{sid}/snapshot.jpg", None, 403),
    ("aud", "POST", "/api/stations/{sid}/live-views", {}, 403),
    ("aud", "POST", "/api/stations/{sid}/playback", {"start": "2025-12-31T10:00", "end": "2025-12-31T10:05",
                                                    "reason": "test"}, 403),
    ("aud", "GET", "/api/audits/daily?day=2025-12-31", None, 200),
    ("aud", "GET", "/api/holds", None, 200),
    ("aud", "POST", "/api/holds", {"station_id": "{sid}", "start": "2025-12-31T10:00",
                                   "end": "2025-12-31T10:05", "reason": "case 1"}, 403),
    ("op", "POST", "/api/holds", {"station_id": "{sid}", "start": "2025-12-31T10:00",
                                  "end": "2025-12-31T10:05", "reason": "case 1"}, 404),  # allowed; no footage
    ("op", "GET", "/api/access-log", None, 403),
    ("op", "GET", "/api/users", None, 403),
    ("op", "PATCH", "/api/stations/{sid}", {"enabled": False}, 403),
    ("op", "GET", "/metrics", None, 403),
    ("admin", "GET", "/api/access-log", None, 200),
    ("admin", "GET", "/metrics", None, 200),
    ("admin", "PATCH", "/api/stations/{sid}", {"business_hours": "08:00-12:00,14:00-18:00"}, 200),
]


@pytest.mark.parametrize("user,method,path,body,expected", ROLE_CASES)
def test_role_limits(api, user, method, path, body, expected):
    sid = "pingshan-town"
    headers = login(api, user)
    api.cookies.clear()
    path = path.replace("{sid}", sid)
    if body:
        body = {k: (v.replace("{sid}", sid) if isinstance(v, str) else v) for k, v in body.items()}
    r = api.request(method, path, json=body, headers=headers)
    assert r.status_code == expected, r.text


def test_town_limited_user_sees_only_their_towns(api, db):
    headers = login(api, "op_ph")
    api.cookies.clear()
    stations = api.get("/api/stations", headers=headers).json()["stations"]
    assert stations and {s["town"] for s in stations} == {"平海镇"}
    assert api.get("/api/stations?town=平山街道", headers=headers).json()["count"] == 0
    r = api.get("/api/stations/pingshan-town", headers=headers)
    assert r.status_code == 404 and "在你管辖的镇街中" in r.json()["detail"]
    r = api.post("/api/stations/pingshan-town/playback", headers=headers,
                 json={"start": "2025-12-31T10:00", "end": "2025-12-31T10:05", "reason": "check"})
    assert r.status_code == 404
    r = api.post("/api/exports", headers=headers, json={"station_id": "pingshan-town", "start": "2025-12-31T10:00",
                                                       "end": "2025-12-31T10:05", "reason": "check"})
    assert r.status_code == 404
    r = api.get("/api/stations/pingshan-town/timeline?start=2025-12-31T00:00&end=2025-12-31T12:00", headers=headers)
    assert r.status_code == 404
    mine = stations[0]["id"]
    assert api.get(f"/api/stations/{mine}", headers=headers).status_code == 200
    r = api.get("/api/audits/daily?day=2025-12-31&town=平山街道", headers=headers)
    assert r.status_code == 403
    r = api.get("/api/audits/daily?day=2025-12-31", headers=headers)
    assert r.status_code == 200 and r.json()["town"] == "平海镇"


def test_api_key_scopes(api, db, clock):
    with db.session() as s:
        metrics_key, _ = create_api_key(s, "admin", "scraper", ["metrics"], clock.now_ms())
        audit_key, _ = create_api_key(s, "aud", "audit-cron", ["audits:read"], clock.now_ms())
    m = {"Authorization": f"Bearer {metrics_key}"}
    a = {"Authorization": f"Bearer {audit_key}"}
    r = api.get("/metrics", headers=m)
    assert r.status_code == 200 and "vms_camera_state" in r.text
    # An admin's key with scope metrics cannot do what the admin can.
    r = api.get("/api/access-log", headers=m)
    assert r.status_code == 403 and "API 密钥的权限范围" in r.json()["detail"]
    assert api.get("/api/stations", headers=m).status_code == 403
    assert api.get("/api/audits/monthly?month=2025-12", headers=a).status_code == 200
    assert api.get("/metrics", headers=a).status_code == 403


def test_admin_manages_users_and_keys(api):
    headers = login(api, "admin")
    api.cookies.clear()
    r = api.post("/api/users", headers=headers, json={"username": "newbie", "password": "long enough pw",
                                                      "role": "viewer", "towns": ["火星镇"]})
    assert r.status_code == 400 and "没有镇街" in r.json()["detail"]
    r = api.post("/api/users", headers=headers, json={"username": "newbie", "password": "long enough pw",
                                                      "role": "viewer", "towns": ["白花镇"]})
    assert r.status_code == 201 and r.json()["towns"] == ["白花镇"] and "password" not in r.text
    r = api.post("/api/users", headers=headers, json={"username": "newbie", "password": "long enough pw",
                                                      "role": "viewer"})
    assert r.status_code == 409
    r = api.post("/api/users/newbie/api-keys", headers=headers, json={"name": "k", "scopes": ["status:read"]})
    assert r.status_code == 201 and r.json()["key"].startswith("vmsk_")
    key = r.json()["key"]
    listed = api.get("/api/users/newbie/api-keys", headers=headers).json()
    assert listed and all(k.get("key") is None for k in listed)
    kh = {"Authorization": f"Bearer {key}"}
    assert {s["town"] for s in api.get("/api/stations", headers=kh).json()["stations"]} == {"白花镇"}
    assert api.delete(f"/api/users/newbie/api-keys/{listed[0]['id']}", headers=headers).status_code == 204
    assert api.get("/api/stations", headers=kh).status_code == 401
    r = api.patch("/api/users/admin", headers=headers, json={"role": "viewer"})
    assert r.status_code == 400


def test_login_and_station_list_on_each_database(any_db, settings, clock):
    """The same calls on SQLite and on the real PostgreSQL server."""
    from test_api_helpers import STATIONS_YAML_PATH

    from vms.catalog.loader import load_catalog
    from vms.catalog.store import import_catalog

    with any_db.session() as s:
        import_catalog(s, load_catalog(STATIONS_YAML_PATH))
    add_user(any_db, "admin", "admin", clock.now_ms())
    with TestClient(create_app(settings, any_db, clock)) as client:
        headers = login(client, "admin")
        body = client.get("/api/stations", headers=headers).json()
        assert body["count"] == 139
        assert client.get("/api/stations/pingshan-town", headers=headers).status_code == 200
        r = client.get("/api/stations/pingshan-town/timeline?start=2025-12-31T00:00&end=2025-12-31T12:00",
                       headers=headers)
        assert r.status_code == 200 and r.json()["recorded"] == []


def test_a_write_is_committed_before_its_answer_is_sent(api, db):
    """A client may act on an answer at once: the session a login created (and every other write made
    through the request's database session) must be committed before the response leaves. The soak saw
    a token refused as unknown right after its login, when the commit came after the answer."""
    app = api.app
    seen: dict = {}

    async def receive() -> dict:
        return {"type": "http.request", "body": b'{"username": "op", "password": "%s"}' % PASSWORD.encode(),
                "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            seen["status"] = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            # The client has the whole answer now: its token must already be in the database.
            token = json.loads(seen.get("body", b"") + message["body"])["token"]
            with db.session() as s:
                seen["stored"] = s.scalar(select(AuthToken.id).where(AuthToken.token_hash == token_hash(token)))
        elif message["type"] == "http.response.body":
            seen["body"] = seen.get("body", b"") + message["body"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/auth/login", "raw_path": b"/api/auth/login", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "state": {}}
    asyncio.run(app(scope, receive, send))
    assert seen["status"] == 200
    assert seen["stored"] is not None, "the answer left before the login's session was committed"
