"""How long each station's footage is kept: retention.days, overridden per town, then per station."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.catalog.towns import TOWN_NAMES
from vms.core.settings import RetentionSettings
from vms.db.models import Station

DAY_MS = 86_400_000


@dataclass
class RetentionPolicy:
    """Days kept per station. Stations not listed (or not in the table) get `default_days`."""

    default_days: float
    station_days: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def days_for(self, station_id: str) -> float:
        return self.station_days.get(station_id, self.default_days)

    def cutoff_ms(self, station_id: str, now_ms: int) -> int:
        """Segments ending at or before this instant are past retention."""
        return now_ms - round(self.days_for(station_id) * DAY_MS)

    @classmethod
    def load(cls, session: Session, retention: RetentionSettings) -> RetentionPolicy:
        stations = {sid: town for sid, town in session.execute(select(Station.id, Station.town))}
        warnings: list[str] = []
        for town in retention.per_town:
            if town not in TOWN_NAMES:
                warnings.append(f"retention.per_town: unknown town {town!r} (known: {', '.join(TOWN_NAMES)})")
        for sid in retention.per_station:
            if sid not in stations:
                warnings.append(f"retention.per_station: unknown station {sid!r}")
        days: dict[str, float] = {}
        for sid, town in stations.items():
            if sid in retention.per_station:
                days[sid] = retention.per_station[sid]
            elif town in retention.per_town:
                days[sid] = retention.per_town[town]
            else:
                days[sid] = retention.days
        return cls(default_days=retention.days, station_days=days, warnings=warnings)
