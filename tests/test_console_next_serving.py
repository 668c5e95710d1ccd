"""How `vms serve` serves the second-generation console (/console/next/): the build's files only, the app's
page for its own addresses, long caching for hashed assets and none for index.html, a Chinese page saying
what to run when there is no build. Runs in process against a build laid out in a temp folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import vms.api.routers.console as console_router
from vms.catalog.towns import COUNTY, TOWN_NAMES

INDEX = '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><script type="module" ' \
        'src="/console/next/assets/index-AbC123.js"></script></head><body><div id="app"></div></body></html>'


@pytest.fixture
def next_dir(tmp_path, monkeypatch) -> Path:
    """An empty place for the build; the router is pointed at it (and forgets any listing it made)."""
    build = tmp_path / "next"
    monkeypatch.setattr(console_router, "NEXT", build)
    monkeypatch.setattr(console_router, "_next_listing", None)
    return build


def _lay_out_build(build: Path, js_name: str = "index-AbC123.js") -> None:
    (build / "assets").mkdir(parents=True, exist_ok=True)
    (build / "assets" / js_name).write_text("console.log('vms');")
    (build / "assets" / "index-Xy9.css").write_text("body{}")
    (build / "index.html").write_text(INDEX.replace("index-AbC123.js", js_name))
    (build / ".stamp-0123456789ab").write_text("build stamp")


def test_without_a_build_every_address_says_in_chinese_to_run_bootstrap(api, next_dir):
    for path in ("/console/next/", "/console/next/wall", "/console/next/assets/index-AbC123.js"):
        r = api.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html")
        assert "新版值班台尚未构建" in r.text and "scripts/bootstrap.sh" in r.text
        assert r.headers["cache-control"] == "no-cache"


def test_the_build_is_served_with_caching_by_kind_and_the_app_page_for_its_routes(api, next_dir):
    _lay_out_build(next_dir)
    r = api.get("/console/next", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/console/next/"
    r = api.get("/", follow_redirects=False)  # the server's address opens the second-generation console
    assert r.status_code in (302, 307) and r.headers["location"] == "/console/next/"

    for path in ("/console/next/", "/console/next/wall", "/console/next/wall?layout=4&w=a,b", "/console/next/a/b/c",
                 "/console/next/index.html"):
        r = api.get(path)
        assert r.status_code == 200, path
        assert r.text == INDEX, path
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache", path
        assert "script-src 'self'" in r.headers["content-security-policy"]

    r = api.get("/console/next/assets/index-AbC123.js")
    assert r.status_code == 200 and r.text == "console.log('vms');"
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    r = api.get("/console/next/assets/index-Xy9.css")
    assert r.status_code == 200 and r.headers["content-type"] == "text/css; charset=utf-8"

    cfg = api.get("/console/next/config.json").json()
    assert cfg["county"] == COUNTY and cfg["towns"] == TOWN_NAMES
    assert cfg["system_name"] == "惠东县电商服务站视频监控联网系统"


def test_only_files_of_the_build_are_served(api, next_dir, tmp_path):
    _lay_out_build(next_dir)
    secret = tmp_path / "secret.js"
    secret.write_text("SECRET")
    os.symlink(secret, next_dir / "assets" / "linked.js")
    missing = ["/console/next/assets/gone-123.js",  # a chunk of an older build: 404, never the page
               "/console/next/assets/linked.js",  # a symlink in the build folder is not a shipped file
               "/console/next/other.js",
               "/console/next/assets/..%2f..%2fsecret.js",
               "/console/next/" + "a" * 5000 + ".js",
               "/console/next/assets/" + "b" * 300]
    for path in missing:
        r = api.get(path)
        assert r.status_code == 404, path
        assert "SECRET" not in r.text and "console.log" not in r.text
        assert r.json()["code"] == "not_found"
    # Whatever is not a file of the build is a page of the app: index.html, never the file named.
    for path in ("/console/next/.stamp-0123456789ab", "/console/next/%2e%2e/%2e%2e/secret",
                 "/console/next/..%2f..%2fapi%2frouters%2fconsole.py", "/console/next/" + "页" * 100):
        r = api.get(path)
        assert r.status_code == 200 and r.text == INDEX, path


def test_a_rebuild_while_serving_is_picked_up(api, next_dir):
    _lay_out_build(next_dir)
    assert api.get("/console/next/assets/index-AbC123.js").status_code == 200
    time.sleep(0.01)
    (next_dir / "assets" / "index-AbC123.js").unlink()
    _lay_out_build(next_dir, js_name="index-New456.js")
    os.utime(next_dir / "assets", ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert api.get("/console/next/assets/index-New456.js").status_code == 200
    assert api.get("/console/next/assets/index-AbC123.js").status_code == 404
    assert "index-New456.js" in api.get("/console/next/").text


def test_the_first_console_is_still_served(api, next_dir):
    assert api.get("/console/").status_code == 200
    assert api.get("/console/app.js").status_code == 200
