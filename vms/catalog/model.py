"""A station as the catalogue file describes it, and business hours."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vms.catalog.towns import COUNTY, TOWN_NAMES
from vms.catalog.urls import check_camera_url

STATION_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class BusinessHours:
    """Opening ranges within a local day, e.g. "08:00-12:00,14:00-18:00"."""

    ranges: tuple[tuple[time, time], ...]

    @classmethod
    def parse(cls, text: str) -> BusinessHours:
        ranges: list[tuple[time, time]] = []
        for part in str(text).split(","):
            m = _HOURS.match(part.strip())
            if not m:
                raise ValueError(f"营业时间 {str(text)[:80]!r} 格式不对：须为 HH:MM-HH:MM，多段用逗号分隔")
            h1, m1, h2, m2 = map(int, m.groups())
            if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2 != 0):
                raise ValueError(f"营业时间 {text!r}：{part.strip()} 不是一天中的时刻")
            start = time(h1, m1)
            end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
            if end <= start:
                raise ValueError(f"营业时间 {text!r}：{part.strip()} 结束早于开始")
            if ranges and start < ranges[-1][1]:
                raise ValueError(f"营业时间 {text!r}：各时段重叠或未按先后排列")
            ranges.append((start, end))
        return cls(tuple(ranges))

    def seconds_of_day(self) -> list[tuple[int, int]]:
        """Each range as [start, end) seconds after local midnight."""
        def sec(t: time) -> int:
            return 86400 if t == time(23, 59, 59, 999999) else t.hour * 3600 + t.minute * 60
        return [(sec(a), sec(b)) for a, b in self.ranges]


class CameraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    main_url: str | None = Field(default=None, description="null: not yet installed (simulated in demos)")
    sub_url: str | None = None
    transport: Literal["tcp", "udp"] = "tcp"

    @field_validator("main_url", "sub_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        problem = check_camera_url(v)
        if problem:
            # Never echo the URL: it may hold a password.
            raise ValueError(problem)
        return v


class StationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str = Field(min_length=1)
    level: Literal["town", "village"]
    town: str
    poverty_village: bool = False
    placeholder_name: bool = False
    business_hours: str = "08:00-18:00"
    enabled: bool = True
    camera: CameraSpec = Field(default_factory=CameraSpec)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not STATION_ID.match(v):
            raise ValueError(f"id {v!r} must be lowercase ASCII letters, digits and '-', at most 63 chars")
        return v

    @field_validator("town")
    @classmethod
    def _town(cls, v: str) -> str:
        if v not in TOWN_NAMES:
            raise ValueError(f"unknown town {v!r}; known: {', '.join(TOWN_NAMES)}")
        return v

    @field_validator("business_hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        BusinessHours.parse(v)
        return v

    @model_validator(mode="after")
    def _official_name(self) -> StationSpec:
        suffix = "电子商务服务站" if self.level == "town" else "电子商务服务点"
        if not (self.name.startswith(COUNTY) and self.name.endswith(suffix)):
            raise ValueError(
                f"name {self.name!r} is not in the official form {COUNTY}…{suffix} for a {self.level} station"
            )
        if self.level == "town" and self.poverty_village:
            raise ValueError("a town-level station cannot be a poverty village")
        return self
