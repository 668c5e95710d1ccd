"""The station table: import from the catalogue file, and queries used by every other layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from vms.catalog.model import StationSpec
from vms.catalog.towns import TOWN_NAMES, town_rank
from vms.catalog.urls import mask_url
from vms.core.clock import Clock, default_clock
from vms.db.models import Station

SYNCED_FIELDS = ("name", "level", "town", "poverty_village", "placeholder_name", "business_hours", "enabled")


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)  # id -> changed field names
    disabled: list[str] = field(default_factory=list)
    unchanged: int = 0


def _values(spec: StationSpec) -> dict:
    v = {f: getattr(spec, f) for f in SYNCED_FIELDS}
    v.update(main_url=spec.camera.main_url, sub_url=spec.camera.sub_url, transport=spec.camera.transport)
    return v


def import_catalog(session: Session, specs: list[StationSpec], clock: Clock | None = None) -> ImportReport:
    """Make the table match the file. Stations missing from the file are disabled, never deleted
    (their footage and audits still refer to them). Running it twice changes nothing the second time."""
    now = (clock or default_clock()).now_ms()
    report = ImportReport()
    existing = {s.id: s for s in session.scalars(select(Station))}
    for spec in specs:
        values = _values(spec)
        row = existing.pop(spec.id, None)
        if row is None:
            session.add(Station(id=spec.id, updated_ms=now, **values))
            report.added.append(spec.id)
            continue
        diff = [k for k, v in values.items() if getattr(row, k) != v]
        if diff:
            for k in diff:
                setattr(row, k, values[k])
            row.updated_ms = now
            report.changed[spec.id] = diff
        else:
            report.unchanged += 1
    for row in existing.values():
        if row.enabled:
            row.enabled = False
            row.updated_ms = now
            report.disabled.append(row.id)
    session.flush()
    return report


def catalogue_order() -> tuple:
    """ORDER BY for stations as the catalogue lists them: towns in the county's order (vms.catalog.towns,
    not the Unicode order of their names), each town's own station before its villages, then by id."""
    rank = case({name: i for i, name in enumerate(TOWN_NAMES)}, value=Station.town, else_=len(TOWN_NAMES))
    return rank, Station.level, Station.id


def station_sort_key(town: str, level: str, station_id: str) -> tuple:
    """The same order in Python (for lists already read)."""
    return town_rank(town), level, station_id


def list_stations(session: Session, town: str | None = None, level: str | None = None,
                  enabled: bool | None = None) -> list[Station]:
    q = select(Station).order_by(*catalogue_order())
    if town:
        q = q.where(Station.town == town)
    if level:
        q = q.where(Station.level == level)
    if enabled is not None:
        q = q.where(Station.enabled == enabled)
    return list(session.scalars(q))


def station_public_dict(row: Station) -> dict:
    """A station as shown to people and programs: camera URLs masked."""
    return {
        "id": row.id,
        "name": row.name,
        "level": row.level,
        "town": row.town,
        "poverty_village": row.poverty_village,
        "placeholder_name": row.placeholder_name,
        "business_hours": row.business_hours,
        "enabled": row.enabled,
        "camera": {"main_url": mask_url(row.main_url), "sub_url": mask_url(row.sub_url), "transport": row.transport},
    }
