"""The API's limits in process: request body sizes, the access log of export downloads, export and hold
limits (tests/test_api_limits_serve.py has those that need a real server)."""

from __future__ import annotations

from test_api_helpers import PASSWORD, login


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
