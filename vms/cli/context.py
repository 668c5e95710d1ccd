"""What every command needs: settings and the database, with errors shown plainly and exit code 2."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from functools import cache

import typer

from vms.core.errors import ConfigError, VmsError
from vms.core.settings import Settings, load_settings
from vms.db.engine import Database


class OutputFormat(StrEnum):
    """--format of the listing commands."""

    table = "table"
    json = "json"


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@cache
def settings() -> Settings:
    try:
        s = load_settings()
    except ConfigError as exc:
        typer.echo("error: invalid settings:", err=True)
        for p in exc.problems:
            typer.echo(f"  {p}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=s.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return s


@cache
def database() -> Database:
    return Database.from_settings(settings())


def report_vms_error(exc: VmsError) -> typer.Exit:
    if isinstance(exc, ConfigError):
        for p in exc.problems:
            typer.echo(f"error: {p}", err=True)
        return typer.Exit(2)
    return fail(str(exc))
