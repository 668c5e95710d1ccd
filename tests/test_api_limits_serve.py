"""The API's limits on a real `vms serve`: whose address a request comes from (forwarded headers only
from configured proxies), the login limits, request body sizes."""

from __future__ import annotations

import httpx
import pytest

from tests.serve_support import running_serve

# A server behind a (pretend) reverse proxy on 127.0.0.1: X-Forwarded-For names the client.
PROXIED = {"trusted_proxies": ["127.0.0.1"]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """Default settings: no trusted proxy."""
    with running_serve(tmp_path_factory.mktemp("limits-direct"), cameras=1, footage_seconds=0) as s:
        yield s


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    with running_serve(tmp_path_factory.mktemp("limits-proxied"), cameras=1, footage_seconds=0, api=PROXIED) as s:
        yield s


def _admin(s) -> httpx.Client:
    return httpx.Client(base_url=s["base"], timeout=60, headers={"Authorization": f"Bearer {s['token']}"})


def _live_view_client(s, headers: dict) -> str:
    """Register a live view with `headers`; the client address the access log recorded for it."""
    with _admin(s) as admin:
        r = admin.post(f"/api/stations/{s['stations'][0]}/live-views", json={"reason": "巡查"}, headers=headers)
        assert r.status_code == 201, r.text
        entries = admin.get("/api/access-log", params={"action": "live"}).json()["entries"]
    return entries[0]["client"]


def test_forwarded_for_is_ignored_without_a_trusted_proxy(srv):
    assert _live_view_client(srv, {"X-Forwarded-For": "10.9.8.7"}) == "127.0.0.1"


def test_forwarded_for_names_the_client_behind_a_trusted_proxy(proxied):
    assert _live_view_client(proxied, {"X-Forwarded-For": "10.9.8.7"}) == "10.9.8.7"
    # The proxy appends the address it saw: what the client wrote before it is not believed.
    assert _live_view_client(proxied, {"X-Forwarded-For": "1.2.3.4, 10.9.8.6"}) == "10.9.8.6"


def test_a_forged_address_does_not_reset_the_login_limit(srv):
    """(Last on this server: it leaves 127.0.0.1 delayed.) Before, each forged X-Forwarded-For was a new
    client to the limit, so wrong passwords never met a 429."""
    codes = []
    for i in range(15):
        r = httpx.post(f"{srv['base']}/api/auth/login", json={"username": "chen-viewer", "password": "guess 123"},
                       headers={"X-Forwarded-For": f"10.0.0.{i + 1}"}, timeout=60)
        codes.append(r.status_code)
    assert set(codes) <= {401, 429} and 429 in codes, codes
