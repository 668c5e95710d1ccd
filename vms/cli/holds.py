"""`vms holds`: evidence locks on a station's footage, which retention never deletes."""

from __future__ import annotations

import getpass
import json

import typer

from vms.cli.context import OutputFormat, database, fail, settings
from vms.core.clock import SystemClock
from vms.core.errors import VmsError
from vms.retention.holds import add_hold, hold_public_dict, list_holds, release_hold
from vms.retention.timeparse import parse_time_ms

app = typer.Typer(help="Holds (evidence locks): footage that retention must keep.", no_args_is_help=True)


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


@app.command()
def add(
    station: str = typer.Option(..., "--station", help="station id, e.g. baihua-v03"),
    start: str = typer.Option(..., "--start", help="ISO 8601; local time if no offset"),
    end: str = typer.Option(..., "--end", help="ISO 8601; local time if no offset"),
    reason: str = typer.Option(..., "--reason", help="why, e.g. the complaint or case number"),
    expires: str | None = typer.Option(None, "--expires", help="the hold lapses at this time (default: never)"),
    by: str | None = typer.Option(None, "--by", help="who places the hold (default: the login name)"),
) -> None:
    """Keep a station's footage in [start, end) until the hold is released or expires."""
    s = settings()
    clock = SystemClock()
    try:
        start_ms = parse_time_ms(start, s.tz, "--start")
        end_ms = parse_time_ms(end, s.tz, "--end")
        expires_ms = parse_time_ms(expires, s.tz, "--expires") if expires else None
        with database().session() as session:
            hold = add_hold(session, station_id=station, start_ms=start_ms, end_ms=end_ms, reason=reason,
                            created_by=by if by is not None else _default_user(), now_ms=clock.now_ms(),
                            expires_ms=expires_ms)
            d = hold_public_dict(hold, s.tz, clock.now_ms())
    except VmsError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"hold {d['id']} placed on {d['station_id']} from {d['start']} to {d['end']}"
               + (f", expires {d['expires']}" if d["expires"] else "") + f" (by {d['created_by']})")


@app.command("list")
def list_(
    station: str | None = typer.Option(None, "--station", help="only this station"),
    all_: bool = typer.Option(False, "--all", help="also released and expired holds"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """Active holds (with --all: every hold ever placed)."""
    s = settings()
    now = SystemClock().now_ms()
    with database().session() as session:
        rows = [hold_public_dict(h, s.tz, now)
                for h in list_holds(session, now_ms=now, station_id=station, include_inactive=all_)]
    if format is OutputFormat.json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        extra = f" expires {r['expires']}" if r["expires"] else ""
        if r["released_by"]:
            extra += f" released by {r['released_by']}"
        typer.echo(f"{r['id']:>5} {r['station_id']:<16} {r['start']} .. {r['end']} {r['state']:<8} "
                   f"by {r['created_by']}: {r['reason']}{extra}")
    typer.echo(f"{len(rows)} holds")


@app.command()
def release(
    hold_id: int = typer.Argument(..., help="the hold's id (see `vms holds list`)"),
    by: str | None = typer.Option(None, "--by", help="who releases it (default: the login name)"),
) -> None:
    """Release a hold: its footage then ages out normally."""
    now = SystemClock().now_ms()
    try:
        with database().session() as session:
            hold = release_hold(session, hold_id, by=by if by is not None else _default_user(), now_ms=now)
            station = hold.station_id
    except VmsError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"hold {hold_id} on {station} released")
