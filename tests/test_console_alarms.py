"""The console's alarm center (issue 20: every alert "visible in the console's alarm center";
"acknowledge and mute from the console") in a real browser against a real `vms serve`.

The server's alert round is off (alerts.enabled: false) and the alerts are rows written into its
database: an alert the rules raise needs minutes of a condition, and the round would resolve a row
whose condition does not hold. The console reads and changes them through the real API."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.serve_support import PASSWORD, running_serve
from vms.db.engine import Database
from vms.db.models import Alert, AlertDelivery

pytestmark = pytest.mark.slow  # a real vms serve and Chromium: not in scripts/test.sh --fast

import playwright.sync_api as playwright_api  # noqa: E402

MIN = 60_000
OLD_RESOLVED = 60  # more than a page (50): 加载更多 has something to load


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_serve(tmp_path_factory.mktemp("alarms"), cameras=2, footage_seconds=0,
                       settings={"alerts": {"enabled": False}}) as srv:
        yield srv


def _db(server) -> Database:
    return Database(f"sqlite:///{server['root'] / 'data' / 'vms.db'}")


def _add_alert(db: Database, station: dict, title: str, severity: str = "major", state: str = "firing",
               age_min: int = 20, reminder: bool = False) -> int:
    now = int(time.time() * 1000)
    with db.session() as s:
        a = Alert(key=f"camera_offline:{station['id']}:{title}", rule="camera_offline", severity=severity,
                  station_id=station["id"], town=station["town"], title=title, detail=f"{title}：测试详情",
                  state=state, since_ms=now - age_min * MIN, fired_ms=now - (age_min - 5) * MIN,
                  resolved_ms=now - MIN if state == "resolved" else None, one_shot=False, notified=True,
                  reminders=1 if state == "firing" else 0,
                  next_reminder_ms=now + 30 * MIN if state == "firing" else None, updated_ms=now)
        s.add(a)
        s.flush()
        if reminder:  # a reminder waiting to be sent: acknowledging drops it
            s.add(AlertDelivery(alert_id=a.id, channel="ops", kind="reminder", severity=severity, state="queued",
                                attempts=0, created_ms=now, next_attempt_ms=now + 10 * MIN, items=1))
        return a.id


def _login(browser, base: str, name: str):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=base)
    page = ctx.new_page()
    page.set_default_timeout(10_000)
    page.goto("/console/")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    _wait(page, "#tree")
    return ctx, page


def _wait(page, selector: str, timeout: float = 10_000) -> None:
    """wait_for_selector that says what the page showed instead of only "timeout"."""
    try:
        page.wait_for_selector(selector, timeout=timeout)
    except playwright_api.TimeoutError:
        raise AssertionError(f"no {selector}; the page shows: {page.inner_text('main')[:1500]!r}") from None


def _local(epoch_s: float) -> str:
    """A datetime-local value in Asia/Shanghai (UTC+8, no daylight saving)."""
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(epoch_s + 8 * 3600))


def test_alarm_center_ack_mute_maintenance_and_roles(server, browser):
    base = server["base"]

    def client(name: str) -> httpx.Client:
        token = httpx.post(f"{base}/api/auth/login", json={"username": name, "password": PASSWORD}).json()["token"]
        return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})

    operator = client("li-operator")
    s0, s1 = (operator.get(f"/api/stations/{sid}").json() for sid in server["stations"])
    db = _db(server)
    for i in range(OLD_RESOLVED):
        _add_alert(db, s1, f"历史告警{i:02d}", state="resolved", age_min=600 - i)
    a_id = _add_alert(db, s0, "测试告警：摄像机离线（甲）", reminder=True)
    b_id = _add_alert(db, s1, "测试告警：摄像机离线（乙）", severity="critical")

    ctx, page = _login(browser, base, "li-operator")
    page.goto("/console/#/alarms")
    row_a, row_b = f"tr.alarm[data-id='{a_id}']", f"tr.alarm[data-id='{b_id}']"
    _wait(page, row_a)
    # 进行中 by default: the two firing alerts, newest first, nothing resolved.
    assert page.locator("tr.alarm").count() == 2
    assert page.locator("tr.alarm").first.get_attribute("data-id") == str(b_id)
    assert "测试告警：摄像机离线（甲）" in page.inner_text(row_a)
    assert "告警中" in page.inner_text(f"{row_a} .alarm-status")
    assert page.inner_text(f"{row_b} .sev") == "紧急" and page.inner_text(f"{row_a} .sev") == "重要"
    assert page.get_attribute(f"{row_a} a[href^='#/station/']", "href") == f"#/station/{s0['id']}"
    # A new alert appears by itself (the page reloads every 15 s); checked at the end.
    c_id = _add_alert(db, s0, "测试告警：刷新后出现（丙）", severity="info", age_min=1)

    # Details: the alert's messages below its row (the queued reminder).
    page.click(f"{row_a} .alarm-title")
    _wait(page, f"tr.alarm-detail[data-for='{a_id}'] tr.delivery[data-kind=reminder][data-state=queued]")
    assert "待发送" in page.inner_text(f"tr.alarm-detail[data-for='{a_id}']")

    # Acknowledge with a note, in the inline form.
    page.click(f"{row_a} .ack-open")
    page.fill(f"tr.ack-row[data-for='{a_id}'] input[name=note]", "已电话通知站长处理")
    page.click(f"tr.ack-row[data-for='{a_id}'] button[type=submit]")
    _wait(page, f"{row_a} .t-acked")
    assert page.inner_text(f"{row_a} .t-acked") == "已确认（li-operator）"
    assert page.locator(f"{row_a} .ack-open").count() == 0
    got = operator.get(f"/api/alerts/{a_id}").json()
    assert got["acked_by"] == "li-operator" and got["ack_note"] == "已电话通知站长处理", got
    # The open details follow: the reminder was dropped by the acknowledgement.
    _wait(page, f"tr.alarm-detail[data-for='{a_id}'] tr.delivery[data-kind=reminder][data-state=dropped]")

    # Mute the other one for 2 hours, then lift it.
    page.select_option(f"{row_b} .mute-minutes", "120")
    clicked = time.time() * 1000
    page.click(f"{row_b} button.mute")
    _wait(page, f"{row_b} .t-muted")
    assert "静音至" in page.inner_text(f"{row_b} .t-muted")
    got = operator.get(f"/api/alerts/{b_id}").json()
    assert got["muted_by"] == "li-operator", got
    assert abs(got["muted_until_ms"] - (clicked + 120 * MIN)) < 2 * MIN, (got["muted_until_ms"], clicked)
    page.click(f"{row_b} button.unmute")
    _wait(page, f"{row_b} button.mute")
    assert operator.get(f"/api/alerts/{b_id}").json()["muted_until_ms"] is None

    # Maintenance windows: add one for a station, a reversed one is refused in Chinese, end the first.
    page.fill("#mw-station", s0["id"])
    page.fill("#mw-start", _local(time.time() - 60))
    page.fill("#mw-end", _local(time.time() + 2 * 3600))
    page.fill("#mw-reason", "更换摄像机")
    page.click("#mw-add")
    _wait(page, "#maint-table tr.maint")
    assert "更换摄像机" in page.inner_text("#maint-table") and "进行中" in page.inner_text("#maint-table")
    windows = operator.get("/api/alerts/maintenance").json()
    assert [(w["station_id"], w["reason"], w["created_by"]) for w in windows] == [
        (s0["id"], "更换摄像机", "li-operator")]
    page.fill("#mw-start", _local(time.time() + 3600))
    page.fill("#mw-end", _local(time.time() + 1800))
    page.fill("#mw-reason", "顺序颠倒")
    page.click("#mw-add")
    page.wait_for_function("() => document.getElementById('maint-error').textContent.includes('须晚于开始时间')")
    assert len(operator.get("/api/alerts/maintenance").json()) == 1
    page.click("#maint-table button.mw-end")
    _wait(page, "#maint-list >> text=没有进行中或将来的维护窗口")
    assert operator.get("/api/alerts/maintenance").json() == []

    # The page refreshed itself: the alert written after it opened is listed, the acknowledgement kept.
    _wait(page, f"tr.alarm[data-id='{c_id}']", 20_000)
    assert page.inner_text(f"tr.alarm[data-id='{c_id}'] .sev") == "提示"
    assert page.inner_text(f"{row_a} .t-acked") == "已确认（li-operator）"

    # 已恢复: a page of 50, then 加载更多 brings the rest.
    page.click("#alarm-tabs button[data-state=resolved]")
    page.wait_for_function("() => document.querySelectorAll('tr.alarm[data-state=resolved]').length === 50")
    assert page.locator("tr.alarm[data-state=firing]").count() == 0
    page.click("#alarm-more-page")
    page.wait_for_function(f"() => document.querySelectorAll('tr.alarm').length === {OLD_RESOLVED}")
    assert page.locator("#alarm-more-page").is_hidden()
    assert "已恢复" in page.inner_text("tr.alarm .alarm-status >> nth=0")
    ctx.close()

    # A viewer sees the alerts and their state, and nothing to act with.
    ctx, page = _login(browser, base, "chen-viewer")
    page.goto("/console/#/alarms")
    _wait(page, row_a)
    assert page.locator("tr.alarm").count() == 3
    assert "已确认（li-operator）" in page.inner_text(row_a)
    for control in (".ack-open", "button.mute", "button.unmute", ".mute-minutes", "#maint-panel"):
        assert page.locator(control).count() == 0, control
    page.click(f"{row_a} .alarm-more")
    _wait(page, f"tr.alarm-detail[data-for='{a_id}'] tr.delivery")
    ctx.close()
    operator.close()
    db.dispose()
