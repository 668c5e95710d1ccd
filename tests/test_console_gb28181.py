"""The console's 设备接入（国标） page in a real browser (Debian's Chromium via Playwright) against a real
`vms serve` with GB/T 28181 on, and simulated devices (vms.simulate.gb28181_device, in this process)
registering to it over SIP on loopback.

The stations file binds device 1's channel to one station by URL (目录文件); device 2 is accepted
with the CLI before it registers and its channel is bound by the admin in the page (控制台); device 3 has a
password that is not ours, so it is refused and listed until the admin accepts it with its own password.
Another station has an RTSP camera URL, which the page refuses to bind over; one has no camera."""

from __future__ import annotations

import calendar
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_support import REPO, gb28181_serve_config, run_vms, stop_serve
from vms.simulate.content import VideoFormat, pattern_clip
from vms.simulate.gb28181_device import GbDeviceSpec, GbSimulator, gb_ids

pytestmark = pytest.mark.slow  # a real vms serve, simulated devices and Chromium: not in scripts/test.sh --fast

import playwright.sync_api as playwright_api  # noqa: E402

SERVER_ID, DOMAIN, GB_PASSWORD = "44132300002000000001", "4413230000", "gb-test-pw1"
DEVICE3_PASSWORD = "other-pw-3"
USER_PASSWORD = "Gb-console-test-password-1"
BOUND, FREE, RTSP = "pingshan-town", "pingshan-v01", "pingshan-v02"  # by URL, no camera, an RTSP camera
CHANNEL_NAMES = ("萳村服务站", "龍山镇服务点", "未登记设备")
LONG_NAME = "惠东县平山街道龍山镇电子商务服务点大门口室外枪型网络摄像机（二〇二四年安装，萳村方向）" * 2  # no spaces
LOCAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def _wait_until(pred, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"not within {timeout:.0f} s: {what}\n{tail}")


def _api_up(base: str) -> bool:
    try:
        httpx.get(f"{base}/api/health", timeout=2)
        return True
    except httpx.HTTPError:
        return False


@pytest.fixture
def rig(tmp_path: Path):
    clip = pattern_clip(tmp_path / "cache", VideoFormat(320, 240, 15, 300, 15), 4.0)
    specs = []
    for n in (1, 2, 3):
        device_id, channel_id = gb_ids(DOMAIN, n)
        specs.append(GbDeviceSpec(device_id, [(channel_id, CHANNEL_NAMES[n - 1])],
                                  GB_PASSWORD if n != 3 else DEVICE3_PASSWORD, clip, fps=15,
                                  name=LONG_NAME if n == 2 else ""))
    cameras = {BOUND: {"main_url": f"gb28181://{specs[0].device_id}/{specs[0].channels[0][0]}"},
               FREE: {"main_url": None}, RTSP: {"main_url": "rtsp://127.0.0.1:9/none"}}
    made = gb28181_serve_config(tmp_path, cameras, {
        "server_id": SERVER_ID, "domain": DOMAIN, "password": GB_PASSWORD, "keepalive_interval_seconds": 2,
        "keepalive_missed": 3},
        users=(("gb-admin", "admin", USER_PASSWORD), ("gb-operator", "operator", USER_PASSWORD)))
    env, sip_port, base = made["env"], made["sip_port"], made["base"]
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(REPO / ".venv/bin/vms"), "serve", "--workers", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    sim = GbSimulator(specs, ("127.0.0.1", sip_port), SERVER_ID, DOMAIN, keepalive_seconds=2)
    try:
        _wait_until(lambda: "gb28181: SIP on" in log_path.read_text(), 60, "the SIP server started", log_path)
        _wait_until(lambda: _api_up(base), 60, "the API answering", log_path)
        yield {"proc": proc, "env": env, "sim": sim, "log": log_path, "specs": specs, "sip_port": sip_port,
               "base": base, "stations": made["stations"]}
    finally:
        sim.close()
        stop_serve(proc)
        log.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Screenshots, under the run's temporary directory (never the repository)."""
    path = tmp_path_factory.mktemp("console-gb28181")
    print("GB28181 console screenshots in", path)
    return path


def _login(browser, base: str, name: str):
    ctx = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=base)
    page = ctx.new_page()
    page.set_default_timeout(10_000)
    page.goto("/console/")
    page.fill("#username", name)
    page.fill("#password", USER_PASSWORD)
    page.click("#login-form button[type=submit]")
    _wait(page, "#tree")
    return ctx, page


def _wait(page, selector: str, timeout: float = 10_000) -> None:
    """wait_for_selector that says what the page showed instead of only "timeout"."""
    try:
        page.wait_for_selector(selector, timeout=timeout)
    except playwright_api.TimeoutError:
        raise AssertionError(f"no {selector}; the page shows: {page.inner_text('main')[:2000]!r}") from None


def _wait_text(page, selector: str, text: str, timeout: float = 10_000) -> None:
    try:
        page.wait_for_function("([s, t]) => { const e = document.querySelector(s); "
                               "return e && e.innerText.includes(t); }", arg=[selector, text], timeout=timeout)
    except playwright_api.TimeoutError:
        shown = page.inner_text(selector) if page.locator(selector).count() else "(absent)"
        raise AssertionError(f"{selector} does not show {text!r} within {timeout / 1000:.0f} s: {shown!r}; "
                             f"the page: {page.inner_text('main')[:2000]!r}") from None


def _no_horizontal_overflow(page) -> None:
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page is wider than the window at 1366x768: {widths}"


def test_gb28181_page_accept_bind_and_roles(rig, browser, shots):
    base, log, sim = rig["base"], rig["log"], rig["sim"]
    dev1, dev2, dev3 = (s.device_id for s in rig["specs"])
    ch1, ch2 = rig["specs"][0].channels[0][0], rig["specs"][1].channels[0][0]

    def client(name: str) -> httpx.Client:
        token = httpx.post(f"{base}/api/auth/login", json={"username": name, "password": USER_PASSWORD}).json()["token"]
        return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=20)

    admin = client("gb-admin")

    # No device has registered yet: the page says so, and what to set on a camera.
    ctx, page = _login(browser, base, "gb-admin")
    assert page.locator("#nav a[data-page=gb28181]").is_visible()
    page.click("#nav a[data-page=gb28181]")
    _wait(page, "#gb-empty")
    empty = page.inner_text("#gb-empty")
    assert "还没有设备注册" in empty and "平台接入" in empty, empty
    assert SERVER_ID in empty and DOMAIN in empty and str(rig["sip_port"]) in empty, empty
    page.screenshot(path=str(shots / "gb-empty.png"))

    # The devices register (device 2 accepted with the CLI first: it registers with gb28181.password); the
    # page lists them by itself (refreshed every 5 s).
    run_vms(rig["env"], "gb28181", "accept", dev2)
    sim.start()
    dev = {d: f"tbody.gb-device[data-device='{d}']" for d in (dev1, dev2, dev3)}
    _wait(page, f"{dev[dev1]}[data-state=online] tr.gb-channel[data-channel='{ch1}']", 30_000)
    _wait(page, f"{dev[dev2]}[data-state=online] tr.gb-channel[data-channel='{ch2}']", 30_000)
    _wait(page, f"{dev[dev3]}[data-state=refused]", 30_000)
    assert page.locator("tbody.gb-device").count() == 3

    row1 = page.inner_text(f"{dev[dev1]} tr.gb-device-row")
    assert page.inner_text(f"{dev[dev1]} .gb-state") == "在线"
    assert page.inner_text(f"{dev[dev1]} .gb-accepted") == "已接入"
    assert re.search(r"127\.0\.0\.1:\d+/UDP", row1) and "vms-sim / vms-sim-ipc" in row1, row1
    keepalive = page.inner_text(f"{dev[dev1]} .gb-keepalive")
    assert LOCAL_TIME.match(keepalive), keepalive
    shown_utc = calendar.timegm(time.strptime(keepalive, "%Y-%m-%d %H:%M:%S")) - 8 * 3600  # Asia/Shanghai
    assert abs(shown_utc - time.time()) < 60, (keepalive, "not Asia/Shanghai time")
    assert page.inner_text(f"{dev[dev1]} .gb-problem") == ""
    channel1 = f"{dev[dev1]} tr.gb-channel[data-channel='{ch1}']"
    assert "萳村服务站" in page.inner_text(f"{channel1} .gb-ch-name")
    assert rig["stations"][BOUND] in page.inner_text(f"{channel1} .gb-station")
    assert page.inner_text(f"{channel1} .gb-bound-by") == "目录文件"
    assert "ON" in page.inner_text(channel1)
    assert page.locator(f"{channel1} button").count() == 0  # bound in the stations file: changed there
    assert LONG_NAME[:20] in page.inner_text(f"{dev[dev2]} tr.gb-device-row")  # wrapped, not widening the page
    channel2 = f"{dev[dev2]} tr.gb-channel[data-channel='{ch2}']"
    assert "龍山镇服务点" in page.inner_text(channel2) and "未绑定" in page.inner_text(f"{channel2} .gb-station")

    assert page.inner_text(f"{dev[dev3]} .gb-state") == "已拒绝"
    assert page.inner_text(f"{dev[dev3]} .gb-accepted") == "待接入"
    assert "密码错误" in page.inner_text(f"{dev[dev3]} .gb-problem")
    _no_horizontal_overflow(page)
    page.screenshot(path=str(shots / "gb-devices.png"), full_page=True)

    # 刷新目录 of a device that is not registered: the API's Chinese reason, not its code.
    page.click(f"{dev[dev3]} button.gb-catalog")
    _wait_text(page, f"{dev[dev3]} .gb-note", "未注册，无法查询目录")
    assert "gb_device_offline" not in page.inner_text("main")
    # ... and of an online one: asked.
    page.click(f"{dev[dev2]} button.gb-catalog")
    _wait_text(page, f"{dev[dev2]} .gb-note", "已向设备查询目录")

    # Accept the refused device with its own password: online at its next try (every 10 s).
    page.click(f"{dev[dev3]} button.gb-accept-open")
    page.fill(f"{dev[dev3]} .gb-accept-form input[name=password]", DEVICE3_PASSWORD)
    accepted = time.monotonic()
    page.click(f"{dev[dev3]} .gb-accept-form button[type=submit]")
    _wait_text(page, f"{dev[dev3]} .gb-accepted", "已接入")
    note, state = page.evaluate("""(s) => { const b = document.querySelector(s), n = b.querySelector('.gb-note');
        return [n ? n.innerText : '', b.dataset.state]; }""", dev[dev3])
    assert "已接入" in note or state == "online", (note, state)  # the note goes once the device is online
    assert page.locator(f"{dev[dev3]} .gb-accept-form").count() == 0
    _wait(page, f"{dev[dev3]}[data-state=online]", 25_000)
    took = time.monotonic() - accepted
    assert page.inner_text(f"{dev[dev3]} .gb-state") == "在线" and page.inner_text(f"{dev[dev3]} .gb-problem") == ""
    got = {d["device_id"]: d for d in admin.get("/api/gb28181/devices").json()}[dev3]
    assert got["accepted"] and got["has_own_password"] and got["state"] == "online", got
    print(f"device 3 online {took:.1f} s after 接入")
    _wait_text(page, f"{dev[dev3]} tr.gb-channel", "未登记设备", 15_000)  # its catalog, asked on registering

    # Bind device 2's channel to the station without a camera: a station with a camera URL is refused in
    # the form, one bound by the stations file cannot be chosen.
    page.click(f"{channel2} button.gb-bind-open")
    form = f"{dev[dev2]} tr.gb-bind-row form.gb-bind-form"
    _wait(page, form)
    assert page.locator(f"{form} option[value='{BOUND}']").is_disabled()
    page.select_option(f"{form} select", RTSP)
    _wait_text(page, f"{form} .gb-bind-hint", "已配置摄像机地址")
    assert page.locator(f"{form} button[type=submit]").is_disabled()
    page.wait_for_timeout(5500)  # a refresh passes: the open form and its choice stay
    assert page.locator(f"{form} select").input_value() == RTSP
    page.select_option(f"{form} select", FREE)
    _wait_text(page, f"{form} .gb-bind-hint", "可以绑定")
    page.screenshot(path=str(shots / "gb-bind.png"), full_page=True)
    page.click(f"{form} button[type=submit]")
    _wait_text(page, f"{channel2} .gb-station", rig["stations"][FREE])
    assert page.inner_text(f"{channel2} .gb-bound-by") == "控制台"
    assert page.locator(form).count() == 0
    got = {d["device_id"]: d for d in admin.get("/api/gb28181/devices").json()}[dev2]["channels"][0]
    assert (got["station_id"], got["bound_by"]) == (FREE, "api"), got
    _no_horizontal_overflow(page)
    page.screenshot(path=str(shots / "gb-bound.png"), full_page=True)

    # The API refuses the station with a camera; the page would show its Chinese reason.
    r = admin.put(f"/api/gb28181/channels/{dev2}/{ch2}/station", json={"station_id": RTSP})
    assert r.status_code == 409 and "已配置摄像机地址" in r.json()["detail"], r.text

    # 解除绑定.
    page.click(f"{channel2} button.gb-unbind")
    _wait_text(page, f"{channel2} .gb-station", "未绑定")
    got = {d["device_id"]: d for d in admin.get("/api/gb28181/devices").json()}[dev2]["channels"][0]
    assert got["station_id"] is None, got
    ctx.close()

    # An operator: no menu entry, the page says it is for admins, and the API refuses every call.
    ctx, page = _login(browser, base, "gb-operator")
    assert page.locator("#nav a[data-page=gb28181]").is_hidden()
    assert page.locator("#nav a[data-page=alarms]").is_visible()
    page.goto("/console/#/gb28181")
    _wait_text(page, "main", "仅管理员")
    assert page.locator("tbody.gb-device").count() == 0
    ctx.close()
    operator = client("gb-operator")
    assert operator.get("/api/gb28181/devices").status_code == 403
    assert operator.get("/api/gb28181/server").status_code == 403
    assert operator.post(f"/api/gb28181/devices/{dev3}/accept", json={}).status_code == 403
    assert operator.post(f"/api/gb28181/devices/{dev2}/catalog").status_code == 403
    assert operator.put(f"/api/gb28181/channels/{dev2}/{ch2}/station", json={"station_id": FREE}).status_code == 403
    server = admin.get("/api/gb28181/server").json()
    assert server == {"enabled": True, "server_id": SERVER_ID, "domain": DOMAIN, "sip_host": "127.0.0.1",
                      "sip_port": rig["sip_port"], "password_set": True}, server
    operator.close()
    admin.close()
    assert rig["proc"].poll() is None, log.read_text()[-3000:]
