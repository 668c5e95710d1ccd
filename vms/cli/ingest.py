"""`vms ingest` (the recorder alone), `vms cameras status`, `vms recordings check`."""

from __future__ import annotations

import json

import typer
from sqlalchemy import select

from vms.catalog.store import catalogue_order
from vms.cli.context import OutputFormat, database, settings
from vms.core.clock import SystemClock, from_ms
from vms.core.logging_setup import configure_logging
from vms.core.signals import StopSignals
from vms.core.systemd import SystemdNotifier
from vms.db.migrate import upgrade
from vms.db.models import CameraStatus, Station
from vms.ingest.health import reported_camera_state
from vms.recording.repair import check
from vms.recording.volumes import VolumeSet

ingest_app = typer.Typer(help="Record every enabled camera (the recorder alone; `vms serve` adds the API).",
                         invoke_without_command=True)
cameras_app = typer.Typer(help="Camera health.", no_args_is_help=True)
recordings_app = typer.Typer(help="Footage on disk and its index.", no_args_is_help=True)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (see vms.core.signals: the handler must take no lock)."""
    StopSignals().wait()


@ingest_app.callback()
def ingest(
    ctx: typer.Context,
    workers: int | None = typer.Option(None, help="worker processes (default: settings, else one per core)"),
    simulate: bool = typer.Option(False, help="simulate cameras for stations without a camera URL"),
    analysis: bool = typer.Option(True, help="run stream analysis in the workers"),
) -> None:
    """Record every enabled camera until SIGINT/SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from vms.core.files import close_data_to_others
    from vms.server.recording import RecordingService

    s = settings()
    configure_logging(s.log_level)
    close_data_to_others(s.data_dir, [v.path for v in s.storage.volumes])
    upgrade(s.db_url)
    notifier = SystemdNotifier()
    service = RecordingService(s, database(), simulate="always" if simulate else s.simulate.enabled,
                               workers=workers, analysis=analysis, notifier=notifier)
    service.start()
    notifier.ready(f"recording {service.camera_count} cameras")
    typer.echo(f"recording {service.camera_count} cameras with {service.worker_count} workers; Ctrl-C stops",
               err=True)
    try:
        wait_for_signal()
    finally:
        service.stop()


@cameras_app.command("status")
def cameras_status(format: OutputFormat = typer.Option(OutputFormat.table, "--format")) -> None:
    """Per camera: state, fps, bitrate, codec, resolution, last packet, reconnects, audio (from the recording node)."""
    s = settings()
    now = SystemClock().now_ms()
    stale_ms = int(s.ingest.status_interval_seconds * 3000)  # as the API: three missed statuses
    with database().session() as db:
        rows = db.execute(select(Station.id, Station.name, Station.enabled, CameraStatus)
                          .join(CameraStatus, CameraStatus.station_id == Station.id, isouter=True)
                          .order_by(*catalogue_order())).all()
    out = []
    for sid, name, enabled, st in rows:
        cam = reported_camera_state(st, enabled, now, stale_ms, int(s.ingest.stall_seconds * 1000))
        item = {"id": sid, "name": name, "enabled": enabled, "state": cam["state"], "reason": cam.get("reason")}
        if st is not None:
            item.update(
                detail=cam.get("detail"), node=st.node,
                fps=round(cam["fps"], 2) if cam.get("fps") is not None else None,
                bitrate_bps=round(cam["bitrate_bps"]) if cam.get("bitrate_bps") is not None else None,
                codec=st.codec, width=st.width, height=st.height, audio=st.audio,
                last_packet=from_ms(st.last_packet_ms, s.tz).isoformat() if st.last_packet_ms else None,
                reconnects=st.reconnects, segments_written=st.segments_written,
                status_age_s=(now - st.updated_ms) / 1000)
        out.append(item)
    if format is OutputFormat.json:
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    for i in out:
        res = f"{i.get('width')}x{i.get('height')}" if i.get("width") else "-"
        fps = f"{i['fps']:.1f}fps" if i.get("fps") is not None else "-"
        kbps = f"{i['bitrate_bps'] / 1000:.0f}kbps" if i.get("bitrate_bps") is not None else "-"
        audio = f" audio={i['audio']}" if i.get("audio") else ""
        typer.echo(f"{i['id']:<16} {i['state']:<10} {i.get('reason') or '':<18} {i.get('codec') or '-':<5} {res:<10} "
                   f"{fps:<8} {kbps:<9} reconnects={i.get('reconnects', 0)} last={i.get('last_packet') or '-'}{audio}")


@recordings_app.command("check")
def recordings_check(
    repair: bool = typer.Option(False, "--repair", help="fix what is found (otherwise only report)"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format"),
) -> None:
    """Reconcile the index with the disk: files without rows, rows without files, truncated files.
    Exit 0 when everything agrees (or was repaired), 1 when problems remain."""
    s = settings()
    upgrade(s.db_url)
    rep = check(database(), VolumeSet.from_settings(s), s.tz, SystemClock(), s.ingest.node, repair=repair,
                data_dir=s.data_dir)
    if format is OutputFormat.json:
        typer.echo(json.dumps({"files": rep.files, "rows": rep.rows, "problems": [a.__dict__ for a in rep.actions]},
                              ensure_ascii=False, indent=2))
    else:
        for a in rep.actions:
            typer.echo(f"{a.kind:<17} {a.volume}/{a.path} {a.detail} {'[repaired]' if a.repaired else ''}".rstrip())
        typer.echo(f"{rep.files} files, {rep.rows} rows, {rep.problems} problems"
                   + (f", {sum(a.repaired for a in rep.actions)} repaired" if repair else ""))
    if any(not a.repaired for a in rep.actions):
        raise typer.Exit(1)
