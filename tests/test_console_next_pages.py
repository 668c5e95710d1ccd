"""The second-generation console's report pages (issue 19): 调用登记 (access log), 审计报表 (audits) and
告警中心 (alarm center), in a real Chromium against a real `vms serve` serving the console's build.

What each role sees and may do, and that the server refuses what a role may not do (403); the access
log's filters narrow the table and its CSV; a month's audit as tables, charts and CSV/XLSX/PDF files;
an alarm acknowledged with a note shows the note and who; no raw English keys or epoch numbers on
screen; no horizontal overflow at 1366x768 and 1920x1080.

The audit results and alarms are rows written into the serve's database (as tests/test_console_alarms.py
and tests/test_api_console_data.py do): a month of footage cannot be recorded in a test, and the alert
round (off here) would resolve an alarm whose condition does not hold."""

from __future__ import annotations

import csv
import io
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from openpyxl import load_workbook
from sqlalchemy import update

from tests.serve_support import PASSWORD, REPO, run_vms, running_serve
from tests.test_audit_daily import L
from tests.test_audit_monthly import fill
from vms.audit import audit_month
from vms.core.clock import SimulatedClock
from vms.core.settings import load_settings
from vms.db.engine import Database
from vms.db.models import AccessLog, Alert, AlertDelivery, Station

pytestmark = pytest.mark.slow  # a real vms serve and Chromium: not in scripts/test.sh --fast

import playwright.sync_api as playwright_api  # noqa: E402

BUILD = REPO / "vms" / "console" / "next" / "index.html"
MIN = 60_000
DAY = 86_400_000
GOOD, BAD, POOR = "pingshan-town", "pingshan-v01", "pingshan-v03"  # v03 is a poverty village
ADMIN, OPERATOR, VIEWER, AUDITOR = "wang-admin", "li-operator", "chen-viewer", "zhao-auditor"
OLD_ENTRIES = 60  # access log rows of one user: more than a page of 50
# What must never reach an operator's screen: the API's keys and codes, English states, epoch numbers.
RAW_WORDS = re.compile(r"\b(?:[a-z]+_[a-z_]+|firing|resolved|exempt|pass|fail|critical|major|minor|live|playback|"
                       r"snapshot|download|maintenance|undefined|null|NaN|true|false|Invalid Date)\b")
EPOCH = re.compile(r"(?<!\d)\d{13}(?!\d)")
ENGLISH_PHRASE = re.compile(r"\b[A-Za-z]{2,} [A-Za-z]{2,}\b")  # a sentence from the server, e.g. "no longer needed"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not BUILD.exists():
        pytest.fail("the console is not built: run scripts/bootstrap.sh (or cd console && npm ci && npm run build)")
    with running_serve(tmp_path_factory.mktemp("next-pages"), cameras=1, footage_seconds=0,
                       settings={"alerts": {"enabled": False}}) as srv:
        yield srv


@pytest.fixture(scope="module")
def db(server):
    database = Database(f"sqlite:///{server['root'] / 'data' / 'vms.db'}")
    yield database
    database.dispose()


@pytest.fixture(scope="module")
def audited_january(server, db):
    """January 2026 audited from the serve's database: GOOD and POOR pass, BAD fails (few open days,
    three days offline), the other stations fail with no data."""
    with db.engine.begin() as c:
        c.execute(update(Station).values(business_hours="08:00-18:00"))
        fill(c, GOOD, 1, 31, set(range(1, 29)))
        fill(c, BAD, 1, 31, set(range(1, 10)), skip={5, 6, 7})
        fill(c, POOR, 1, 31, set(range(1, 29)))
    settings = load_settings(Path(server["root"] / "vms.yaml"))
    with db.session() as s:
        audit_month(s, settings, SimulatedClock(L("2026-02-01 02:00")), "2026-01")


def api_client(server, name: str) -> httpx.Client:
    r = httpx.post(f"{server['base']}/api/auth/login", json={"username": name, "password": PASSWORD})
    token = r.json()["token"]
    return httpx.Client(base_url=server["base"], headers={"Authorization": f"Bearer {token}"}, timeout=60)


def login(browser, server, name: str, width: int = 1366, height: int = 768):
    ctx = browser.new_context(viewport={"width": width, "height": height}, base_url=server["base"],
                              accept_downloads=True, timezone_id="UTC")  # the page must show Shanghai time anyway
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    page.goto("/console/next/login")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    wait(page, "#menu")
    return ctx, page


def wait(page, selector: str, timeout: float = 15_000) -> None:
    """wait_for_selector that says what the page showed instead of only "timeout"."""
    try:
        page.wait_for_selector(selector, timeout=timeout)
    except playwright_api.TimeoutError:
        raise AssertionError(f"no {selector}; the page shows: {page.inner_text('body')[:1500]!r}") from None


def menu_of(page) -> list[str]:
    return page.eval_on_selector_all("#menu [data-menu]", "els => els.map(e => e.dataset.menu)")


def assert_plain_chinese(page, where: str) -> None:
    text = page.inner_text("main")
    raw = RAW_WORDS.findall(text)
    assert not raw, f"{where}: raw words {raw} in {text[:800]!r}"
    assert not EPOCH.search(text), f"{where}: an epoch number in {text[:800]!r}"
    assert not ENGLISH_PHRASE.search(text), f"{where}: English {ENGLISH_PHRASE.findall(text)} in {text[:800]!r}"


def assert_no_horizontal_overflow(page, where: str) -> None:
    """Neither the window nor the page's content nor a table scrolls sideways."""
    wide = page.evaluate("""() => {
      const out = [];
      const de = document.documentElement;
      if (de.scrollWidth > window.innerWidth + 1) out.push(`document ${de.scrollWidth} > ${window.innerWidth}`);
      for (const el of document.querySelectorAll('.report-page, .el-table__body-wrapper .el-scrollbar__wrap')) {
        if (el.offsetParent && el.scrollWidth > el.clientWidth + 1)
          out.push(`${el.className} ${el.scrollWidth} > ${el.clientWidth}`);
      }
      return out;
    }""")
    assert not wide, f"{where}: {wide}"


def select_option(page, select: str, option: str) -> None:
    """Pick `option` of an Element Plus select (its list is a popper at the end of the body). The click
    is forced: the select's placeholder lies over its input."""
    page.click(select, force=True)
    page.locator(".el-select-dropdown__item:visible", has_text=option).first.click()


# ---------------------------------------------------------------------------------------------- roles
def test_each_role_sees_its_pages_and_the_server_refuses_the_rest(server, browser, audited_january):
    expected = {ADMIN: {"alarms", "audits", "access-log"}, OPERATOR: {"alarms", "audits"},
                AUDITOR: {"alarms", "audits"}, VIEWER: {"alarms"}}
    for name, pages in expected.items():
        ctx, page = login(browser, server, name)
        shown = set(menu_of(page)) & {"alarms", "audits", "access-log"}
        assert shown == pages, (name, menu_of(page))
        # The new pages, not links to the first console.
        for key in pages:
            assert page.locator(f"#menu [data-menu='{key}'] .old-mark").count() == 0, (name, key)
        # An address the role may not open leads to its start page instead of a page of refusals.
        for path, key in (("/console/next/access-log", "access-log"), ("/console/next/audits", "audits")):
            if key not in pages:
                page.goto(path)
                page.wait_for_url(lambda url, p=path: p not in url)
                wait(page, "#menu")
                assert page.locator(".report-page").count() == 0, (name, path)
        ctx.close()

    # The server refuses them too, whatever the page shows.
    month = {"month": "2026-01"}
    refused = {
        OPERATOR: [("GET", "/api/access-log", None), ("GET", "/api/access-log/export.csv", None)],
        AUDITOR: [("GET", "/api/access-log", None), ("POST", "/api/alerts/maintenance",
                                                     {"start": "2026-12-01T08:00:00", "end": "2026-12-01T09:00:00",
                                                      "reason": "x"})],
        VIEWER: [("GET", "/api/audits/monthly", month), ("GET", "/api/audits/daily", {"day": "2026-01-05"}),
                 ("GET", "/api/audits/monthly/download", {**month, "format": "csv"}),
                 ("GET", "/api/access-log/export.csv", None), ("DELETE", "/api/alerts/maintenance/1", None)],
    }
    for name, calls in refused.items():
        with api_client(server, name) as c:
            for method, path, extra in calls:
                if method == "GET":
                    r = c.get(path, params=extra)
                elif method == "POST":
                    r = c.post(path, json=extra)
                else:
                    r = c.delete(path)
                assert r.status_code == 403, (name, method, path, r.status_code, r.text)
    with api_client(server, AUDITOR) as c:
        assert c.get("/api/audits/monthly", params=month).status_code == 200
    with api_client(server, OPERATOR) as c:
        assert c.get("/api/audits/monthly", params=month).status_code == 200


# ---------------------------------------------------------------------------------------------- access log
def _seed_access_log(db, stations: list[str]) -> None:
    now = int(time.time() * 1000)
    rows = [AccessLog(at_ms=now - 3 * DAY - i * MIN, username="sun-old", action="playback", station_id=stations[1],
                      start_ms=now - 4 * DAY, end_ms=now - 4 * DAY + 600_000, reason=f"历史回放{i:02d}",
                      client="10.0.0.9") for i in range(OLD_ENTRIES)]
    rows += [AccessLog(at_ms=now - 10 * MIN, username=OPERATOR, action="export", station_id=stations[0],
                       start_ms=now - DAY, end_ms=now - DAY + 300_000, reason="=HYPERLINK(\"http://x\")",
                       client="10.0.0.5", export_id="exp-test"),
             AccessLog(at_ms=now - 5 * MIN, username=OPERATOR, action="snapshot", station_id=stations[1],
                       reason="巡查抓图", client="10.0.0.5")]
    with db.session() as s:
        s.add_all(rows)


def _table_rows(page, table: str) -> list[str]:
    return page.eval_on_selector_all(f"{table} .el-table__body tbody tr", "trs => trs.map(t => t.innerText)")


def _wait_rows(page, table: str, predicate: str) -> None:
    """Until the table's rows (their texts, `rows`) satisfy the JavaScript `predicate`."""
    try:
        page.wait_for_function(f"""() => {{
          if (document.querySelector('{table} .el-loading-mask:not([style*="display: none"])')) return false;
          const rows = [...document.querySelectorAll('{table} .el-table__body tbody tr')].map(t => t.innerText);
          return {predicate};
        }}""")
    except playwright_api.TimeoutError:
        raise AssertionError(f"{table}: {predicate} never held; rows: {_table_rows(page, table)[:5]}") from None


def _download(page, button: str) -> tuple[str, bytes]:
    with page.expect_download() as info:
        page.click(button)
    d = info.value
    return d.suggested_filename, Path(d.path()).read_bytes()


def test_access_log_filters_pages_and_exports_the_filtered_rows(server, browser, db):
    stations = ["pingshan-town", "pingshan-v01"]
    _seed_access_log(db, stations)
    with api_client(server, VIEWER) as c:  # one entry the API itself records
        r = c.post(f"/api/stations/{server['stations'][0]}/live-views", json={"reason": "值班巡查"})
        assert r.status_code == 201, r.text
    with api_client(server, ADMIN) as c:
        names = {s["id"]: s["name"] for s in c.get("/api/stations").json()["stations"]}
        total = len(c.get("/api/access-log", params={"limit": 1000}).json()["entries"])
    assert total == OLD_ENTRIES + 3

    ctx, page = login(browser, server, ADMIN)
    page.click("#menu [data-menu='access-log']")
    page.wait_for_url("**/console/next/access-log")
    # Newest first, a page of 50, in Chinese: the viewer's live view on top.
    _wait_rows(page, "#access-table", "rows.length === 50")
    first = _table_rows(page, "#access-table")[0]
    assert VIEWER in first and "实时查看" in first and "值班巡查" in first and "实时画面" in first
    assert names[server["stations"][0]] in first
    assert_plain_chinese(page, "access log")
    page.click("#al-next")
    _wait_rows(page, "#access-table", f"rows.length === {total - 50}")
    assert "第 2 页" in page.inner_text("#al-page")
    assert page.locator("#al-next").is_disabled()
    page.click("#al-prev")
    _wait_rows(page, "#access-table", "rows.length === 50")

    # By user: only the operator's two entries, with the station's name and the action in Chinese.
    select_option(page, "#al-user", OPERATOR)
    page.click("#al-search")
    _wait_rows(page, "#access-table", "rows.length === 2")
    rows = _table_rows(page, "#access-table")
    assert all(OPERATOR in r for r in rows)
    assert "抓图" in rows[0] and "录像导出" in rows[1] and names[stations[0]] in rows[1]
    # The CSV has exactly these rows: Chinese headers, BOM, local times, the formula defused.
    filename, body = _download(page, "#al-csv")
    assert filename.endswith(".csv") and body.startswith(b"\xef\xbb\xbf")
    table = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert table[0][:4] == ["时间", "用户", "操作", "站点编号"]
    assert [(r[1], r[2]) for r in table[1:]] == [(OPERATOR, "抓图"), (OPERATOR, "录像导出")]
    assert table[2][7] == "'=HYPERLINK(\"http://x\")" and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", table[1][0])

    # By action and station (user cleared): the old playbacks of v01.
    page.click("#al-reset")
    _wait_rows(page, "#access-table", "rows.length === 50")
    select_option(page, "#al-action", "录像回放")
    page.click("#al-station", force=True)
    page.keyboard.type("pingshan")  # pinyin finds the station
    page.locator(".el-select-dropdown__item:visible", has_text=names[stations[1]]).first.click()
    page.click("#al-search")
    _wait_rows(page, "#access-table", "rows.length === 50 && rows.every(r => r.includes('录像回放'))")
    _, body = _download(page, "#al-csv")
    table = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert len(table) == 1 + OLD_ENTRIES and {(r[2], r[3]) for r in table[1:]} == {("录像回放", stations[1])}

    # By time: the last 24 hours leave out the three-day-old playbacks.
    page.click("#al-reset")
    _wait_rows(page, "#access-table", "rows.length === 50")
    page.locator("#access-filters .f-range input").first.click()
    page.locator(".el-picker-panel__shortcut:visible", has_text="最近 24 小时").click()
    page.click("#al-search")
    _wait_rows(page, "#access-table", "rows.length === 3")
    assert not any("sun-old" in r for r in _table_rows(page, "#access-table"))
    _, body = _download(page, "#al-csv")
    assert len(list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))) == 1 + 3
    assert_plain_chinese(page, "access log filtered")
    ctx.close()


# ---------------------------------------------------------------------------------------------- audits
def test_audits_month_tables_charts_verdicts_and_downloads(server, browser, audited_january):
    ctx, page = login(browser, server, AUDITOR)
    page.goto("/console/next/audits?month=2026-01")
    wait(page, "#audit-stations .el-table__body tbody tr")
    # The rules with their thresholds, and what each verdict means.
    rules = page.inner_text("#audit-rules")
    assert "在线率不低于 95%" in rules and "录像覆盖率不低于 95%" in rules and "满 6 小时" in rules
    assert "不少于 20 天" in rules
    for word in ("达标", "不达标", "不考核"):
        assert word in rules
    summary = page.inner_text("#audit-summary")
    assert "2026年1月" in summary and "2026-02-01 02:00" in summary and "站点总数\n139" in summary
    # Charts drawn by ECharts on a canvas of a real size.
    for chart in ("#chart-towns", "#chart-online"):
        size = page.eval_on_selector(f"{chart} canvas", "c => [c.width, c.height]")
        assert size[0] > 200 and size[1] > 100, (chart, size)
    assert page.inner_text(".audit-town") == "全县"
    towns = _table_rows(page, "#audit-towns")
    assert towns[0].startswith("平山街道")

    # Station verdicts with their reasons in Chinese.
    def row_of(name: str) -> str:
        return next(r for r in _table_rows(page, "#audit-stations") if name in r)

    with api_client(server, AUDITOR) as c:
        report = c.get("/api/audits/monthly", params={"month": "2026-01"}).json()
    by_id = {s["station_id"]: s for s in report["stations"]}
    good, bad = row_of(by_id[GOOD]["name"]), row_of(by_id[BAD]["name"])
    assert "达标" in good and "不达标" not in good and "100.0%" in good and "各项指标均达到要求" in good
    assert "不达标" in bad and "少于要求的 20 天" in bad and "低于 95%" in bad
    assert "贫困村" in row_of(by_id[POOR]["name"])
    page.click("#audit-status label:has-text('不达标')")
    page.wait_for_function("() => [...document.querySelectorAll('#audit-stations tbody .verdict')]"
                           ".every(t => t.innerText === '不达标')")
    assert_plain_chinese(page, "audits monthly")

    # Files of the month as the county files them.
    name, body = _download(page, "#dl-csv")
    assert name == "audit-2026-01.csv" and body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    assert len(rows) == 139 and next(r for r in rows if r["站点编号"] == GOOD)["考核结果"] == "达标"
    name, body = _download(page, "#dl-xlsx")
    assert name == "audit-2026-01.xlsx"
    assert load_workbook(io.BytesIO(body)).sheetnames == ["站点考核", "乡镇汇总", "每日开门时长"]
    with page.expect_download(timeout=90_000) as info:
        page.click("#dl-pdf")
    assert info.value.suggested_filename == "audit-2026-01.pdf"
    assert Path(info.value.path()).read_bytes().startswith(b"%PDF")

    # While another PDF is printing (one at a time for the whole server), the page says to try again.
    # Another client keeps the printer busy; the page's request almost always finds it so, and is retried.
    stop = threading.Event()

    def keep_printing() -> None:
        with api_client(server, AUDITOR) as c:
            while not stop.is_set():
                c.get("/api/audits/monthly/download", params={"month": "2026-01", "format": "pdf"})

    printer = threading.Thread(target=keep_printing, daemon=True)
    printer.start()
    try:
        time.sleep(0.5)
        for _ in range(5):
            page.click("#dl-pdf")
            page.wait_for_function("() => !document.querySelector('#dl-pdf').classList.contains('is-loading')",
                                   timeout=90_000)
            if page.locator("#audit-download-error").count():
                break
    finally:
        stop.set()
        printer.join(120)
    assert "另一份 PDF 报告正在生成，请稍等片刻后再点一次下载" in page.inner_text("#audit-download-error")
    page.click("#audit-download-error .el-alert__close-btn")

    # A town: its stations only, the chart by station.
    page.click("#audit-towns .el-table__body tbody tr:first-child")
    page.wait_for_url(re.compile(r"town=%E5%B9%B3%E5%B1%B1"))
    wait(page, "#audit-stations .el-table__body tbody tr")
    page.wait_for_function("() => document.querySelector('#audit-summary').innerText.includes('平山街道')")
    assert "各站点在线率" in page.inner_text("main")

    # A month without results says so, and so does its download (the API's Chinese message).
    page.goto("/console/next/audits?month=2025-11")
    wait(page, "#audit-empty")
    assert "还没有考核结果" in page.inner_text("#audit-empty")
    page.click("#dl-csv")
    wait(page, "#audit-download-error")
    assert "2025-11 还没有考核结果" in page.inner_text("#audit-download-error")

    # A day of the daily audit.
    page.goto("/console/next/audits?tab=daily&day=2026-01-05")
    wait(page, "#audit-daily-stations .el-table__body tbody tr")
    assert "2026年1月5日" in page.inner_text("#audit-summary")
    assert page.eval_on_selector("#chart-daily canvas", "c => c.width") > 200
    assert_plain_chinese(page, "audits daily")
    ctx.close()


def test_a_town_limited_user_gets_the_reports_of_their_towns_only(server, browser, audited_january):
    run_vms(server["env"], "users", "create", "zhou-pingshan", "--role", "operator", "--towns", "平山街道,大岭街道",
            "--password-stdin", stdin=PASSWORD + "\n")
    ctx, page = login(browser, server, "zhou-pingshan")
    page.goto("/console/next/audits?month=2026-01")
    wait(page, "#audit-stations .el-table__body tbody tr")
    assert "平山街道" in page.inner_text("#audit-summary")
    towns = {r.split("\n")[1].split(" · ")[0] for r in _table_rows(page, "#audit-stations")}
    assert towns == {"平山街道"}
    page.click("#audit-town", force=True)
    page.locator(".el-select-dropdown__item:visible").first.wait_for()
    choices = page.eval_on_selector_all(".el-select-dropdown__item:visible", "els => els.map(e => e.innerText)")
    assert choices == ["平山街道", "大岭街道"]  # their towns, no 全县
    page.keyboard.press("Escape")
    # The server refuses the county and other towns to them.
    with api_client(server, "zhou-pingshan") as c:
        assert c.get("/api/audits/monthly", params={"month": "2026-01", "town": "白花镇"}).status_code == 403
        assert c.get("/api/audits/monthly", params={"month": "2026-01"}).status_code == 400
    ctx.close()


# ---------------------------------------------------------------------------------------------- alarms
def _add_alert(db, station: dict, title: str, severity: str = "major", state: str = "firing") -> int:
    now = int(time.time() * 1000)
    with db.session() as s:
        a = Alert(key=f"camera_offline:{station['id']}:{title}", rule="camera_offline", severity=severity,
                  station_id=station["id"], town=station["town"], title=title, detail=f"{title}：测试详情",
                  state=state, since_ms=now - 20 * MIN, fired_ms=now - 15 * MIN,
                  resolved_ms=now - MIN if state == "resolved" else None, one_shot=False, notified=True,
                  reminders=1 if state == "firing" else 0,
                  next_reminder_ms=now + 30 * MIN if state == "firing" else None, updated_ms=now)
        s.add(a)
        s.flush()
        if state == "firing":  # a reminder waiting to be sent: acknowledging drops it
            s.add(AlertDelivery(alert_id=a.id, channel="ops", kind="reminder", severity=severity, state="queued",
                                attempts=0, created_ms=now, next_attempt_ms=now + 10 * MIN, items=1))
        return a.id


def test_alarm_center_ack_with_note_mute_maintenance_and_roles(server, browser, db):
    with api_client(server, OPERATOR) as c:
        s0 = c.get("/api/stations/pingshan-town").json()
        s1 = c.get("/api/stations/pingshan-v01").json()
    a_id = _add_alert(db, s0, "测试告警：摄像机离线（甲）")
    b_id = _add_alert(db, s1, "测试告警：摄像机离线（乙）", severity="critical")
    old_id = _add_alert(db, s1, "测试告警：已恢复（丙）", state="resolved")
    row_a, row_b = f"tr.alarm-{a_id}", f"tr.alarm-{b_id}"

    ctx, page = login(browser, server, OPERATOR)
    page.click("#menu [data-menu='alarms']")
    wait(page, row_a)
    # 进行中: the firing ones, newest first, in Chinese with station names and local times.
    ids = page.eval_on_selector_all("#alarm-table tbody tr.alarm", "trs => trs.map(t => t.className)")
    assert page.locator(f"tr.alarm-{old_id}").count() == 0
    assert ids.index(next(c for c in ids if f"alarm-{b_id} " in c + " ")) < ids.index(
        next(c for c in ids if f"alarm-{a_id} " in c + " "))
    text_a = page.inner_text(row_a)
    assert "重要" in text_a and s0["name"] in text_a and "告警中" in text_a and "已持续 20分钟" in text_a
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text_a)
    assert "紧急" in page.inner_text(row_b)
    assert_plain_chinese(page, "alarms")

    # Details: the queued reminder.
    page.click(f"{row_a} .alarm-more")
    wait(page, f".alarm-detail-{a_id} tr.kind-reminder.dstate-queued")
    assert "待发送" in page.inner_text(f".alarm-detail-{a_id}")

    # Acknowledge with a note: who and the note, in the row and the details; the reminder dropped.
    page.click(f"{row_a} .ack-open")
    page.fill("#ack-note", "已电话通知站长处理")
    page.click("#ack-submit")
    wait(page, f"{row_a} .t-acked")
    assert page.inner_text(f"{row_a} .t-acked") == "已确认（li-operator）"
    assert "备注：已电话通知站长处理" in page.inner_text(row_a)
    assert page.locator(f"{row_a} .ack-open").count() == 0
    wait(page, f".alarm-detail-{a_id} tr.kind-reminder.dstate-dropped")
    assert "li-operator 于" in page.inner_text(f".alarm-detail-{a_id}")
    assert "告警已确认或已恢复，无需再发" in page.inner_text(f".alarm-detail-{a_id}")  # not the dispatcher's English
    assert "确认：已电话通知站长处理" in page.inner_text(f".alarm-detail-{a_id}")
    assert_plain_chinese(page, "alarm acknowledged, details open")
    with api_client(server, OPERATOR) as c:
        got = c.get(f"/api/alerts/{a_id}").json()
    assert got["acked_by"] == OPERATOR and got["ack_note"] == "已电话通知站长处理"

    # Mute for 8 hours, then lift it.
    select_option(page, f"{row_b} .mute-minutes", "8 小时")
    clicked = time.time() * 1000
    page.click(f"{row_b} button.mute")
    wait(page, f"{row_b} .t-muted")
    assert "静音至" in page.inner_text(f"{row_b} .t-muted")
    with api_client(server, OPERATOR) as c:
        got = c.get(f"/api/alerts/{b_id}").json()
        assert got["muted_by"] == OPERATOR and abs(got["muted_until_ms"] - (clicked + 480 * MIN)) < 2 * MIN
        page.click(f"{row_b} button.unmute")
        wait(page, f"{row_b} button.mute")
        assert c.get(f"/api/alerts/{b_id}").json()["muted_until_ms"] is None

    # A maintenance window for a town, shown with its state; then ended.
    select_option(page, "#mw-town", "平山街道")
    page.fill("#mw-reason", "供电检修")
    page.click("#mw-add")
    wait(page, "#maint-table tr.maint")
    maint = page.inner_text("#maint-table")
    assert "镇街：平山街道" in maint and "供电检修" in maint and "进行中" in maint and OPERATOR in maint
    with api_client(server, OPERATOR) as c:
        windows = c.get("/api/alerts/maintenance").json()
    assert [(w["town"], w["reason"], w["created_by"]) for w in windows] == [("平山街道", "供电检修", OPERATOR)]
    assert_plain_chinese(page, "alarms after actions")
    page.click("#maint-table .mw-end")
    page.click(".el-message-box__btns .el-button--primary")
    page.wait_for_function("() => !document.querySelector('#maint-table tr.maint')")
    with api_client(server, OPERATOR) as c:
        assert c.get("/api/alerts/maintenance").json() == []

    # 已恢复: the resolved one.
    page.click("#alarm-tabs .el-tabs__item:has-text('已恢复')")
    wait(page, f"tr.alarm-{old_id}")
    assert "已恢复" in page.inner_text(f"tr.alarm-{old_id}")
    assert page.locator("tr.state-firing").count() == 0
    ctx.close()

    # A viewer and an auditor see the alarms, the acknowledgement and the windows, and nothing to act with;
    # the server refuses them.
    for name in (VIEWER, AUDITOR):
        ctx, page = login(browser, server, name)
        page.goto("/console/next/alarms")
        wait(page, row_a)
        text = page.inner_text(row_a)
        assert "已确认（li-operator）" in text and "备注：已电话通知站长处理" in text
        for control in (".ack-open", "button.mute", "button.unmute", ".mute-minutes", "#maint-form", ".mw-end"):
            assert page.locator(control).count() == 0, (name, control)
        wait(page, "#maint-panel")
        ctx.close()
        with api_client(server, name) as c:
            assert c.post(f"/api/alerts/{b_id}/ack", json={"note": "x"}).status_code == 403
            assert c.post(f"/api/alerts/{b_id}/mute", json={"minutes": 30}).status_code == 403
            assert c.delete(f"/api/alerts/{b_id}/mute").status_code == 403


# ---------------------------------------------------------------------------------------------- screen sizes
@pytest.fixture(scope="module")
def rows_to_show(server, db):
    """An access-log entry and a firing alarm with a long title, so that every table has rows to lay out
    when this test runs alone."""
    with api_client(server, VIEWER) as c:
        r = c.post(f"/api/stations/{server['stations'][0]}/live-views", json={"reason": "屏幕尺寸检查"})
        assert r.status_code == 201, r.text
    with api_client(server, OPERATOR) as c:
        station = c.get("/api/stations/pingshan-v02").json()
    _add_alert(db, station, "测试告警：一条很长的告警标题，用来检查表格在小屏幕上是否会撑出横向滚动条" * 2)


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)], ids=["1366x768", "1920x1080"])
def test_pages_fit_the_screen(server, browser, db, audited_january, rows_to_show, size):
    ctx, page = login(browser, server, ADMIN, *size)
    for path, ready in (("/console/next/access-log", "#access-table .el-table__body tbody tr"),
                        ("/console/next/audits?month=2026-01", "#audit-stations .el-table__body tbody tr"),
                        ("/console/next/audits?tab=daily&day=2026-01-05",
                         "#audit-daily-stations .el-table__body tbody tr"),
                        ("/console/next/alarms", "#alarm-table tr.alarm")):
        page.goto(path)
        wait(page, ready)
        page.wait_for_timeout(300)  # the tables lay out their columns after the rows arrive
        assert_no_horizontal_overflow(page, f"{path} at {size}")
        assert_plain_chinese(page, path)
    ctx.close()
