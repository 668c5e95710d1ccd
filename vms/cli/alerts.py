"""`vms alerts`: the alerts raised, the channels they go to (a test message through one now),
acknowledging, and maintenance windows. Nothing here prints a channel's key or secret: channels are
shown by their own describe() (masked), and a failed send's error is scrubbed by the channel."""

from __future__ import annotations

import json

import typer
from sqlalchemy import select

from vms.alerts import engine as alert_engine
from vms.alerts.views import (
    MaintenanceError,
    add_maintenance,
    alert_dict,
    channel_test_too_soon,
    channel_test_wait_ms,
    end_maintenance,
    list_maintenance,
    maintenance_dict,
    station_names,
)
from vms.cli.context import OutputFormat, database, fail, settings
from vms.cli.holds import _default_user
from vms.core.clock import SystemClock
from vms.core.errors import VmsError
from vms.db.models import Alert, AlertMaintenance
from vms.retention.timeparse import parse_time_ms

app = typer.Typer(help="Alerts: list, acknowledge, channels (and a test message), maintenance windows.",
                  no_args_is_help=True)
maintenance_app = typer.Typer(help="Maintenance windows: no alerts for a station, a town or everything.",
                              no_args_is_help=True)
app.add_typer(maintenance_app, name="maintenance")

STATES = ("firing", "resolved", "all")
ALERT_ID_MAX = 2**63 - 1  # alerts.id is a 64-bit integer
WINDOW_ID_MAX = 2**31 - 1  # alert_maintenance.id is a 32-bit integer
BY_MAX = 64  # acked_by, created_by
NOTE_MAX = 500


def _check_by(by: str | None) -> None:
    """--by is stored as given (who did it): refuse what the column cannot hold rather than cut it."""
    if by is not None and not (1 <= len(by.strip()) <= BY_MAX):
        raise fail(f"--by: a name of 1 to {BY_MAX} characters (got {len(by.strip())})")


def _channels() -> dict:
    from vms.alerts.channels import make_channels

    s = settings()
    return make_channels(s.alerts, s.tz)


@app.command("list")
def list_(
    state: str = typer.Option("all", "--state", help="firing, resolved or all"),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="the newest N alerts"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """The newest alerts, newest first."""
    if state not in STATES:
        raise fail(f"--state must be one of {', '.join(STATES)}, not {state!r}")
    s = settings()
    with database().session() as session:
        q = select(Alert).order_by(Alert.id.desc()).limit(limit)
        if state != "all":
            q = q.where(Alert.state == state)
        rows = list(session.scalars(q))
        names = station_names(session, rows)
        alerts = [alert_dict(a, names.get(a.station_id or ""), s.tz) for a in rows]
    if format is OutputFormat.json:
        typer.echo(json.dumps(alerts, ensure_ascii=False, indent=2))
        return
    for a in alerts:
        flags = [f"acked by {a['acked_by']}"] if a["acked_by"] else []
        if a["muted_until"]:
            flags.append(f"muted until {a['muted_until'][:19]}")
        if a["suppressed"]:
            flags.append(a["suppressed"])
        ended = f" .. {a['resolved'][:19]}" if a["resolved"] else ""
        typer.echo(f"{a['id']:>6} {a['state']:<8} {a['severity']:<8} {a['since'][:19]}{ended} {a['rule']:<20} "
                   f"{a['title']}" + (f" [{', '.join(flags)}]" if flags else ""))
    typer.echo(f"{len(alerts)} alerts")


@app.command()
def channels(format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json")) -> None:
    """The configured channels (addresses masked; keys and secrets are never shown)."""
    described = [ch.describe() for ch in _channels().values()]
    if format is OutputFormat.json:
        typer.echo(json.dumps(described, ensure_ascii=False, indent=2))
        return
    for d in described:
        towns = ",".join(d.get("towns") or []) or "all towns"
        typer.echo(f"{d['name']:<16} {d['type']:<9} {d.get('target', '')}  min {d.get('min_severity')}, {towns}"
                   + (f", quiet {d['quiet_hours']}" if d.get("quiet_hours") else ""))
    typer.echo(f"{len(described)} channels")


@app.command()
def test(channel: str = typer.Argument(..., help="the channel's name (see `vms alerts channels`)")) -> None:
    """Send a test message through CHANNEL now (recorded as a delivery). Exit code 1 if it was not delivered."""
    from vms.alerts.dispatch import send_test

    available = _channels()
    ch = available.get(channel)
    if ch is None:
        configured = ", ".join(available) or "none (set alerts.webhook_url or alerts.channels)"
        raise fail(f"no alert channel {channel!r}; configured: {configured}")
    now = SystemClock().now_ms()
    with database().session() as session:
        wait_ms = channel_test_wait_ms(session, channel, now)
    if wait_ms:
        raise fail(channel_test_too_soon(channel, wait_ms)[1], code=1)
    delivery_id, result = send_test(database(), settings(), ch, now)
    if result.ok:
        typer.echo(f"test message sent through {channel} (delivery {delivery_id})")
        return
    typer.echo(f"test message through {channel} failed (delivery {delivery_id}): {result.error}")
    raise typer.Exit(1)


@app.command()
def ack(
    alert_id: int = typer.Argument(..., min=1, max=ALERT_ID_MAX, help="the alert's id (see `vms alerts list`)"),
    note: str | None = typer.Option(None, "--note", help="what is being done about it"),
    by: str | None = typer.Option(None, "--by", help="who acknowledges (default: the login name)"),
) -> None:
    """Acknowledge a firing alert: its reminders stop (the recovery is still told)."""
    if note is not None and len(note) > NOTE_MAX:
        raise fail(f"--note: at most {NOTE_MAX} characters (got {len(note)})")
    _check_by(by)
    who_acks = by.strip() if by is not None else _default_user()[:BY_MAX]
    try:
        with database().session() as session:
            alert = alert_engine.acknowledge(session, alert_id, who_acks, note, SystemClock().now_ms())
            who = alert.acked_by
    except (LookupError, alert_engine.AlertActionError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"alert {alert_id} acknowledged (by {who})")


@maintenance_app.command("add")
def maintenance_add(
    start: str = typer.Option(..., "--start", help="ISO 8601; local time if no offset"),
    end: str = typer.Option(..., "--end", help="ISO 8601; local time if no offset"),
    reason: str = typer.Option(..., "--reason", help="why, e.g. 供电检修"),
    station: str | None = typer.Option(None, "--station", help="only this station"),
    town: str | None = typer.Option(None, "--town", help="only this town's stations (e.g. 平海镇)"),
    by: str | None = typer.Option(None, "--by", help="who sets it (default: the login name)"),
) -> None:
    """A maintenance window (at most 7 days): no alerts for the station, the town, or (neither given) everything."""
    _check_by(by)
    s = settings()
    now = SystemClock().now_ms()
    try:
        start_ms = parse_time_ms(start, s.tz, "--start")
        end_ms = parse_time_ms(end, s.tz, "--end")
        with database().session() as session:
            w = add_maintenance(session, station, town, start_ms, end_ms, reason,
                                by.strip() if by is not None else _default_user(), now, s.tz)
            d = maintenance_dict(w, s.tz, now)
    except VmsError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"maintenance window {d['id']} for {d['station_id'] or d['town'] or 'everything'} "
               f"from {d['start'][:19]} to {d['end'][:19]}")


@maintenance_app.command("list")
def maintenance_list(
    all_: bool = typer.Option(False, "--all", help="also windows that have ended"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """Active and future maintenance windows."""
    s = settings()
    now = SystemClock().now_ms()
    with database().session() as session:
        rows = [maintenance_dict(w, s.tz, now) for w in list_maintenance(session, now, include_past=all_)]
    if format is OutputFormat.json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['id']:>5} {r['state']:<6} {r['start'][:19]} .. {r['end'][:19]} "
                   f"{r['station_id'] or r['town'] or 'everything':<16} by {r['created_by']}: {r['reason']}")
    typer.echo(f"{len(rows)} windows")


@maintenance_app.command("end")
def maintenance_end(window_id: int = typer.Argument(..., min=1, max=WINDOW_ID_MAX, help="the window's id")) -> None:
    """End a window now (a future one is deleted)."""
    s = settings()
    now = SystemClock().now_ms()
    try:
        with database().session() as session:
            w = session.get(AlertMaintenance, window_id)
            if w is None:
                raise MaintenanceError(f"维护时段 {window_id} 不存在", "maintenance_not_found", 404)
            what = end_maintenance(session, w, now, s.tz)
    except MaintenanceError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"maintenance window {window_id} {what}")
