"""The `vms` command: one sub-command group per concern, each in its own module here."""

from __future__ import annotations

import typer

from vms.cli import alerts as alerts_cli
from vms.cli import analyze as analyze_cli
from vms.cli import audit as audit_cli
from vms.cli import db as db_cli
from vms.cli import gb28181 as gb28181_cli
from vms.cli import holds as holds_cli
from vms.cli import ingest as ingest_cli
from vms.cli import retention as retention_cli
from vms.cli import serve as serve_cli
from vms.cli import simulate as simulate_cli
from vms.cli import stations as stations_cli
from vms.cli import users as users_cli
from vms.core.files import use_private_umask

app = typer.Typer(
    help="vms: station video-monitoring ingest server (Huidong County e-commerce service stations).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(alerts_cli.app, name="alerts")
app.command("analyze")(analyze_cli.analyze)
app.add_typer(audit_cli.app, name="audit")
app.add_typer(db_cli.app, name="db")
app.add_typer(gb28181_cli.app, name="gb28181")
app.add_typer(holds_cli.app, name="holds")
app.add_typer(ingest_cli.ingest_app, name="ingest")
app.add_typer(ingest_cli.cameras_app, name="cameras")
app.add_typer(ingest_cli.recordings_app, name="recordings")
app.add_typer(retention_cli.app, name="retention")
app.add_typer(simulate_cli.app, name="simulate")
app.add_typer(stations_cli.app, name="stations")
app.add_typer(serve_cli.app, name="serve")
app.add_typer(users_cli.app, name="users")


def main() -> None:
    # Footage, keyframes, exports and the database are the service's own (vms.core.files).
    use_private_umask()
    app()
