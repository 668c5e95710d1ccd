"""Hardening of the API process: security headers on every answer, the API docs served from local files
to whom api.docs allows, the session cookie's Secure flag over HTTPS, the database file closed to other
users, and a town-limited user's retention status counting only their towns' holds."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from test_api_helpers import add_segments, add_user, login

from vms.api.app import create_app
from vms.api.security import served_over_https
from vms.core.files import close_to_others
from vms.db.engine import Database
from vms.recording.volumes import VolumeSet

SID = "pingshan-town"


def _assert_security_headers(r, what: str) -> None:
    h = r.headers
    assert h.get("x-content-type-options") == "nosniff", what
    assert h.get("x-frame-options") == "DENY", what
    assert h.get("referrer-policy") == "no-referrer", what
    csp = h.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, (what, csp)
    # No inline or remote scripts: only the page's own files (and, on the docs pages, one script by hash).
    script_src = re.search(r"script-src ([^;]*)", csp).group(1).split()
    assert script_src[0] == "'self'" and all(s.startswith("'sha256-") for s in script_src[1:]), (what, csp)


def test_every_kind_of_answer_has_the_security_headers(api, db, settings, clock, clip):
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, clock.now_ms() - 60_000, 2, settings.tz)
    op = login(api, "op")
    api.cookies.clear()
    answers = {
        "console page": api.get("/console/"),
        "console script": api.get("/console/app.js"),
        "health": api.get("/api/health"),
        "401": api.get("/api/stations"),
        "cached station list": api.get("/api/stations", headers=op),
        "404 of a console file": api.get("/console/nothere.js"),
        "422": api.get(f"/api/stations/{SID}/timeline", headers=op),
    }
    pb = api.post(f"/api/stations/{SID}/playback", headers=op,
                  json={"start": "2026-01-01T07:59:05", "end": "2026-01-01T07:59:50", "reason": "核查"})
    assert pb.status_code == 201, pb.text
    answers["video file"] = api.get(pb.json()["url"], headers=op)
    answers["ranged video"] = api.get(pb.json()["url"], headers={**op, "Range": "bytes=0-99"})
    for what, r in answers.items():
        assert r.status_code < 500, (what, r.status_code)
        _assert_security_headers(r, what)
    assert answers["ranged video"].status_code == 206


@pytest.fixture
def make_client(settings, db, clock) -> Iterator:
    add_user(db, "view", "viewer", clock.now_ms())
    clients = []

    def make(docs: str = "login", base_url: str = "http://testserver") -> TestClient:
        s = settings.model_copy(deep=True)
        s.api.docs = docs
        c = TestClient(create_app(s, db, clock), base_url=base_url)
        clients.append(c.__enter__())
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_docs_need_a_login_and_load_nothing_from_other_hosts(make_client):
    client = make_client("login")
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["code"] == "not_logged_in", (path, r.text)
    login(client, "view")  # the console's cookie opens them
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and "/api/stations" in spec.json()["paths"]
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"], path
        _assert_security_headers(page, path)
        # Every script, stylesheet and icon is one of ours: no CDN (the county center may be offline).
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url
        # The page's inline script (Swagger UI's start-up) is allowed by its hash, nothing else inline.
        inline = re.findall(r"<script>(.*?)</script>", page.text, re.S)
        hashes = {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in inline}
        script_src = re.search(r"script-src ([^;]*)", page.headers["content-security-policy"]).group(1)
        assert hashes <= set(script_src.split()) and len(script_src.split()) == 1 + len(hashes), path
        assert inline or path == "/redoc"  # ReDoc's page starts from its bundle alone
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
    assert client.get("/docs/assets/../app.py").status_code == 404
    assert client.get("/docs/assets/other.js").status_code == 404


def test_docs_setting_public_and_off(make_client):
    public = make_client("public")
    assert public.get("/docs").status_code == 200 and public.get("/openapi.json").status_code == 200
    off = make_client("off")
    login(off, "view")
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert off.get(path).status_code == 404, path


def test_session_cookie_is_secure_over_https_only(make_client):
    from test_api_helpers import PASSWORD

    body = {"username": "view", "password": PASSWORD}
    plain = make_client(base_url="http://testserver").post("/api/auth/login", json=body)
    assert plain.status_code == 200
    assert "secure" not in plain.headers["set-cookie"].lower()  # a LAN over plain HTTP keeps working
    tls = make_client(base_url="https://testserver").post("/api/auth/login", json=body)
    cookie = tls.headers["set-cookie"].lower()
    assert tls.status_code == 200 and "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def _request(client: str, proto: str | None) -> Request:
    headers = [(b"x-forwarded-proto", proto.encode())] if proto else []
    return Request({"type": "http", "scheme": "http", "path": "/", "headers": headers, "client": (client, 5555),
                    "server": ("vms", 8080), "query_string": b""})


def test_https_behind_a_trusted_proxy_only():
    proxies = ["10.1.2.3", "192.168.0.0/24"]
    assert served_over_https(_request("10.1.2.3", "https"), proxies)
    assert served_over_https(_request("192.168.0.9", "http, https"), proxies)  # the nearest proxy's value
    assert not served_over_https(_request("10.1.2.3", "http"), proxies)
    # From anyone else the header is the client's word: not believed.
    assert not served_over_https(_request("10.9.9.9", "https"), proxies)
    assert not served_over_https(_request("10.1.2.3", "https"), None)


def test_database_file_is_the_services_own(tmp_path):
    path = tmp_path / "vms.db"
    db = Database(f"sqlite:///{path}")
    with db.engine.connect() as c:
        c.exec_driver_sql("create table t (x int)")
        c.commit()
    # Camera credentials are in it: owner only, the WAL file too (SQLite gives it the file's mode).
    for p in (path, tmp_path / "vms.db-wal"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p, oct(p.stat().st_mode))
    db.dispose()
    os.chmod(path, 0o644)  # made by an older version
    Database(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_close_to_others(tmp_path):
    root = tmp_path / "recordings"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    close_to_others(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o750
    close_to_others(tmp_path / "missing")  # nothing to do, no error


def test_retention_status_counts_only_the_users_towns_holds(api, db, settings, clock, clip):
    admin = login(api, "admin")
    api.cookies.clear()
    for station in (SID, "pinghai-town"):  # 平山街道, 平海镇
        # Footage to hold: a hold covers recorded footage only (item 5).
        add_segments(db, VolumeSet.from_settings(settings), clip, station, clock.now_ms() - 60_000, 2, settings.tz)
        r = api.post("/api/holds", headers=admin, json={"station_id": station, "start": "2026-01-01T07:59:00",
                                                        "end": "2026-01-01T07:59:30", "reason": "case 17"})
        assert r.status_code == 201, r.text
    assert api.get("/api/retention/status", headers=admin).json()["active_holds"] == 2
    limited = login(api, "op_ph")  # 平海镇 only
    api.cookies.clear()
    status = api.get("/api/retention/status", headers=limited).json()
    assert status["active_holds"] == 1
    assert {s["town"] for s in status["stations"]} == {"平海镇"}
    assert len(api.get("/api/holds", headers=limited).json()) == 1
