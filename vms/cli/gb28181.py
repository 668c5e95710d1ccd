"""`vms gb28181`: GB/T 28181 devices: list them, accept unknown ones, bind channels, refresh catalogs."""

from __future__ import annotations

import json

import typer

from vms.cli.context import OutputFormat, database, fail, settings
from vms.core.clock import SystemClock, from_ms
from vms.gb28181.views import GbViewError, accept_device, ask_catalog, bind_channel, list_devices

app = typer.Typer(help="GB/T 28181 devices (cameras and NVRs that register over SIP).", no_args_is_help=True)


@app.command()
def devices(format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json")) -> None:
    """Devices with their registration state, address, last keepalive and channels."""
    s = settings()
    now = SystemClock().now_ms()
    with database().session() as session:
        rows = list_devices(session, s, now)
    if format == OutputFormat.json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        typer.echo("no GB28181 device has registered yet")
        return
    for d in rows:
        where = f"{d['host']}:{d['port']}/{d['transport']}" if d["host"] else "-"
        last = d["last_keepalive_ms"]
        keepalive = from_ms(last, s.tz).strftime("%Y-%m-%d %H:%M:%S") if last else "-"
        typer.echo(f"{d['device_id']}  {d['state']:<8} {'accepted' if d['accepted'] else 'NOT ACCEPTED':<12} "
                   f"{where:<24} keepalive {keepalive}  {d['manufacturer'] or ''} {d['model'] or ''}".rstrip())
        if d["problem"] and d["state"] != "online":
            typer.echo(f"    {d['problem']}")
        for ch in d["channels"]:
            bound = f" -> {ch['station_id']} ({ch['bound_by']})" if ch["station_id"] else ""
            typer.echo(f"    {ch['channel_id']}  {ch['status'] or '?':<4} {ch['name'] or ''}{bound}")


@app.command()
def accept(
    device_id: str = typer.Argument(..., help="the 20-digit device ID"),
    password: str | None = typer.Option(None, "--password", help="this device's own password (default: "
                                        "gb28181.password)"),
) -> None:
    """Let a device register (unknown devices are refused and listed until accepted)."""
    with database().session() as session:
        try:
            accept_device(session, device_id, password, SystemClock().now_ms())
        except GbViewError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"device {device_id} accepted; it is let in at its next REGISTER")


@app.command()
def bind(
    url: str = typer.Argument(..., help="gb28181://<device-id>/<channel-id>"),
    station: str | None = typer.Option(None, "--station", help="the station; omit with --unbind"),
    unbind: bool = typer.Option(False, "--unbind", help="remove the channel's binding"),
) -> None:
    """Bind a channel to a station whose catalogue entry has no camera URL (or --unbind it)."""
    from vms.catalog.urls import parse_gb28181_url

    if unbind == (station is not None):
        raise fail("give --station, or --unbind")
    try:
        device_id, channel_id = parse_gb28181_url(url)
        with database().session() as session:
            bind_channel(session, device_id, channel_id, station, SystemClock().now_ms())
    except (ValueError, GbViewError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{url} unbound" if unbind else f"{url} bound to {station}; recorded from the next reconcile")


@app.command()
def catalog(device_id: str = typer.Argument(..., help="the 20-digit device ID")) -> None:
    """Ask a registered device for its channel list now (the running server asks it)."""
    try:
        ok = ask_catalog(settings(), device_id)
    except OSError as exc:
        raise fail(f"no GB28181 server runs here ({exc}); start vms serve with gb28181.enabled: true") from None
    if not ok:
        raise fail(f"device {device_id} is not registered")
    typer.echo(f"catalog query sent to {device_id}; see `vms gb28181 devices` in a few seconds")
