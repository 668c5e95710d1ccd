"""`vms stations`: validate, import and list the station catalogue."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from vms.catalog.loader import load_catalog
from vms.catalog.store import import_catalog, list_stations, station_public_dict
from vms.catalog.towns import TOWN_NAMES
from vms.cli.context import OutputFormat, database, fail, report_vms_error
from vms.core.errors import VmsError

app = typer.Typer(help="Station catalogue: validate, import, list.", no_args_is_help=True)


class Level(StrEnum):
    town = "town"
    village = "village"


@app.command()
def validate(file: Path = typer.Argument(..., help="catalogue YAML, e.g. config/stations.yaml")) -> None:
    """Check a catalogue file without touching the database; every problem is reported with its line."""
    try:
        specs = load_catalog(file)
    except VmsError as exc:
        raise report_vms_error(exc) from None
    towns = sum(s.level == "town" for s in specs)
    typer.echo(f"{file}: OK, {len(specs)} stations ({towns} town, {len(specs) - towns} village)")


@app.command("import")
def import_(file: Path = typer.Argument(..., help="catalogue YAML")) -> None:
    """Seed or re-sync the database from a catalogue file (idempotent)."""
    try:
        specs = load_catalog(file)
    except VmsError as exc:
        raise report_vms_error(exc) from None
    with database().session() as s:
        rep = import_catalog(s, specs)
    typer.echo(f"added {len(rep.added)}, changed {len(rep.changed)}, disabled {len(rep.disabled)}, "
               f"unchanged {rep.unchanged}")
    for sid in rep.added:
        typer.echo(f"  + {sid}")
    for sid, fields in rep.changed.items():
        typer.echo(f"  ~ {sid}: {', '.join(fields)}")
    for sid in rep.disabled:
        typer.echo(f"  - {sid} (disabled: not in the file)")


@app.command("list")
def list_(
    town: str | None = typer.Option(None, help="only this town, e.g. 白花镇"),
    level: Level | None = typer.Option(None, help="town or village"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """List stations from the database (camera credentials masked)."""
    if town and town not in TOWN_NAMES:
        raise fail(f"unknown town {town!r}; known: {', '.join(TOWN_NAMES)}")
    with database().session() as s:
        rows = [station_public_dict(r) for r in list_stations(s, town, level.value if level else None)]
    if format is OutputFormat.json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        flags = ("贫困村 " if r["poverty_village"] else "") + ("" if r["enabled"] else "[disabled]")
        typer.echo(f"{r['id']:<16} {r['level']:<8} {r['town']:<6} {r['name']} {flags}".rstrip())
    typer.echo(f"{len(rows)} stations")
