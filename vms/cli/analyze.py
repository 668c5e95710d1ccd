"""`vms analyze FILE`: run the station detector over a video file and print JSON lines."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from pydantic import ValidationError

from vms.analysis.calibration import StationCalibration
from vms.analysis.offline import analyse_file, business_hours_for, events_to_json, load_station_config
from vms.cli.context import report_vms_error, settings
from vms.core.clock import to_ms
from vms.core.errors import VmsError


class OutputFormat(StrEnum):
    jsonl = "jsonl"


class Decode(StrEnum):
    keyframes = "keyframes"
    all = "all"


def analyze(
    file: Path = typer.Argument(..., help="video file: any container or raw H.264/HEVC/MPEG stream"),
    fps_assumed: float = typer.Option(25.0, "--fps-assumed", help="frame rate of raw streams (no timing)"),
    station_config: Path | None = typer.Option(
        None, "--station-config", help="YAML: calibration, overrides (e.g. hysteresis_seconds), business_hours"),
    output: OutputFormat = typer.Option(OutputFormat.jsonl, "--format", help="output format"),
    sample_interval: float | None = typer.Option(
        None, "--sample-interval", help="seconds between samples of a settled picture (sooner while it changes: "
        "sample_interval_changing_seconds)"),
    hysteresis: float | None = typer.Option(None, "--hysteresis", help="seconds a state change must persist"),
    decode: Decode = typer.Option(
        Decode.keyframes, "--decode", help="keyframes: as live; all: every frame, one sample per interval"),
    samples: bool = typer.Option(True, "--samples/--no-samples", help="print one line per sample"),
) -> None:
    """Print one JSON object per line: samples, state changes, activity episodes and faults (times in s)."""
    try:
        cfg = settings().analysis
        station = load_station_config(station_config) if station_config else None
        calibration = station.calibration if station else StationCalibration()
        overrides = dict(calibration.overrides)
        if station:
            overrides.update(station.overrides)
        if sample_interval is not None:
            overrides["sample_interval_seconds"] = sample_interval
        if hysteresis is not None:
            overrides["hysteresis_seconds"] = hysteresis
        calibration = StationCalibration.model_validate({**calibration.model_dump(), "overrides": overrides})
        start_ms = to_ms(station.start) if station and station.start else 0
        hours = business_hours_for(station, settings().tz) if station else None
        events = analyse_file(file, cfg, calibration, fps_assumed, decode.value, hours, start_ms)
        for line in events_to_json(events, start_ms):
            if line["type"] == "sample" and not samples:
                continue
            typer.echo(json.dumps(line, ensure_ascii=False))
    except VmsError as exc:
        raise report_vms_error(exc) from None
    except ValidationError as exc:  # an override out of range given on the command line
        for e in exc.errors():
            typer.echo(f"error: {e['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
