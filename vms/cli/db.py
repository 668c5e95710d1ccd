"""`vms db`: schema migrations."""

from __future__ import annotations

import typer

from vms.cli.context import settings
from vms.db import migrate

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="target revision")) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    url = settings().db_url
    migrate.upgrade(url, revision)
    typer.echo(f"database at revision {migrate.current_revision(url)}")


@app.command()
def current() -> None:
    """Print the database's revision and the newest one this version knows."""
    url = settings().db_url
    typer.echo(f"current: {migrate.current_revision(url)}  head: {migrate.head_revision()}")
