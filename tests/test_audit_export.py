"""Exports (CSV, XLSX, HTML, PDF with Chinese text) and the `vms audit` commands, on real files."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
from openpyxl import load_workbook
from pypdf import PdfReader
from sqlalchemy import update
from typer.testing import CliRunner

from tests.test_audit_daily import L
from tests.test_audit_monthly import fill
from vms.audit import audit_month, monthly_report
from vms.audit.export import ExportError, export_monthly
from vms.cli import app
from vms.cli import context as cli_context
from vms.core.clock import SimulatedClock
from vms.db.models import Station

GOOD, BAD, POOR = "pingshan-town", "pingshan-v01", "pingshan-v03"  # v03 is a poverty village


@pytest.fixture
def audited(db, settings):
    with db.engine.begin() as c:
        c.execute(update(Station).values(business_hours="08:00-18:00"))
        fill(c, GOOD, 1, 31, set(range(1, 29)))
        fill(c, BAD, 1, 31, set(range(1, 10)), skip={5, 6, 7})
        fill(c, POOR, 1, 31, set(range(1, 29)))
    with db.session() as s:
        audit_month(s, settings, SimulatedClock(L("2026-02-01 02:00")), "2026-01")
        return monthly_report(s, "2026-01")


def test_csv_and_xlsx(audited, tmp_path):
    out = export_monthly(audited, "csv", tmp_path / "m.csv", "Asia/Shanghai", L("2026-02-01 03:00"))
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Excel opens it as UTF-8
    rows = list(csv.DictReader(out.open(encoding="utf-8-sig")))
    assert len(rows) == 139
    bad = next(r for r in rows if r["站点编号"] == BAD)
    assert bad["考核结果"] == "不达标" and bad["乡镇"] == "平山街道"
    assert "few_open_days" in bad["原因代码"] and "低于 95%" in bad["原因"]
    good = next(r for r in rows if r["站点编号"] == GOOD)
    assert good["考核结果"] == "达标" and good["在线率(%)"] == "100.0" and good["原因"] == ""

    x = export_monthly(audited, "xlsx", tmp_path / "m.xlsx", "Asia/Shanghai", 0)
    wb = load_workbook(x)
    assert wb.sheetnames == ["站点考核", "乡镇汇总", "每日开门时长"]
    ws = wb["站点考核"]
    assert ws.max_row == 140 and ws["A1"].value == "乡镇"
    towns = [r[0].value for r in wb["乡镇汇总"].iter_rows(min_row=2)]
    assert towns[0] == "平山街道" and towns[-2:] == ["全县合计", "省定贫困村"]
    days = wb["每日开门时长"]
    assert days.max_column == 2 + 31
    good_row = next(r for r in days.iter_rows(min_row=2, values_only=True) if r[1] == "惠东县平山街道电子商务服务站")
    assert good_row[2] == 8.0 and good_row[-1] == 0.0


@pytest.mark.slow  # Chromium prints the PDF
def test_html_and_pdf_in_chinese(audited, tmp_path):
    html = export_monthly(audited, "html", tmp_path / "m.html", "Asia/Shanghai", L("2026-02-01 03:00"))
    text = html.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in text and text.count("<svg") == 1 + 16  # town bars + one heat map per town
    assert "惠东县农村电子商务服务站点运行考核月报（2026年1月）" in text
    assert "不达标站点及原因" in text and "惠东县平山街道待定01村电子商务服务点" in text
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: run scripts/bootstrap.sh")
    pdf = export_monthly(audited, "pdf", tmp_path / "m.pdf", "Asia/Shanghai", L("2026-02-01 03:00"))
    reader = PdfReader(pdf)
    assert len(reader.pages) >= 3
    # NFKC: the font's text layer maps some characters to Kangxi radicals (⽉ for 月).
    first = unicodedata.normalize("NFKC", reader.pages[0].extract_text())
    assert "运行考核月报" in first and "省定贫困村" in first  # real CJK glyphs with a text layer
    all_text = unicodedata.normalize("NFKC", "".join(p.extract_text() for p in reader.pages))
    # (门 comes out as the radical ⻔, which NFKC leaves alone: match around it)
    assert "满6小时的天数为6天,少于要求的20天" in re.sub(r"\s+", "", all_text)
    # Rendered, the first page is not blank.
    png = tmp_path / "p1"
    subprocess.run(["pdftoppm", "-r", "30", "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(png)],
                   check=True)
    assert Path(f"{png}.png").stat().st_size > 5000


def test_export_refuses_an_unaudited_month(db, tmp_path):
    with db.session() as s:
        rep = monthly_report(s, "2025-12")
    with pytest.raises(ExportError, match="vms audit run --month 2025-12"):
        export_monthly(rep, "csv", tmp_path / "x.csv", "Asia/Shanghai", 0)
    with pytest.raises(ExportError, match="does not exist"):
        export_monthly(rep, "csv", tmp_path / "no" / "x.csv", "Asia/Shanghai", 0)


@pytest.fixture
def cli_env(db, settings, monkeypatch):
    monkeypatch.setenv("VMS_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("VMS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("VMS_CONFIG", str(Path(settings.data_dir).parent / "none.yaml"))
    Path(settings.data_dir).parent.joinpath("none.yaml").write_text("{}\n")
    cli_context.settings.cache_clear()
    cli_context.database.cache_clear()
    yield db
    cli_context.settings.cache_clear()
    cli_context.database.cache_clear()


def test_cli_run_show_export(cli_env, tmp_path):
    with cli_env.engine.begin() as c:
        fill(c, GOOD, 1, 3, {1, 2})
    runner = CliRunner()
    r = runner.invoke(app, ["audit", "run", "--day", "2025-12-31"])
    assert r.exit_code == 0, r.output
    assert "audited 2025-12-31: 139 station rows" in r.output
    r = runner.invoke(app, ["audit", "show", "--day", "2025-12-31", "--town", "平山街道", "--format", "json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["audited"] and len(rep["stations"]) == 9
    r = runner.invoke(app, ["audit", "show", "--month", "2025-12"])
    assert r.exit_code == 1 and "vms audit run --month 2025-12" in r.output
    r = runner.invoke(app, ["audit", "run", "--day", "2025-12-31", "--month", "2025-12"])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = runner.invoke(app, ["audit", "run", "--month", "2025-13"])
    assert r.exit_code == 2 and "月须为 01 至 12" in r.output
    r = runner.invoke(app, ["audit", "show", "--day", "2025-12-31", "--town", "北京"])
    assert r.exit_code == 2 and "没有镇街" in r.output
    r = runner.invoke(app, ["audit", "run", "--month", "2025-12"])  # not a terminal: no progress bar
    assert r.exit_code == 0 and "audited 2025-12: 31 days, 139 stations" in r.output
    r = runner.invoke(app, ["audit", "show", "--month", "2025-12", "--town", "平山街道"])
    assert r.exit_code == 0 and "不达标" in r.output
    out = str(tmp_path / "a.csv")
    r = runner.invoke(app, ["audit", "export", "--month", "2025-12", "--format", "csv", "--out", out])
    assert r.exit_code == 0 and (tmp_path / "a.csv").exists()
    r = runner.invoke(app, ["audit", "active-since", "pingshan-v02", "2025-12-20"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", "active-since", "pingshan-v02", "20.12.2025"])
    assert r.exit_code == 2 and "YYYY-MM-DD" in r.output
    r = runner.invoke(app, ["audit", "active-since", "nope", "2025-12-20"])
    assert r.exit_code == 2 and "unknown station 'nope'" in r.output
    r = runner.invoke(app, ["audit", "run", "--month", "2025-12"])
    r = runner.invoke(app, ["audit", "show", "--month", "2025-12", "--format", "json"])
    v02 = next(i for i in json.loads(r.output)["stations"] if i["station_id"] == "pingshan-v02")
    assert v02["active_days"] == 12 and v02["required_open_days"] == 8  # ceil(20 x 12 / 31)
