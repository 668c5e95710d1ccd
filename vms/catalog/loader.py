"""Reads and validates a station catalogue file, reporting every problem with its line."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from vms.catalog.model import StationSpec
from vms.core.errors import ConfigError
from vms.core.yamlfile import line_of, load_with_lines


def load_catalog(path: Path) -> list[StationSpec]:
    """All stations of the file, or ConfigError listing each problem as `file:line: what`."""
    data, lines = load_with_lines(Path(path))
    problems: list[str] = []

    def report(loc: tuple, msg: str) -> None:
        line = line_of(lines, loc)
        problems.append(f"{path}:{line}: {msg}" if line else f"{path}: {msg}")

    if not isinstance(data, dict) or not isinstance(data.get("stations"), list):
        raise ConfigError([f"{path}:1: expected a mapping with a 'stations' list"])
    unknown_top = set(data) - {"defaults", "stations"}
    for key in sorted(unknown_top):
        report((key,), f"unknown key {key!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        report(("defaults",), "defaults must be a mapping")
        defaults = {}

    specs: list[StationSpec] = []
    first_line: dict[str, int] = {}
    for i, raw in enumerate(data["stations"]):
        if not isinstance(raw, dict):
            report(("stations", i), f"station #{i + 1} must be a mapping")
            continue
        merged = {**{k: v for k, v in defaults.items() if k != "camera"}, **raw}
        if isinstance(defaults.get("camera"), dict) and isinstance(raw.get("camera", {}), dict):
            merged["camera"] = {**defaults["camera"], **(raw.get("camera") or {})}
        label = raw.get("id", f"#{i + 1}")
        try:
            spec = StationSpec.model_validate(merged)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ("stations", i, *err["loc"])
                key = ".".join(str(p) for p in err["loc"]) or "station"
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
                report(loc, f"station {label}: {key}: {msg}")
            continue
        if spec.id in first_line:
            report(("stations", i, "id"), f"duplicate station id {spec.id!r} (first on line {first_line[spec.id]})")
            continue
        first_line[spec.id] = line_of(lines, ("stations", i, "id")) or 0
        specs.append(spec)
    if problems:
        raise ConfigError(problems)
    return specs
