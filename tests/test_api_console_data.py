"""What the operators' console reads besides status and live: the playback calendar, the download
center's export notes, the access log as a spreadsheet, the audit reports as files."""

from __future__ import annotations

import csv
import io

import pytest
from openpyxl import load_workbook
from sqlalchemy import update
from test_api_helpers import add_segments, api, clip, login  # noqa: F401 - fixtures

from tests.test_audit_daily import L
from tests.test_audit_monthly import fill
from vms.api.routers import audits as audits_router
from vms.audit import audit_month
from vms.core.clock import SimulatedClock
from vms.db.models import Gap, Station
from vms.recording.volumes import VolumeSet

SID = "pingshan-town"


def test_footage_days_split_at_local_midnight_and_count_gaps(api, db, clock, settings, clip):  # noqa: F811
    volumes = VolumeSet.from_settings(settings)
    # 20 s from 23:59:50 on the last day of 2025 (local): 10 s on each side of midnight.
    add_segments(db, volumes, clip, SID, L("2025-12-31 23:59:50"), 1, settings.tz, seconds=20)
    add_segments(db, volumes, clip, SID, L("2026-01-01 07:00:00"), 3, settings.tz, seconds=60)
    add_segments(db, volumes, clip, SID, L("2026-01-01 23:59:50"), 1, settings.tz, seconds=30)  # inside the month
    with db.session() as s:
        s.add(Gap(station_id=SID, stream="main", node="n", start_ms=L("2026-01-01 07:03:00"),
                  end_ms=L("2026-01-01 07:10:00"), reason="unreachable"))
        s.add(Gap(station_id=SID, stream="main", node="n", start_ms=L("2025-12-20 10:00:00"),
                  end_ms=L("2025-12-20 11:00:00"), reason="ingest_stopped"))
    view = login(api, "view")
    dec = api.get(f"/api/stations/{SID}/footage-days", params={"month": "2025-12"}, headers=view)
    assert dec.status_code == 200, dec.text
    assert dec.json()["days"] == [{"day": "2025-12-20", "recorded_ms": 0, "gaps": 1},
                                  {"day": "2025-12-31", "recorded_ms": 10_000, "gaps": 0}]
    jan = api.get(f"/api/stations/{SID}/footage-days", params={"month": "2026-01"}, headers=view).json()
    assert jan["days"] == [{"day": "2026-01-01", "recorded_ms": 10_000 + 180_000 + 10_000, "gaps": 1},
                           {"day": "2026-01-02", "recorded_ms": 20_000, "gaps": 0}]
    assert api.get(f"/api/stations/{SID}/footage-days", params={"month": "2025-11"},
                   headers=view).json()["days"] == []
    for bad in ("2026-13", "2026-1", "26-01", "２０２６-01", "2026-01-01"):
        r = api.get(f"/api/stations/{SID}/footage-days", params={"month": bad}, headers=view)
        assert r.status_code == 422, bad
    # A town-limited operator sees only their towns' calendars.
    other = api.get("/api/stations/baihua-town/footage-days", params={"month": "2026-01"},
                    headers=login(api, "op_ph"))
    assert other.status_code in (403, 404)


def test_export_says_when_its_range_ran_past_now_or_crossed_a_gap(api, db, clock, settings, clip):  # noqa: F811
    now = clock.now_ms()
    t0 = now - 120_000
    add_segments(db, VolumeSet.from_settings(settings), clip, SID, t0, 2, settings.tz, gap_after={0: 20_000})
    with db.session() as s:
        s.add(Gap(station_id=SID, stream="main", node="n", start_ms=t0 + 10_000, end_ms=t0 + 30_000,
                  reason="stalled"))
    op = login(api, "op")
    whole = api.post("/api/exports", headers=op, json={"station_id": SID, "start": str(t0), "end": str(now + 60_000),
                                                      "reason": "核查"})
    assert whole.status_code == 202, whole.text
    job = whole.json()
    assert job["ran_past_now"] is True
    assert [(g["reason"], g["reason_text"]) for g in job["gaps"]] == [("stalled", "码流中断")]
    assert len(job["notes"]) == 2 and "晚于提交时间" in job["notes"][0] and "1 段录像缺失" in job["notes"][1]
    assert all(not c.isascii() or c.isdigit() or c in " -:（）" for c in "".join(job["notes"]) if not c.isspace())
    clean = api.post("/api/exports", headers=op, json={"station_id": SID, "start": str(t0), "end": str(t0 + 9000),
                                                      "reason": "核查"}).json()
    assert clean["ran_past_now"] is False and clean["gaps"] == [] and clean["notes"] == []
    # The list (the download center) carries the same notes.
    listed = {j["id"]: j for j in api.get("/api/exports", headers=op).json()}
    assert listed[job["id"]]["notes"] == job["notes"] and listed[clean["id"]]["notes"] == []


def test_access_log_csv_for_spreadsheets(api, db):  # noqa: F811
    view = login(api, "view")
    for reason in ("巡查", "=HYPERLINK(\"http://evil\")", "-2+3"):
        r = api.post(f"/api/stations/{SID}/live-views", headers=view, json={"reason": reason})
        assert r.status_code == 201
    admin = login(api, "admin")
    r = api.get("/api/access-log/export.csv", headers=admin, params={"action": "live"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")  # Excel reads UTF-8 only with the BOM
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][:4] == ["时间", "用户", "操作", "站点编号"]
    body = rows[1:]
    assert len(body) == 3 and {row[2] for row in body} == {"实时查看"}
    assert {row[4] for row in body} == {"惠东县平山街道电子商务服务站"}
    reasons = [row[7] for row in body]
    # Newest first; formulas defused with a leading apostrophe.
    assert reasons == ["'-2+3", "'=HYPERLINK(\"http://evil\")", "巡查"]
    assert all(len(row[0]) == 19 and row[0][4] == "-" and row[0][10] == " " for row in body)  # local date-time
    # Filters as the list's; a wrong one is refused; only admins may read it.
    assert len(list(csv.reader(io.StringIO(api.get("/api/access-log/export.csv", headers=admin,
                                                   params={"username": "nobody"}).text)))) == 1
    assert api.get("/api/access-log/export.csv", headers=admin, params={"action": "bogus"}).status_code == 422
    assert api.get("/api/access-log/export.csv", headers=login(api, "op")).status_code == 403


@pytest.fixture
def audited_january(db, settings):
    with db.engine.begin() as c:
        c.execute(update(Station).values(business_hours="08:00-18:00"))
        fill(c, SID, 1, 31, set(range(1, 29)))
    with db.session() as s:
        audit_month(s, settings, SimulatedClock(L("2026-02-01 02:00")), "2026-01")


def test_monthly_audit_downloads(api, audited_january):  # noqa: F811
    aud = login(api, "aud")
    r = api.get("/api/audits/monthly/download", params={"month": "2026-01", "format": "csv"}, headers=aud)
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert len(rows) == 139 and next(x for x in rows if x["站点编号"] == SID)["考核结果"] == "达标"
    assert "audit-2026-01.csv" in r.headers["content-disposition"]
    x = api.get("/api/audits/monthly/download", params={"month": "2026-01", "format": "xlsx"}, headers=aud)
    assert x.status_code == 200
    assert load_workbook(io.BytesIO(x.content)).sheetnames == ["站点考核", "乡镇汇总", "每日开门时长"]
    p = api.get("/api/audits/monthly/download", params={"month": "2026-01", "format": "pdf", "town": "平山街道"},
                headers=aud)
    assert p.status_code == 200 and p.content.startswith(b"%PDF")
    # One PDF at a time; a month not audited yet says so; bad format refused; viewers may not.
    assert audits_router._pdf_printing.acquire(blocking=False)
    try:
        busy = api.get("/api/audits/monthly/download", params={"month": "2026-01", "format": "pdf"}, headers=aud)
        assert busy.status_code == 429 and busy.json()["code"] == "audit_pdf_busy"
    finally:
        audits_router._pdf_printing.release()
    missing = api.get("/api/audits/monthly/download", params={"month": "2025-11", "format": "csv"}, headers=aud)
    assert missing.status_code == 404 and missing.json()["code"] == "audit_not_run"
    assert "考核" in missing.json()["detail"]
    assert api.get("/api/audits/monthly/download", params={"month": "2026-01", "format": "exe"},
                   headers=aud).status_code == 422
    assert api.get("/api/audits/monthly/download", params={"month": "2026-01", "format": "csv"},
                   headers=login(api, "view")).status_code == 403
