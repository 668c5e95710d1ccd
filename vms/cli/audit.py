"""`vms audit`: run the station audits (cron, backfill), show results, export the monthly report."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path

import typer

from vms.audit.export import STATUS_ZH, export_monthly
from vms.audit.jobs import run_daily_audit, run_monthly_audit
from vms.audit.periods import month_days, parse_day, parse_month
from vms.audit.reports import daily_report, monthly_report
from vms.cli.context import database, fail, report_vms_error, settings
from vms.core.clock import default_clock
from vms.core.errors import VmsError
from vms.db.models import Station

app = typer.Typer(help="Station-uptime audits: run, show, export.", no_args_is_help=True)


class ShowFormat(StrEnum):
    table = "table"
    json = "json"


class ExportFormat(StrEnum):
    csv = "csv"
    xlsx = "xlsx"
    html = "html"
    pdf = "pdf"


def _one_of(day: str | None, month: str | None) -> None:
    if (day is None) == (month is None):
        raise fail("give exactly one of --day YYYY-MM-DD or --month YYYY-MM")


@app.command()
def run(
    day: str | None = typer.Option(None, "--day", help="audit one local day, YYYY-MM-DD"),
    month: str | None = typer.Option(None, "--month", help="audit every day of a month and decide it, YYYY-MM"),
) -> None:
    """Compute (or recompute: results are replaced) the audit of a day or a month."""
    _one_of(day, month)
    s, db, clock = settings(), database(), default_clock()
    try:
        if day is not None:
            daily = run_daily_audit(s, db, clock, parse_day(day))
            typer.echo(f"audited {day}: {daily.rows} station rows, {daily.findings} findings")
            return
        assert month is not None  # (_one_of)
        year, mon = parse_month(month)
        n_days = len(month_days(year, mon))
        if sys.stdout.isatty():
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task(f"auditing {month}", total=n_days)
                res = run_monthly_audit(s, db, clock, month, recompute=True,
                                        progress=lambda n: bar.advance(task, n))
        else:
            res = run_monthly_audit(s, db, clock, month, recompute=True)
    except VmsError as exc:
        raise report_vms_error(exc) from None
    typer.echo(f"audited {month}: {res.days_audited} days, {res.stations} stations: "
               f"{res.passed} pass, {res.failed} fail, {res.exempt} exempt")


@app.command()
def show(
    day: str | None = typer.Option(None, "--day", help="YYYY-MM-DD"),
    month: str | None = typer.Option(None, "--month", help="YYYY-MM"),
    town: str | None = typer.Option(None, "--town", help="only this town, e.g. 平山街道"),
    format: ShowFormat = typer.Option(ShowFormat.table, "--format"),
) -> None:
    """Show stored audit results (run the audit first)."""
    _one_of(day, month)
    try:
        with database().session() as s:
            if day:
                rep = daily_report(s, day, town)
            else:
                assert month is not None  # (_one_of)
                rep = monthly_report(s, month, town)
    except VmsError as exc:
        raise report_vms_error(exc) from None
    if format is ShowFormat.json:
        typer.echo(json.dumps(rep, ensure_ascii=False, indent=2))
        return
    if not rep["audited"]:
        raise fail(f"no audit results for {day or month}: run `vms audit run --{'day' if day else 'month'} "
                   f"{day or month}` first", code=1)
    from rich.console import Console
    from rich.table import Table

    # Piped output gets a wide table instead of rich's 80 columns, so the Chinese reasons stay readable.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if day:
        t = Table(title=f"{day} 站点日审计")
        for col in ("乡镇", "站点", "在线率", "覆盖率", "营业内开门(小时)", "开门", "关门", "活动", "问题"):
            t.add_column(col)
        for i in rep["stations"]:
            t.add_row(i["town"], i["station_id"], f'{i["online_percent"]:.1f}%', f'{i["coverage_percent"]:.1f}%',
                      f'{i["open_in_hours_hours"]:.1f}', i["first_open"] or "", i["last_close"] or "",
                      str(i["activity_episodes"]),
                      "；".join(f["message"] for f in i["findings"] if f["severity"] != "info"))
        console.print(t)
        sm = rep["summary"]
        console.print(f"{sm['stations']} 个站点：{sm['with_findings']} 个有问题，{sm['no_footage']} 个全天无录像")
        return
    t = Table(title=f"{month} 站点月度考核")
    for col in ("乡镇", "站点", "结果", "在线率", "覆盖率", "开门天数", "原因"):
        t.add_column(col)
    for i in rep["stations"]:
        t.add_row(i["town"], i["station_id"], STATUS_ZH[i["status"]],
                  "—" if i["online_percent"] is None else f'{i["online_percent"]:.1f}%',
                  "—" if i["coverage_percent"] is None else f'{i["coverage_percent"]:.1f}%',
                  f'{i["open_days"]}/{i["required_open_days"]}', "；".join(r["message"] for r in i["reasons"]))
    console.print(t)
    c = rep["county"]
    console.print(f"考核 {c['assessed']} 个：达标 {c['passed']}，不达标 {c['failed']}，不考核 {c['exempt']}；"
                  f"省定贫困村不达标 {rep['poverty']['failed']} 个")


@app.command()
def export(
    month: str = typer.Option(..., "--month", help="YYYY-MM"),
    format: ExportFormat = typer.Option(..., "--format"),
    out: Path = typer.Option(..., "--out", help="file to write"),
    town: str | None = typer.Option(None, "--town", help="only this town"),
) -> None:
    """Export a month's audit: csv, xlsx, or the printable report as html or pdf."""
    s = settings()
    try:
        with database().session() as sess:
            rep = monthly_report(sess, month, town)
        path = export_monthly(rep, format.value, out, s.timezone, default_clock().now_ms())
    except VmsError as exc:
        raise report_vms_error(exc) from None
    typer.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")


@app.command("active-since")
def active_since(
    station_id: str = typer.Argument(..., help="station id, e.g. pingshan-v01"),
    day: str = typer.Argument(..., help="local day the station went into service, YYYY-MM-DD, or 'none'"),
) -> None:
    """Record when a station went into service: audits ignore earlier days and pro-rate the month."""
    try:
        value = None if day.lower() == "none" else parse_day(day).isoformat()
        with database().session() as s:
            st = s.get(Station, station_id)
            if st is None:
                raise fail(f"unknown station {station_id!r} (see `vms stations list`)")
            st.active_since = value
    except VmsError as exc:
        raise report_vms_error(exc) from None
    typer.echo(f"{station_id}: in service since {value or 'always'}; re-run `vms audit run` for affected months")
