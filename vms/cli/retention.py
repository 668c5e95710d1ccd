"""`vms retention`: run the retention sweep now (e.g. from cron) and show what is kept and what is needed."""

from __future__ import annotations

import json
import sys

import typer
from sqlalchemy.exc import SQLAlchemyError

from vms.cli.context import OutputFormat, database, fail, settings
from vms.core.clock import SystemClock
from vms.core.errors import VmsError
from vms.retention.status import capacity_plan, footage_by_station, human_bytes
from vms.retention.sweeper import RetentionSweeper, SweepResult
from vms.retention.timeparse import format_local, parse_time_ms

app = typer.Typer(help="Retention: delete footage past its retention period; storage status and capacity plan.",
                  no_args_is_help=True)


def _print_summary(result: SweepResult, tz) -> None:
    echo = typer.echo
    what = "would delete" if result.dry_run else "deleted"
    echo(f"retention run {result.run_id} at {format_local(result.now_ms, tz)}"
         + (" (DRY RUN: nothing was deleted or marked)" if result.dry_run else ""))
    if result.recovered.segments:
        echo(f"finished {result.recovered.segments} segments ({human_bytes(result.recovered.bytes)}) left "
             "'deleting' by an interrupted run")
    echo(f"{what} {result.segments} segments, {human_bytes(result.bytes)} in {result.seconds:.1f} s")
    for reason in ("expired", "pressure", "critical", "manual"):
        t = result.by_reason.get(reason)
        if t:
            echo(f"  {reason:<9} {t.segments:>9} segments {human_bytes(t.bytes):>10}")
    for v in result.volumes:
        moved = result.by_volume.get(v.name)
        line = (f"  volume {v.name}: {moved.segments if moved else 0} segments "
                f"{human_bytes(moved.bytes if moved else 0)}; free {human_bytes(v.free_bytes)} of "
                f"{human_bytes(v.total_bytes)}, footage {human_bytes(v.footage_bytes)}")
        if v.limit_bytes is not None:
            line += f", quota {human_bytes(v.limit_bytes)}"
        echo(line + f" [{v.state}]")
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    for e in result.errors:
        typer.echo(f"error: {e}", err=True)


def _sweep(sweeper: RetentionSweeper, now_ms: int | None, dry_run: bool, progress_bar: bool) -> SweepResult:
    if not progress_bar:
        return sweeper.run(now_ms, dry_run=dry_run)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("expiring", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        return sweeper.run(now_ms, dry_run=dry_run, progress=progress)


@app.command()
def run(
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be deleted; change nothing"),
    now: str | None = typer.Option(None, "--now", help="judge ages as of this time (ISO 8601; local time "
                                   "if no offset); default: the current time"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """Delete footage past its retention period, then evict early on volumes under pressure.
    Exit 0 also when another run holds the lock (it says so and does nothing); 1 on errors."""
    s = settings()
    try:
        now_ms = parse_time_ms(now, s.tz, "--now") if now else None
    except VmsError as exc:
        raise fail(str(exc)) from None
    sweeper = RetentionSweeper(s, database(), SystemClock())
    try:
        result = _sweep(sweeper, now_ms, dry_run, sys.stdout.isatty() and format is OutputFormat.table)
    except SQLAlchemyError as exc:
        raise fail(f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]} "
                   "(is the database reachable and migrated? `vms db upgrade`)", 1) from None
    if format is OutputFormat.json:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    elif not result.ran:
        typer.echo(result.message)
    else:
        _print_summary(result, s.tz)
    if result.errors:
        raise typer.Exit(1)


@app.command()
def status(
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
    days: float | None = typer.Option(None, "--days", help="capacity plan for this many days "
                                      "(default: retention.days)"),
) -> None:
    """Per station: oldest and newest footage, bytes, days covered; then the capacity plan."""
    s = settings()
    if days is not None and days <= 0:
        raise fail(f"--days must be positive, got {days:g}")
    now_ms = SystemClock().now_ms()
    with database().session() as session:
        stations = footage_by_station(session, s, now_ms)
        plan = capacity_plan(session, s, now_ms, days)
    if format is OutputFormat.json:
        typer.echo(json.dumps({"stations": [vars(f) for f in stations], "capacity": plan.to_dict()},
                              ensure_ascii=False, indent=2))
        return
    echo = typer.echo
    echo(f"{'station':<16} {'keep d':>6} {'oldest':<25} {'newest':<25} {'days':>6} {'bytes':>10} segments")
    for f in stations:
        flag = "  OVERDUE" if f.overdue else ""
        echo(f"{f.station_id:<16} {f.retention_days:>6g} {format_local(f.oldest_ms, s.tz):<25} "
             f"{format_local(f.newest_ms, s.tz):<25} {f.days_covered:>6.2f} {human_bytes(f.bytes):>10} "
             f"{f.segments}{flag}")
    total = sum(f.bytes for f in stations)
    echo(f"{len(stations)} stations, {human_bytes(total)} of footage")
    echo("")
    echo(f"capacity plan for {plan.days:g} days ({plan.measured_stations} stations measured over the last "
         f"24 h; the others at the {plan.fallback_source}: {plan.fallback_bitrate_bps / 1e6:.2f} Mbps)")
    for v in plan.volumes:
        cap = "" if v.limit_bytes is None else (
            f" of {human_bytes(v.limit_bytes)} usable: " + ("fits" if v.fits else "DOES NOT FIT"))
        echo(f"  volume {v.name}: {v.stations} stations need {human_bytes(v.bytes_needed)}{cap}")
    echo(f"  total: {human_bytes(plan.total_bytes_needed)}")
    echo(f"  rule of thumb: {plan.reference}")
    for n in plan.notes:
        echo(f"  note: {n}")
