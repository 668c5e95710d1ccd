"""The second-generation console's last ported pages (issue 19): 站点状态 (the county/town overview and a
station's page with its retention holds), 用户管理 (users and API keys) and 国标接入 (GB/T 28181 devices),
in Debian's Chromium against a real `vms serve` serving the console's build.

Per role (admin, operator, viewer, auditor): what the page shows, and that the server refuses (403)
what the role may not do; the overview's counts agree with GET /api/stations; a hold made on the station
page is in GET /api/holds and is released there; a user made on the page logs in, and no longer once
disabled; an API key is shown once and works until revoked; a refused GB device accepted on the page
registers; no raw English keys or epoch numbers on screen; both screen sizes without sideways scrolling.
After these pages, no menu entry leads to the first console."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_support import REPO, gb28181_serve_config, running_serve, stop_serve
from tests.test_console_gb28181 import _api_up, _wait_until
from tests.test_console_next_pages import (
    ADMIN,
    AUDITOR,
    BUILD,
    OPERATOR,
    VIEWER,
    api_client,
    assert_no_horizontal_overflow,
    assert_plain_chinese,
    login,
    menu_of,
    select_option,
    wait,
)
from vms.catalog.towns import TOWN_NAMES
from vms.simulate.content import VideoFormat, pattern_clip
from vms.simulate.gb28181_device import GbDeviceSpec, GbSimulator, gb_ids

pytestmark = pytest.mark.slow  # a real vms serve and Chromium: not in scripts/test.sh --fast


LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
NEW_USER, NEW_PASSWORD, RESET_PASSWORD = "sun-operator", "river stone lantern 42", "copper kettle meadow 77"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not BUILD.exists():
        pytest.fail("the console is not built: run scripts/bootstrap.sh (or cd console && npm ci && npm run build)")
    with running_serve(tmp_path_factory.mktemp("next-admin"), cameras=1, footage_seconds=6,
                       settings={"alerts": {"enabled": False}}) as srv:
        yield srv


def _state(st: dict) -> str:
    """The console's precedence (console/src/stations.js), a hung recorder counted as 故障."""
    if not st["enabled"]:
        return "disabled"
    if st["camera"]["state"] == "hung":
        return "fault"
    if not st["camera"]["online"]:
        return "offline"
    if st["faults"]:
        return "fault"
    if st["open_state"] == "closed":
        return "closed"
    return "recording"


def _login_api(base: str, name: str, password: str) -> int:
    return httpx.post(f"{base}/api/auth/login", json={"username": name, "password": password}).status_code


# ------------------------------------------------------------------------------------------------ menus
EXPECTED_MENUS = {
    ADMIN: ["wall", "status", "playback", "downloads", "alarms", "audits", "access-log", "gb28181", "users"],
    OPERATOR: ["wall", "status", "playback", "downloads", "alarms", "audits"],
    VIEWER: ["wall", "status", "alarms"],
    AUDITOR: ["status", "alarms", "audits"],
}


def test_no_menu_entry_leads_to_the_first_console_and_pages_follow_roles(server, browser):
    for name, expected in EXPECTED_MENUS.items():
        ctx, page = login(browser, server, name)
        assert menu_of(page) == expected, name
        assert page.locator("#menu a.menu-link, #menu .old-mark").count() == 0, name
        # Pages the role may not open lead to its start page, not to a page of refusals.
        for path, key in (("/console/next/users", "users"), ("/console/next/gb28181", "gb28181")):
            if key not in expected:
                page.goto(path)
                page.wait_for_url(lambda url, p=path: p not in url)
                wait(page, "#menu")
                assert page.locator(".users-page, .gb-page").count() == 0, (name, path)
        page.click("#menu [data-menu=status]")
        page.wait_for_url(re.compile(r"/console/next/status$"))
        wait(page, "#status-table .station-row")
        ctx.close()
    # The first console is still served at /console/.
    assert "app.js" in httpx.get(f"{server['base']}/console/").text

    # The server refuses users and GB/T 28181 to every role but admins.
    for name in (OPERATOR, VIEWER, AUDITOR):
        with api_client(server, name) as c:
            assert c.get("/api/users").status_code == 403, name
            assert c.post("/api/users", json={"username": "x-" + name, "password": NEW_PASSWORD,
                                              "role": "admin"}).status_code == 403, name
            assert c.patch(f"/api/users/{ADMIN}", json={"disabled": True}).status_code == 403, name
            key = {"name": "k", "scopes": ["status:read"]}
            assert c.post(f"/api/users/{name}/api-keys", json=key).status_code == 403, name
            assert c.get("/api/gb28181/devices").status_code == 403, name


# ------------------------------------------------------------------------------------------- 站点状态
def test_status_overview_counts_agree_with_the_api_and_read_in_chinese(server, browser):
    with api_client(server, OPERATOR) as c:
        stations = c.get("/api/stations").json()["stations"]
    expected = {}
    for st in stations:
        for key in (st["town"], "惠东县"):
            row = expected.setdefault(key, {"total": 0, "recording": 0, "offline": 0, "disabled": 0, "fault": 0,
                                            "closed": 0})
            row["total"] += 1
            row[_state(st)] += 1
    streaming = server["stations"][0]
    offline = next(s["id"] for s in stations if not s["camera"]["online"])
    for name in (OPERATOR, VIEWER, AUDITOR):
        ctx, page = login(browser, server, name)
        page.goto("/console/next/status")
        wait(page, "#status-counts .count-row")
        wait(page, f"#status-table .station-row a[href$='/station/{streaming}']")
        towns = page.eval_on_selector_all("#status-counts .count-town", "els => els.map(e => e.textContent.trim())")
        assert towns == TOWN_NAMES + ["惠东县"], towns  # the catalogue's order, then the county
        shown = page.evaluate("""() => [...document.querySelectorAll('#status-counts .count-row')].map(r => {
            const n = (c) => Number(r.querySelector(c).textContent);
            return [r.querySelector('.count-town').textContent.trim(), {total: n('.c-total'),
              recording: n('.c-recording'), offline: n('.c-offline'), disabled: n('.c-disabled'),
              fault: n('.c-fault'), closed: n('.c-closed')}]; })""")
        assert dict(shown) == expected, name
        assert page.locator("#status-table .station-row").count() == len(stations)
        row = page.locator("#status-table .station-row", has=page.locator(f"a[href$='/station/{streaming}']"))
        assert row.locator(".st-state").inner_text() == "录像中"
        assert row.locator(".st-camera").inner_text() == "录像中"
        assert "帧/秒" in row.locator(".st-rate").inner_text() and "kbps" in row.locator(".st-rate").inner_text()
        assert LOCAL_TIME.fullmatch(row.locator(".st-packet").inner_text())
        off = page.locator("#status-table .station-row", has=page.locator(f"a[href$='/station/{offline}']"))
        assert off.locator(".st-rate").inner_text() == "—"  # fps and bitrate only while online
        assert off.locator(".st-state").inner_text() == "离线"
        assert_plain_chinese(page, f"status as {name}")
        assert_no_horizontal_overflow(page, f"status as {name}")
        # A town row narrows the table to that town.
        page.click("#status-counts .count-row:has-text('平山街道') .count-town")
        page.wait_for_function("() => document.querySelectorAll('#status-table .station-row').length === "
                               f"{expected['平山街道']['total']}")
        page.click("#status-counts .count-row:has-text('平山街道') .count-town")
        ctx.close()


def test_station_page_snapshot_states_and_holds_per_role(server, browser):
    streaming = server["stations"][0]
    # Operator: snapshot, states, a hold made from the page, then released from it.
    ctx, page = login(browser, server, OPERATOR)
    page.goto("/console/next/status")
    wait(page, f"#status-table a[href$='/station/{streaming}']")
    page.click(f"#status-table a[href$='/station/{streaming}']")
    page.wait_for_url(re.compile(rf"/console/next/station/{streaming}$"))
    wait(page, "#station-kv")
    assert page.inner_text("#kv-state") == "录像中"
    assert page.inner_text("#kv-faults") == "无"
    assert LOCAL_TIME.search(page.inner_text("#kv-packet"))
    assert page.locator("#menu [data-menu=status].is-active").count() == 1
    page.wait_for_function("() => { const i = document.getElementById('snapshot'); return i && i.naturalWidth > 0; }",
                           timeout=20_000)
    before = page.get_attribute("#snapshot", "src")
    page.wait_for_timeout(1100)
    page.click("#snapshot-refresh")
    page.wait_for_function("(b) => document.getElementById('snapshot').getAttribute('src') !== b", arg=before)
    wait(page, "#day-bar .bar-rec")
    assert "小时" in page.inner_text("#timeline-summary")
    assert page.locator("#to-playback").is_visible() and page.locator("#to-wall").is_visible()

    wait(page, "#hold-form")
    page.fill("#hold-reason", "投诉 2026-118 号")
    page.click("#hold-add")
    wait(page, "#hold-message.ok-note")
    with api_client(server, OPERATOR) as c:
        holds = c.get(f"/api/holds?station_id={streaming}").json()
        assert [h["reason"] for h in holds] == ["投诉 2026-118 号"], holds
        hold = holds[0]
    wait(page, f"#holds-table .hold-{hold['id']}")
    row_text = page.inner_text(f"#holds-table .hold-{hold['id']}")
    assert "保全中" in row_text and "li-operator" in row_text and LOCAL_TIME.search(row_text), row_text
    assert_plain_chinese(page, "station page as operator")
    assert_no_horizontal_overflow(page, "station page as operator")
    page.click(f"#holds-table .hold-{hold['id']} .hold-release")
    page.click(".el-message-box__btns .el-button--primary")
    page.wait_for_function(f"() => !document.querySelector('#holds-table .hold-{hold['id']}')")
    with api_client(server, OPERATOR) as c:
        assert c.get(f"/api/holds?station_id={streaming}").json() == []
        released = c.get(f"/api/holds?station_id={streaming}&include_inactive=true").json()
        assert released[0]["state"] == "released" and released[0]["released_by"] == OPERATOR, released
    page.click("#holds-panel .el-checkbox")
    wait(page, f"#holds-table .hold-{hold['id']}")
    assert "已解除" in page.inner_text(f"#holds-table .hold-{hold['id']}")
    ctx.close()

    # Make a hold for the read-only roles to see.
    with api_client(server, OPERATOR) as c:
        now = time.time()
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + 8 * 3600 - 3))
        end = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + 8 * 3600))
        r = c.post("/api/holds", json={"station_id": streaming, "start": start, "end": end, "reason": "审计抽查"})
        assert r.status_code == 201, r.text
        kept = r.json()

    # Auditor: status and holds to read, no snapshot, no hold form, no release; the server refuses both.
    ctx, page = login(browser, server, AUDITOR)
    page.goto(f"/console/next/station/{streaming}")
    wait(page, f"#holds-table .hold-{kept['id']}")
    assert page.locator("#snapshot, #snapshot-refresh").count() == 0
    assert page.locator("#hold-form, .hold-release, #to-playback, #to-wall").count() == 0
    assert_plain_chinese(page, "station page as auditor")
    ctx.close()
    with api_client(server, AUDITOR) as c:
        assert c.post("/api/holds", json={"station_id": streaming, "start": start, "end": end,
                                          "reason": "审计抽查"}).status_code == 403
        assert c.post(f"/api/holds/{kept['id']}/release").status_code == 403
        assert c.get(f"/api/stations/{streaming}/snapshot.jpg").status_code == 403

    # Viewer: the snapshot and the wall, no holds at all; the server refuses them.
    ctx, page = login(browser, server, VIEWER, 1920, 1080)
    page.goto(f"/console/next/station/{streaming}")
    wait(page, "#station-kv")
    page.wait_for_function("() => { const i = document.getElementById('snapshot'); return i && i.naturalWidth > 0; }",
                           timeout=20_000)
    assert page.locator("#holds-panel, #to-playback").count() == 0
    assert page.locator("#to-wall").is_visible()
    assert_no_horizontal_overflow(page, "station page as viewer at 1920x1080")
    page.click("#to-wall")
    page.wait_for_url(re.compile(rf"/console/next/wall\?layout=1&w={streaming}"))
    ctx.close()
    with api_client(server, VIEWER) as c:
        assert c.get(f"/api/holds?station_id={streaming}").status_code == 403
        assert c.post(f"/api/holds/{kept['id']}/release").status_code == 403


# ------------------------------------------------------------------------------------------- 用户管理
def test_users_page_create_disable_reset_and_api_keys(server, browser):
    base = server["base"]
    ctx, page = login(browser, server, ADMIN)
    page.click("#menu [data-menu=users]")
    page.wait_for_url(re.compile(r"/console/next/users$"))
    wait(page, f"#users-table .user-{OPERATOR}")
    assert page.inner_text(f"#users-table .user-{OPERATOR} .u-role") == "值班员"
    assert page.inner_text(f"#users-table .user-{ADMIN} .u-towns") == "全部镇街"
    assert page.locator(f"#users-table .user-{ADMIN} .u-toggle").count() == 0  # never disable oneself

    # Create an operator limited to 平山街道.
    page.click("#user-create-open")
    page.fill("#user-name", NEW_USER)
    page.fill("#user-display", "孙值班")
    page.fill("#user-password", "123456")  # too weak: the server's Chinese reason
    select_option(page, "#user-role", "值班员")
    page.click(".user-towns-select .el-select__wrapper")  # a multiple select: its input is a sliver
    page.locator(".el-select-dropdown__item:visible", has_text="平山街道").first.click()
    page.click("#user-name")  # closes the town list
    page.click("#user-submit")
    wait(page, "#user-error")
    assert "密码" in page.inner_text("#user-error") and "_" not in page.inner_text("#user-error")
    page.fill("#user-password", NEW_PASSWORD)
    page.click("#user-submit")
    wait(page, f"#users-table .user-{NEW_USER}")
    row = page.inner_text(f"#users-table .user-{NEW_USER}")
    assert "值班员" in row and "平山街道" in row and "孙值班" in row and "正常" in row, row
    with api_client(server, ADMIN) as c:
        made = {u["username"]: u for u in c.get("/api/users").json()}[NEW_USER]
        assert (made["role"], made["towns"], made["disabled"]) == ("operator", ["平山街道"], False), made
    assert _login_api(base, NEW_USER, NEW_PASSWORD) == 200
    assert_plain_chinese(page, "users page")
    assert_no_horizontal_overflow(page, "users page")

    # Disable: no login; enable again: login.
    page.click(f"#users-table .user-{NEW_USER} .u-toggle")
    page.click(".el-message-box__btns .el-button--primary")
    page.wait_for_function(f"() => document.querySelector('#users-table .user-{NEW_USER} .u-state')"
                           ".textContent.trim() === '已停用'")
    assert _login_api(base, NEW_USER, NEW_PASSWORD) in (401, 403)
    page.click(f"#users-table .user-{NEW_USER} .u-toggle")
    page.wait_for_function(f"() => document.querySelector('#users-table .user-{NEW_USER} .u-state')"
                           ".textContent.trim() === '正常'")
    assert _login_api(base, NEW_USER, NEW_PASSWORD) == 200

    # Reset the password: the old one no longer works.
    page.click(f"#users-table .user-{NEW_USER} .u-password")
    page.fill("#new-password", RESET_PASSWORD)
    page.click("#password-submit")
    page.wait_for_function("() => document.getElementById('users-notice').textContent.includes('已重置')")
    assert _login_api(base, NEW_USER, RESET_PASSWORD) == 200
    assert _login_api(base, NEW_USER, NEW_PASSWORD) == 401

    # An API key: shown once, works, listed, revoked.
    page.click(f"#users-table .user-{NEW_USER} .u-keys")
    wait(page, "#key-name")
    page.fill("#key-name", "audit-export")
    page.click("#key-create")
    wait(page, "#key-secret")
    secret = page.input_value("#key-secret")
    assert len(secret) >= 20, secret
    wait(page, "#keys-table .key-row")
    assert "查看站点状态" in page.inner_text("#keys-table") and LOCAL_TIME.search(page.inner_text("#keys-table"))
    keyed = httpx.get(f"{base}/api/stations", headers={"Authorization": f"Bearer {secret}"})
    assert keyed.status_code == 200 and all(s["town"] == "平山街道" for s in keyed.json()["stations"])
    assert httpx.get(f"{base}/api/audits/monthly?month=2026-01",
                     headers={"Authorization": f"Bearer {secret}"}).status_code == 403  # scope: status only
    assert secret not in page.inner_text("#keys-table")
    page.keyboard.press("Escape")
    page.wait_for_timeout(400)
    page.click(f"#users-table .user-{NEW_USER} .u-keys")
    wait(page, "#keys-table .key-row")
    assert page.locator("#key-secret").count() == 0  # shown once only
    assert secret not in page.content()
    page.click("#keys-table .key-revoke")
    page.click(".el-message-box__btns .el-button--primary")
    page.wait_for_function("() => !document.querySelector('#keys-table .key-row')")
    assert httpx.get(f"{base}/api/stations", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    ctx.close()

    ctx, page = login(browser, server, ADMIN, 1920, 1080)
    page.goto("/console/next/users")
    wait(page, f"#users-table .user-{NEW_USER}")
    assert_no_horizontal_overflow(page, "users page at 1920x1080")
    ctx.close()


# ------------------------------------------------------------------------------------------- 国标接入
SERVER_ID, DOMAIN, GB_PASSWORD, OWN_PASSWORD = "44132300002000000001", "4413230000", "gb-test-pw1", "own-pw-9"
GB_USER_PASSWORD = "Gb-console-next-password-1"
FREE_STATION = "pingshan-v01"


@pytest.fixture
def gb_rig(tmp_path: Path):
    """A vms serve with GB/T 28181 on and one simulated device whose password is its own (refused
    until accepted with it)."""
    clip = pattern_clip(tmp_path / "cache", VideoFormat(320, 240, 15, 300, 15), 4.0)
    device_id, channel_id = gb_ids(DOMAIN, 1)
    spec = GbDeviceSpec(device_id, [(channel_id, "平山服务站")], OWN_PASSWORD, clip, fps=15)
    made = gb28181_serve_config(tmp_path, {FREE_STATION: {"main_url": None}}, {
        "server_id": SERVER_ID, "domain": DOMAIN, "password": GB_PASSWORD, "keepalive_interval_seconds": 2,
        "keepalive_missed": 3},
        users=(("gb-admin", "admin", GB_USER_PASSWORD), ("gb-operator", "operator", GB_USER_PASSWORD)))
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(REPO / ".venv/bin/vms"), "serve", "--workers", "1"], env=made["env"], stdout=log,
                            stderr=subprocess.STDOUT)
    sim = GbSimulator([spec], ("127.0.0.1", made["sip_port"]), SERVER_ID, DOMAIN, keepalive_seconds=2)
    try:
        _wait_until(lambda: "gb28181: SIP on" in log_path.read_text(), 60, "the SIP server started", log_path)
        _wait_until(lambda: _api_up(made["base"]), 60, "the API answering", log_path)
        yield {"base": made["base"], "sim": sim, "device": device_id, "channel": channel_id, "proc": proc,
               "log": log_path}
    finally:
        sim.close()
        stop_serve(proc)
        log.close()


def test_gb28181_page_accepts_a_refused_device_and_binds_its_channel(gb_rig, browser):
    base, dev, ch = gb_rig["base"], gb_rig["device"], gb_rig["channel"]

    def gb_login(name: str):
        ctx = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=base, timezone_id="UTC")
        page = ctx.new_page()
        page.set_default_timeout(15_000)
        page.goto("/console/next/login")
        page.fill("#username", name)
        page.fill("#password", GB_USER_PASSWORD)
        page.click("#login-submit")
        wait(page, "#menu")
        return ctx, page

    ctx, page = gb_login("gb-admin")
    page.click("#menu [data-menu=gb28181]")
    page.wait_for_url(re.compile(r"/console/next/gb28181$"))
    wait(page, "#gb-empty")
    assert SERVER_ID in page.inner_text("#gb-empty") and DOMAIN in page.inner_text("#gb-empty")

    gb_rig["sim"].start()
    device = f".gb-device[data-device='{dev}']"
    wait(page, f"{device}[data-state=refused]", 30_000)
    assert page.inner_text(f"{device} .gb-state") == "已拒绝"
    assert page.inner_text(f"{device} .gb-accepted") == "待接入"
    assert "密码错误" in page.inner_text(f"{device} .gb-problem")
    assert_plain_chinese(page, "GB page, refused device")
    assert_no_horizontal_overflow(page, "GB page")

    # 刷新目录 of a device that is not registered: the API's Chinese reason, not its code.
    page.click(f"{device} .gb-catalog")
    wait(page, f"{device} .gb-note")
    assert "未注册" in page.inner_text(f"{device} .gb-note")

    # Accept it with its own password: it registers (its next try, every 10 s).
    page.click(f"{device} .gb-accept-open")
    page.fill("#gb-accept-password", OWN_PASSWORD)
    page.click("#gb-accept-submit")
    wait(page, f"{device}[data-state=online]", 30_000)
    assert page.inner_text(f"{device} .gb-state") == "在线" and page.inner_text(f"{device} .gb-accepted") == "已接入"
    with httpx.Client(base_url=base, timeout=20) as c:
        token = c.post("/api/auth/login", json={"username": "gb-admin", "password": GB_USER_PASSWORD}).json()["token"]
        c.headers["Authorization"] = f"Bearer {token}"
        got = {d["device_id"]: d for d in c.get("/api/gb28181/devices").json()}[dev]
        assert got["accepted"] and got["has_own_password"] and got["state"] == "online", got
        assert got["registered_ms"] is not None

        # Its catalog arrives; bind its channel to the station without a camera.
        channel = f"{device} .gb-channel[data-channel='{ch}']"
        wait(page, channel, 20_000)
        assert "未绑定" in page.inner_text(f"{channel} .gb-station")
        page.click(f"{channel} .gb-bind-open")
        select_option(page, "#gb-bind-station", FREE_STATION)
        page.wait_for_function("() => document.getElementById('gb-bind-hint').textContent.includes('可以绑定')")
        page.click("#gb-bind-submit")
        page.wait_for_function("(s) => document.querySelector(s).textContent.trim() === '控制台'",
                               arg=f"{channel} .gb-bound-by")
        bound = {d["device_id"]: d for d in c.get("/api/gb28181/devices").json()}[dev]["channels"][0]
        assert (bound["station_id"], bound["bound_by"]) == (FREE_STATION, "api"), bound
        assert LOCAL_TIME.fullmatch(page.inner_text(f"{device} .gb-keepalive"))
        assert_plain_chinese(page, "GB page, bound")
        page.click(f"{channel} .gb-unbind")
        page.wait_for_function("(s) => document.querySelector(s).textContent.includes('未绑定')",
                               arg=f"{channel} .gb-station")
    ctx.close()

    # An operator: no menu entry, the address leads away, and the server refuses every call.
    ctx, page = gb_login("gb-operator")
    assert "gb28181" not in menu_of(page)
    page.goto("/console/next/gb28181")
    page.wait_for_url(lambda url: "/gb28181" not in url)
    ctx.close()
    token = httpx.post(f"{base}/api/auth/login",
                       json={"username": "gb-operator", "password": GB_USER_PASSWORD}).json()["token"]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=20) as op:
        assert op.get("/api/gb28181/devices").status_code == 403
        assert op.post(f"/api/gb28181/devices/{dev}/accept", json={}).status_code == 403
        assert op.post(f"/api/gb28181/devices/{dev}/catalog").status_code == 403
        assert op.put(f"/api/gb28181/channels/{dev}/{ch}/station", json={"station_id": None}).status_code == 403
    assert gb_rig["proc"].poll() is None, gb_rig["log"].read_text()[-3000:]

