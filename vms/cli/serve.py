"""`vms serve`: recorder, API and web console, and the scheduled jobs, in one command."""

from __future__ import annotations

import logging

import typer

from vms.cli.context import database, settings

log = logging.getLogger("vms.serve")

app = typer.Typer(help="Run everything: recording, API and web console, scheduled jobs.",
                  invoke_without_command=True)


@app.callback()
def serve(
    host: str | None = typer.Option(None, help="API address (default: settings api.host)"),
    port: int | None = typer.Option(None, help="API port (default: settings api.port)"),
    workers: int | None = typer.Option(None, help="ingest worker processes (default: one per core)"),
    record: bool = typer.Option(True, help="run the recorder (--no-record: API and jobs only)"),
    simulate: str | None = typer.Option(None, help="auto|always|never: simulated cameras (default: settings)"),
) -> None:
    """Migrate the database, start recording every enabled camera, serve the API until SIGINT/SIGTERM."""
    import signal

    from vms.api.app import create_app, serve_app
    from vms.core.clock import SystemClock
    from vms.core.files import close_data_to_others
    from vms.core.logging_setup import configure_logging
    from vms.core.systemd import SystemdNotifier, feed_watchdog_forever
    from vms.db.migrate import upgrade
    from vms.server.jobs import start_scheduler
    from vms.server.recording import RecordingService

    s = settings()
    configure_logging(s.log_level)
    close_data_to_others(s.data_dir, [v.path for v in s.storage.volumes])
    upgrade(s.db_url)
    db = database()
    clock = SystemClock()
    notifier = SystemdNotifier()
    service = None
    if record:
        mode = simulate or s.simulate.enabled
        if mode not in ("auto", "always", "never"):
            raise typer.BadParameter("--simulate must be auto, always or never")
        service = RecordingService(s, db, simulate=mode, workers=workers, notifier=notifier)
        service.start()
        log.info("recording %d cameras with %d ingest workers", service.camera_count, service.worker_count)
    elif notifier.watchdog_interval_s is not None:
        # No recorder to vouch for: the API process alone feeds systemd's watchdog.
        feed_watchdog_forever(notifier)
    scheduler = start_scheduler(s, db, clock)
    notifier.ready(f"recording {service.camera_count if service else 0} cameras")
    # uvicorn re-raises the signal that stopped it once it has shut down; with the default handlers
    # that would kill this process before the recorder below finishes its segments.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    stop_recording = service.stop if service is not None else None
    try:
        serve_app(create_app(s, db, clock), host or s.api.host, port or s.api.port, s.log_level.lower(),
                  on_stop_signal=stop_recording)
    finally:
        scheduler.shutdown(wait=False)
        if service is not None:
            service.stop()  # (again, if the signal started it: waits for that stop to end)
