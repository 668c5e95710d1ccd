"""Exports of a monthly report: CSV, XLSX (openpyxl), printable HTML (Jinja2 + inline SVG) and PDF
(the HTML printed by headless Chromium; Chinese text needs fonts-noto-cjk)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, select_autoescape

from vms.audit.charts import open_hours_heatmap, town_bars
from vms.core.errors import VmsError

STATUS_ZH = {"pass": "达标", "fail": "不达标", "exempt": "不考核"}
LEVEL_ZH = {"town": "镇级", "village": "村级"}
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FORMATS = ("csv", "xlsx", "html", "pdf")

STATION_COLUMNS = [
    ("乡镇", lambda s: s["town"]),
    ("站点编号", lambda s: s["station_id"]),
    ("站点名称", lambda s: s["name"]),
    ("级别", lambda s: LEVEL_ZH.get(s["level"], s["level"])),
    ("省定贫困村", lambda s: "是" if s["poverty_village"] else ""),
    ("考核结果", lambda s: STATUS_ZH[s["status"]]),
    ("在线率(%)", lambda s: s.get("online_percent")),
    ("录像覆盖率(%)", lambda s: s.get("coverage_percent")),
    ("开门达标天数", lambda s: s.get("open_days")),
    ("要求天数", lambda s: s.get("required_open_days")),
    ("在役天数", lambda s: s.get("active_days")),
    ("全天无录像天数", lambda s: s.get("no_footage_days")),
    ("全天离线天数", lambda s: s.get("offline_days")),
    ("活动次数", lambda s: s.get("activity_episodes")),
    ("原因", lambda s: "；".join(r["message"] for r in s["reasons"])),
    ("原因代码", lambda s: ",".join(r["code"] for r in s["reasons"])),
]


class ExportError(VmsError):
    pass


def _require_audited(report: dict) -> None:
    if not report.get("audited"):
        raise ExportError(f"no audit results for {report.get('month')}: run `vms audit run --month "
                          f"{report.get('month')}` first")


def write_csv(report: dict, out: Path) -> Path:
    """One row per station; UTF-8 with BOM so that Excel shows the Chinese text."""
    _require_audited(report)
    with open(out, "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        w.writerow([name for name, _ in STATION_COLUMNS])
        for s in report["stations"]:
            w.writerow(["" if (v := get(s)) is None else v for _, get in STATION_COLUMNS])
    return out


def write_xlsx(report: dict, out: Path) -> Path:
    """Sheets: 站点考核 (one row per station), 乡镇汇总, 每日开门时长 (station x day, hours)."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.worksheet.worksheet import Worksheet

    _require_audited(report)
    wb = Workbook()
    bold = Font(bold=True)
    red = PatternFill("solid", fgColor="FFCDD2")
    amber = PatternFill("solid", fgColor="FFF8E1")
    ws = wb.active
    assert isinstance(ws, Worksheet), "a new workbook has one worksheet, active"
    ws.title = "站点考核"
    ws.append([name for name, _ in STATION_COLUMNS])
    for s in report["stations"]:
        ws.append([get(s) for _, get in STATION_COLUMNS])
        if s["status"] == "fail":
            ws.cell(ws.max_row, 6).fill = red
        if s["poverty_village"]:
            ws.cell(ws.max_row, 5).fill = amber
    for c in ws[1]:
        c.font = bold
    for col, width in zip("ABCDEFGHIJKLMNOP", (10, 16, 36, 6, 10, 8, 9, 11, 11, 8, 8, 12, 12, 8, 60, 24),
                          strict=True):
        ws.column_dimensions[col].width = width
    ws.freeze_panes = "C2"

    wt = wb.create_sheet("乡镇汇总")
    wt.append(["乡镇", "站点", "参与考核", "达标", "不达标", "不考核", "达标率(%)", "平均在线率(%)", "平均覆盖率(%)"])
    for t in [*report["towns"], {"town": "全县合计", **report["county"]},
              {"town": "省定贫困村", **report["poverty"]}]:
        wt.append([t["town"], t["stations"], t["assessed"], t["passed"], t["failed"], t["exempt"],
                   t["pass_percent"], t["online_percent"], t["coverage_percent"]])
    for c in wt[1]:
        c.font = bold

    wd = wb.create_sheet("每日开门时长")
    wd.append(["乡镇", "站点名称", *[d[5:] for d in report["days"]]])
    for s in report["stations"]:
        wd.append([s["town"], s["name"], *(s.get("open_in_hours_by_day") or [])])
    for c in wd[1]:
        c.font = bold
        c.alignment = Alignment(horizontal="center")
    wd.column_dimensions["B"].width = 36
    wd.freeze_panes = "C2"
    wb.save(out)
    return out


def render_html(report: dict, timezone: str, generated_ms: int) -> str:
    _require_audited(report)
    env = Environment(loader=PackageLoader("vms.audit", "templates"), autoescape=select_autoescape(["html"]))
    tmpl = env.get_template("monthly_report.html")
    rules = report["rules"] or {}
    heat = []
    for t in report["towns"]:
        sts = [s for s in report["stations"] if s["town"] == t["town"]]
        heat.append({"town": t["town"], "svg": open_hours_heatmap(sts, report["days"], rules["min_open_hours"])})
    title = f"惠东县农村电子商务服务站点运行考核月报（{report['month'][:4]}年{int(report['month'][5:])}月）"
    return tmpl.render(
        title=title, report=report, rules=rules, c=report["county"], p=report["poverty"],
        names={s["station_id"]: s["name"] for s in report["stations"]},
        town_chart=town_bars(report["towns"]), heat=heat, status_zh=STATUS_ZH, timezone=timezone,
        generated=datetime.fromtimestamp(generated_ms / 1000, ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M"),
        partial=any(s.get("partial") for s in report["stations"]),
        pct=lambda v: "—" if v is None else f"{v:.1f}%",
    )


def find_chromium() -> str:
    for c in CHROMIUM_CANDIDATES:
        if Path(c).exists():
            return c
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise ExportError("PDF export needs Chromium (Debian package chromium); run scripts/bootstrap.sh")
    return found


def html_to_pdf(html: str, out: Path, timeout_s: float = 120) -> Path:
    """Print HTML to PDF with headless Chromium (no network: the page has no external resources)."""
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="vms-audit-pdf-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html, encoding="utf-8")
        target = Path(tmp) / "report.pdf"
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp}/profile", "--no-pdf-header-footer", f"--print-to-pdf={target}",
               page.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ExportError(f"Chromium did not finish printing the PDF within {timeout_s:.0f} s") from None
        if not target.exists() or target.stat().st_size == 0:
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            raise ExportError(f"Chromium failed to print the PDF (exit {proc.returncode}): {' | '.join(tail)}")
        shutil.move(str(target), out)
    return out


def export_monthly(report: dict, fmt: str, out: Path, timezone: str, generated_ms: int) -> Path:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if not out.parent.exists():
        raise ExportError(f"folder {out.parent} does not exist")
    if fmt == "csv":
        return write_csv(report, out)
    if fmt == "xlsx":
        return write_xlsx(report, out)
    html = render_html(report, timezone, generated_ms)
    if fmt == "html":
        out.write_text(html, encoding="utf-8")
        return out
    return html_to_pdf(html, out)
